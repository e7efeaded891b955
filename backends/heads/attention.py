"""One forward pass with every layer's attention weights handed to reducers, layer by layer.

A forward hook on each attention module passes that layer's weights ``[heads, T, T]`` (float32, rows = queries,
columns = keys) to every reducer, then drops them: a long input never holds all layers' maps at once. A reducer is
any object with ``update(layer, attn, input_ids)`` and ``result() -> dict``; the per-head statistics, the model-view
thumbnails, the attention rollout and the captured maps below are reducers, and so are the head-type scores.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from backends.core.service import ServiceError
from backends.heads.models import LanguageModel

#: texts longer than this many characters are cut before tokenizing (a guard against huge pastes)
MAX_TEXT_CHARS = 200_000


class Reducer(Protocol):
    """Consumes one layer's attention at a time during a forward pass and sums it up at the end."""

    def update(self, layer: int, attn: torch.Tensor, input_ids: torch.Tensor) -> None:
        """Take layer ``layer``'s attention weights ``[heads, T, T]`` (float32) for the tokens ``input_ids`` ``[T]``."""

    def result(self) -> dict:
        """What this reducer found, once every layer has been seen."""


@dataclass
class Tokenized:
    """The token ids one pass runs on, their display labels, and whether the input was cut to the model's limit."""

    input_ids: torch.Tensor  # [T] int64, on CPU
    tokens: list[str]
    n_input_tokens: int  # tokens in the input before truncation (of its first MAX_TEXT_CHARS characters)
    truncated: bool


@dataclass
class AttentionRun:
    """What a pass returns besides the reducers' own results."""

    tokenized: Tokenized
    logits: torch.Tensor | None  # [T, vocab] float32 on CPU, only when asked for


def tokenize(lm: LanguageModel, text_or_ids: str | Sequence[int] | torch.Tensor) -> Tokenized:
    """Token ids for a text (with the model's usual special tokens) or given ids, cut to ``lm.max_tokens``."""
    if isinstance(text_or_ids, str):
        text = text_or_ids[:MAX_TEXT_CHARS]
        ids = lm.tokenizer(text, add_special_tokens=True, verbose=False)["input_ids"]
        n_input = len(ids)
        if n_input > lm.max_tokens or len(text_or_ids) > MAX_TEXT_CHARS:
            ids = lm.tokenizer(text, add_special_tokens=True, truncation=True, max_length=lm.max_tokens)["input_ids"]
        input_ids = torch.tensor(ids, dtype=torch.long)
        truncated = n_input > lm.max_tokens or len(text_or_ids) > MAX_TEXT_CHARS
    else:
        input_ids = torch.as_tensor(text_or_ids, dtype=torch.long).flatten().cpu()
        n_input = int(input_ids.numel())
        truncated = n_input > lm.max_tokens
        input_ids = input_ids[: lm.max_tokens]
    if input_ids.numel() == 0:
        raise ServiceError("the text has no tokens; enter some text")
    return Tokenized(input_ids, token_labels(lm, input_ids.tolist()), n_input, truncated)


def token_labels(lm: LanguageModel, ids: Sequence[int]) -> list[str]:
    """Each token as readable text (byte-level pieces decoded, so " cat" rather than "Ġcat")."""
    return [lm.tokenizer.decode([token_id]) for token_id in ids]


@torch.inference_mode()
def run_with_attention(
    lm: LanguageModel,
    text_or_ids: str | Sequence[int] | torch.Tensor,
    reducers: Iterable[Reducer],
    with_logits: bool = False,
) -> AttentionRun:
    """Run ``lm`` once on the text (or ids), handing each layer's attention ``[heads, T, T]`` to every reducer.

    Without ``with_logits`` only the backbone runs (no language-model head: faster on long inputs).
    """
    reducers = list(reducers)
    tokenized = tokenize(lm, text_or_ids)
    input_ids = tokenized.input_ids.to(lm.device)
    index = lm.attention_output_index

    def hand_over(layer: int) -> Callable[[torch.nn.Module, tuple, tuple], None]:
        def hook(_module: torch.nn.Module, _args: tuple, output: tuple) -> None:
            weights = output[index] if isinstance(output, tuple) and len(output) > index else None
            if weights is None:
                raise ServiceError(f"{lm.model_id}: layer {layer} returned no attention weights (is it eager?)")
            attn = weights[0].float()
            for reducer in reducers:
                reducer.update(layer, attn, input_ids)

        return hook

    modules = lm.attention_modules()
    if len(modules) != lm.n_layers:
        raise ServiceError(f"{lm.model_id}: found {len(modules)} attention modules for {lm.n_layers} layers")
    with lm.lock:
        handles = [module.register_forward_hook(hand_over(layer)) for layer, module in enumerate(modules)]
        try:
            network = lm.model if with_logits else lm.model.base_model
            output = network(input_ids=input_ids[None], use_cache=False) if lm.is_causal else network(input_ids[None])
        finally:
            for handle in handles:
                handle.remove()
    logits = output.logits[0].float().cpu() if with_logits and hasattr(output, "logits") else None
    return AttentionRun(tokenized, logits)


# -- reducers ---------------------------------------------------------------------------------------------------------
class HeadStats:
    """Per-head summaries, averaged over query rows: entropy (nats, and as a fraction of uniform), max weight and
    attention to the first token (its row 0 excluded in causal models, where it can only attend to itself)."""

    def __init__(self, n_layers: int, n_heads: int, causal: bool):
        self.causal = causal
        shape = (n_layers, n_heads)
        self.entropy = torch.zeros(shape)
        self.entropy_fraction = torch.zeros(shape)
        self.max_weight = torch.zeros(shape)
        self.first_token = torch.zeros(shape)

    def update(self, layer: int, attn: torch.Tensor, input_ids: torch.Tensor) -> None:
        """Summarise layer ``layer``'s heads."""
        n_tokens = attn.shape[-1]
        blocks = list(row_blocks(n_tokens, self.causal))
        # −Σ a·log a and the row maximum, block by block: a causal block's later columns are all zero, skip them
        row_entropy = torch.cat(
            [torch.special.entr(attn[:, start:end, :keys]).sum(-1) for start, end, keys in blocks], 1
        )
        row_max = torch.cat([attn[:, start:end, :keys].amax(-1) for start, end, keys in blocks], 1)
        keys_seen = (
            torch.arange(1, n_tokens + 1, device=attn.device)
            if self.causal
            else torch.full((n_tokens,), n_tokens, device=attn.device)
        )
        uniform = keys_seen.float().log()
        rows = slice(1, None) if self.causal and n_tokens > 1 else slice(None)
        fraction = row_entropy[:, rows] / uniform[rows].clamp_min(1e-12)
        self.entropy[layer] = row_entropy.mean(-1).cpu()
        self.entropy_fraction[layer] = (fraction.mean(-1) if n_tokens > 1 else torch.zeros(attn.shape[0])).cpu()
        self.max_weight[layer] = row_max.mean(-1).cpu()
        self.first_token[layer] = attn[:, rows, 0].mean(-1).cpu()

    def result(self) -> dict:
        """``{stat: [layer][head]}`` rounded to 4 decimals."""
        return {
            name: _rounded(values)
            for name, values in (
                ("entropy", self.entropy),
                ("entropy_fraction", self.entropy_fraction),
                ("max_weight", self.max_weight),
                ("first_token", self.first_token),
            )
        }


def row_blocks(n_tokens: int, causal: bool, size: int = 128) -> list[tuple[int, int, int]]:
    """(first row, end row, columns that can be non-zero) for blocks of query rows: in a causal map row i sees keys
    0…i only, so a block ending at row e needs columns < e."""
    return [
        (start, min(start + size, n_tokens), min(start + size, n_tokens) if causal else n_tokens)
        for start in range(0, n_tokens, size)
    ]


class Thumbnails:
    """Every head's map shrunk to ``size``×``size`` by average pooling (the bins of ``adaptive_avg_pool2d``), with and
    without the first-token column. Pooling is done as two small matrix products, ``B · A · Bᵀ``, which is much faster
    than pooling a long map directly, and the first column's share is then simply subtracted."""

    def __init__(self, n_layers: int, n_heads: int, size: int):
        self.size = size
        self.full = torch.zeros(n_layers, n_heads, size, size)
        self.without_first = torch.zeros(n_layers, n_heads, size, size)
        self._bins: torch.Tensor | None = None

    def update(self, layer: int, attn: torch.Tensor, input_ids: torch.Tensor) -> None:
        """Pool layer ``layer``'s heads."""
        n_tokens = attn.shape[-1]
        if self._bins is None or self._bins.shape[1] != n_tokens or self._bins.device != attn.device:
            self._bins = pooling_bins(n_tokens, self.size).to(attn.device)
        bins = self._bins
        full = bins @ (attn @ bins.T)  # [H, s, s]
        first_column = (bins @ attn[..., :1]) * bins[:, 0]  # [H, s, 1] · [s] → the first column's share
        self.full[layer] = full.cpu()
        self.without_first[layer] = (full - first_column).clamp_min(0).cpu()

    def result(self) -> dict:
        """``{"full": [L, H, s, s], "without_first": [L, H, s, s]}`` tensors."""
        return {"full": self.full, "without_first": self.without_first}


def pooling_bins(n_tokens: int, size: int) -> torch.Tensor:
    """``[size, n_tokens]`` averaging matrix with adaptive average pooling's bins: row i averages positions
    ⌊i·T/size⌋ … ⌈(i+1)·T/size⌉ − 1."""
    bins = torch.zeros(size, n_tokens)
    for index in range(size):
        start, end = (index * n_tokens) // size, -(-((index + 1) * n_tokens) // size)
        bins[index, start:end] = 1.0 / (end - start)
    return bins


class Rollout:
    """Attention rollout (Abnar & Zuidema 2020): the product over layers of 0.5·mean-over-heads + 0.5·identity."""

    def __init__(self) -> None:
        self.product: torch.Tensor | None = None

    def update(self, layer: int, attn: torch.Tensor, input_ids: torch.Tensor) -> None:
        """Multiply in layer ``layer`` (layers arrive in order)."""
        mixed = 0.5 * attn.mean(0) + 0.5 * torch.eye(attn.shape[-1], device=attn.device)
        mixed = mixed / mixed.sum(-1, keepdim=True)
        self.product = mixed if self.product is None else mixed @ self.product

    def result(self) -> dict:
        """``{"rollout": [T, T]}``: how much each input token flows into each position's final state."""
        if self.product is None:
            raise ServiceError("the rollout saw no layers")
        return {"rollout": self.product.cpu()}


class CaptureLayers:
    """Keeps whole layers' maps ``[heads, T, T]`` on the CPU (all layers when ``layers`` is None)."""

    def __init__(self, layers: Iterable[int] | None = None):
        self.layers = None if layers is None else set(layers)
        self.maps: dict[int, torch.Tensor] = {}

    def update(self, layer: int, attn: torch.Tensor, input_ids: torch.Tensor) -> None:
        """Keep layer ``layer`` if it was asked for."""
        if self.layers is None or layer in self.layers:
            self.maps[layer] = attn.cpu().clone()

    def result(self) -> dict:
        """``{"layers": {layer: [H, T, T]}}``."""
        return {"layers": self.maps}


def replay(layers: dict[int, torch.Tensor], input_ids: torch.Tensor, reducers: Iterable[Reducer]) -> None:
    """Feed captured maps (every layer, in order) to reducers as a forward pass would."""
    reducers = list(reducers)
    for layer in sorted(layers):
        for reducer in reducers:
            reducer.update(layer, layers[layer], input_ids)


def thumbnail_size(n_layers: int, n_heads: int) -> int:
    """Side of one head's thumbnail in the model view: large for small models, at least 12 px for big ones."""
    return max(12, min(40, 1100 // max(n_layers, n_heads)))


def capture_fits(lm: LanguageModel, n_tokens: int, budget_values: int) -> bool:
    """Whether all layers' maps for ``n_tokens`` tokens fit in ``budget_values`` floats."""
    return lm.n_layers * lm.n_heads * n_tokens * n_tokens <= budget_values


def _rounded(values: torch.Tensor, decimals: int = 4) -> list:
    return [[round(float(v), decimals) if math.isfinite(float(v)) else None for v in row] for row in values]
