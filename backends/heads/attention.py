"""One forward pass with every layer's attention weights handed to reducers, chunk by chunk.

The model's attention function (:mod:`backends.heads.plan`) computes each layer's weights in chunks of query rows
and passes every chunk ``[heads, rows, keys]`` (float32, rows = queries, columns = keys) to the call's reducers,
then drops it: an input of the model's full context never holds a layer's whole map, let alone all layers'. A
reducer is any object with ``update(layer, chunk)`` and ``result() -> dict`` and optional ``layers`` (a set; None =
all) and ``rows`` (a range of query rows; None = all) saying which weights it needs; the per-head statistics, the
pooled maps behind the model view and heatmaps, the attention rollout and the captured maps below are reducers, and
so are the head-type scores.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch.nn.functional import adaptive_avg_pool2d

from backends.core.service import ServiceError
from backends.heads.models import LanguageModel
from backends.heads.plan import Ablation, AttentionChunk, Streaming

#: texts longer than this many characters are cut before tokenizing (a guard against huge pastes)
MAX_TEXT_CHARS = 200_000
#: pooled maps have at most this many bins a side; shorter inputs and zoom windows up to this size are exact
MAP_BINS = 256
#: the rollout multiplies full T×T maps over all layers, so it is offered up to this many tokens
ROLLOUT_MAX_TOKENS = 1024


class Reducer(Protocol):
    """Consumes one chunk of one layer's attention at a time during a forward pass and sums it up at the end."""

    def update(self, layer: int, chunk: AttentionChunk) -> None:
        """Take rows ``chunk.row_start…`` of layer ``layer``'s attention weights."""

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
    ablation: Ablation | None = None,
    streaming: Streaming | None = None,
) -> AttentionRun:
    """Run ``lm`` once on the text (or ids), handing each layer's attention weights to every reducer, chunk by chunk.

    Without ``with_logits`` only the backbone runs (no language-model head: faster on long inputs). ``ablation`` and
    ``streaming`` apply to this pass only.
    """
    tokenized = tokenize(lm, text_or_ids)
    input_ids = tokenized.input_ids.to(lm.device)
    plan = lm.plan(reducers=list(reducers), input_ids=input_ids, ablation=ablation, streaming=streaming)
    network = lm.model if with_logits else lm.model.base_model
    extra = {"use_cache": False} if lm.is_causal else {}
    output = network(input_ids=input_ids[None], **extra, **plan.kwargs())
    logits = output.logits[0].float().cpu() if with_logits and hasattr(output, "logits") else None
    return AttentionRun(tokenized, logits)


# -- reducers ---------------------------------------------------------------------------------------------------------
class HeadStats:
    """Per-head summaries, averaged over query rows: entropy (nats, and as a fraction of uniform), max weight and
    attention to the first token (its row 0 excluded in causal models, where it can only attend to itself)."""

    def __init__(self, n_layers: int, n_heads: int, causal: bool):
        self.causal = causal
        shape = (n_layers, n_heads)
        self.sums = {name: torch.zeros(shape, dtype=torch.float64) for name in self.NAMES}
        self.row_counts = torch.zeros(n_layers)  # rows seen per layer
        self.rows_after_first = torch.zeros(n_layers)  # the rows the fraction and first-token means run over

    NAMES = ("entropy", "entropy_fraction", "max_weight", "first_token")

    def update(self, layer: int, chunk: AttentionChunk) -> None:
        """Add one chunk's rows to layer ``layer``'s sums."""
        weights, entropy = chunk.weights, chunk.entropy.clamp_min(0)
        positions = torch.arange(chunk.row_start, chunk.row_end, device=weights.device)
        keys_seen = (positions + 1).float() if self.causal else torch.full_like(positions, chunk.n_keys).float()
        later = positions >= 1 if self.causal and chunk.n_tokens > 1 else torch.ones_like(positions, dtype=torch.bool)
        fraction = entropy[:, later] / keys_seen[later].log().clamp_min(1e-12)
        sums = self.sums
        sums["entropy"][layer] += entropy.sum(-1).double().cpu()
        sums["entropy_fraction"][layer] += fraction.sum(-1).double().cpu() if chunk.n_tokens > 1 else 0
        sums["max_weight"][layer] += weights.amax(-1).sum(-1).double().cpu()
        sums["first_token"][layer] += weights[:, later, 0].sum(-1).double().cpu()
        self.row_counts[layer] += weights.shape[1]
        self.rows_after_first[layer] += int(later.sum())

    def result(self) -> dict:
        """``{stat: [layer][head]}`` rounded to 4 decimals."""
        rows = self.row_counts.clamp_min(1)[:, None].double()
        after_first = self.rows_after_first.clamp_min(1)[:, None].double()
        return {
            name: _rounded(self.sums[name] / (rows if name in ("entropy", "max_weight") else after_first))
            for name in self.NAMES
        }


class PooledMaps:
    """Every head's map (or a window of it) average-pooled into at most ``bins``×``bins`` blocks of whole tokens.

    A window of ``rows`` (queries) × ``columns`` (keys), the whole map by default, is cut into blocks of
    ⌈length / bins⌉ tokens a side (the last block may be shorter); each pooled value is its block's mean weight, so a
    window no longer than ``bins`` tokens a side is kept exactly. The first key's share of each block is kept
    apart, so the map can also be shown without the first-token column.
    """

    def __init__(
        self,
        n_layers: int,
        n_heads: int,
        bins: int = MAP_BINS,
        rows: range | None = None,
        columns: range | None = None,
        layers: Iterable[int] | None = None,
    ):
        self.n_layers, self.n_heads, self.bins = n_layers, n_heads, bins
        self.rows, self.columns = rows, columns
        self.layers = None if layers is None else set(layers)
        self.sums: dict[int, torch.Tensor] = {}  # layer → [H, row blocks, column blocks]
        self.first: dict[int, torch.Tensor] = {}  # layer → [H, row blocks]: the first key's weight, summed

    def update(self, layer: int, chunk: AttentionChunk) -> None:
        """Add one chunk's rows (those inside the window) to layer ``layer``'s block sums."""
        self.rows = self.rows or range(chunk.n_tokens)
        self.columns = self.columns or range(chunk.n_keys)
        rows, columns = self.rows, self.columns
        row_block, column_block = block_size(len(rows), self.bins), block_size(len(columns), self.bins)
        if layer not in self.sums:
            shape = (self.n_heads, -(-len(rows) // row_block), -(-len(columns) // column_block))
            self.sums[layer] = torch.zeros(shape)
            self.first[layer] = torch.zeros(shape[:2])
        start, end = max(chunk.row_start, rows.start), min(chunk.row_end, rows.stop)
        if start >= end:
            return
        weights = chunk.weights[:, start - chunk.row_start : end - chunk.row_start]
        blocks = (torch.arange(start, end) - rows.start) // row_block
        first_block, n_blocks = int(blocks[0]), int(blocks[-1] - blocks[0]) + 1
        one_hot = torch.zeros(n_blocks, end - start, device=weights.device)
        one_hot[blocks - first_block, torch.arange(end - start)] = 1.0
        row_sums = one_hot @ weights  # [H, blocks, keys]: the rows of each block summed
        held = slice(first_block, first_block + n_blocks)
        stop = min(columns.stop, weights.shape[-1])
        if stop > columns.start:
            self.sums[layer][:, held, : -(-(stop - columns.start) // column_block)] += _pool_columns(
                row_sums[..., columns.start : stop], column_block
            ).cpu()
        if columns.start == 0:
            self.first[layer][:, held] += row_sums[..., 0].cpu()

    def means(self, layer: int, hide_first: bool = False) -> torch.Tensor:
        """Layer ``layer``'s pooled maps ``[H, row blocks, column blocks]`` (block means)."""
        sums = self.sums[layer].clone()
        if hide_first:
            sums[..., 0] -= self.first[layer]
        return (sums / self._counts(*sums.shape[1:])).clamp_min(0)

    def _counts(self, n_row_blocks: int, n_column_blocks: int) -> torch.Tensor:
        rows = _block_lengths(len(self.rows), n_row_blocks)
        columns = _block_lengths(len(self.columns), n_column_blocks)
        return rows[:, None] * columns[None, :]

    def edges(self) -> tuple[list[int], list[int]]:
        """The first token of each row block and of each column block."""
        rows = self.rows[:: block_size(len(self.rows), self.bins)]
        columns = self.columns[:: block_size(len(self.columns), self.bins)]
        return list(rows), list(columns)

    def thumbnails(self, size: int, hide_first: bool = False) -> torch.Tensor:
        """Every layer's maps shrunk to ``[L, H, size, size]`` by adaptive average pooling of the pooled maps."""
        return torch.stack([adaptive_avg_pool2d(self.means(layer, hide_first), size) for layer in sorted(self.sums)])

    def result(self) -> dict:
        """``{"pooled": {layer: [H, row blocks, column blocks]}}``: block means."""
        return {"pooled": {layer: self.means(layer) for layer in sorted(self.sums)}}


def block_size(length: int, bins: int) -> int:
    """Tokens per block when ``length`` tokens are pooled into at most ``bins`` blocks."""
    return max(1, -(-length // bins))


def _block_lengths(length: int, n_blocks: int) -> torch.Tensor:
    size = block_size(length, n_blocks)
    return torch.tensor([min(size, length - index * size) for index in range(n_blocks)], dtype=torch.float32)


def _pool_columns(values: torch.Tensor, block: int) -> torch.Tensor:
    """Sum the last axis in blocks of ``block`` columns (the last block may be shorter)."""
    length = values.shape[-1]
    whole = length // block
    pooled = values[..., : whole * block].unflatten(-1, (whole, block)).sum(-1)
    if whole * block < length:
        pooled = torch.cat([pooled, values[..., whole * block :].sum(-1, keepdim=True)], -1)
    return pooled


class Rollout:
    """Attention rollout (Abnar & Zuidema 2020): the product over layers of 0.5·mean-over-heads + 0.5·identity."""

    def __init__(self) -> None:
        self.product: torch.Tensor | None = None
        self._layer: int | None = None
        self._mean: torch.Tensor | None = None  # the current layer's mean over heads, filled chunk by chunk

    def update(self, layer: int, chunk: AttentionChunk) -> None:
        """Add a chunk of layer ``layer`` (layers arrive in order; a new layer closes the previous one)."""
        if chunk.n_tokens > ROLLOUT_MAX_TOKENS:
            raise ServiceError(
                f"the attention rollout multiplies full {chunk.n_tokens:,}×{chunk.n_tokens:,} maps over all layers; "
                f"it is offered up to {ROLLOUT_MAX_TOKENS:,} tokens (use the pooled heatmaps for longer texts)"
            )
        if layer != self._layer:
            self._close_layer()
            self._layer = layer
            self._mean = torch.zeros(chunk.n_tokens, chunk.n_keys, device=chunk.weights.device)
        self._mean[chunk.row_start : chunk.row_end, : chunk.weights.shape[-1]] = chunk.weights.mean(0)

    def _close_layer(self) -> None:
        if self._mean is None:
            return
        mixed = 0.5 * self._mean + 0.5 * torch.eye(self._mean.shape[-1], device=self._mean.device)
        mixed = mixed / mixed.sum(-1, keepdim=True)
        self.product = mixed if self.product is None else mixed @ self.product
        self._mean = None

    def result(self) -> dict:
        """``{"rollout": [T, T]}``: how much each input token flows into each position's final state."""
        self._close_layer()
        if self.product is None:
            raise ServiceError("the rollout saw no layers")
        return {"rollout": self.product.cpu()}


class CaptureLayers:
    """Keeps whole layers' maps ``[heads, rows, keys]`` on the CPU (all layers when ``layers`` is None; all rows when
    ``rows`` is None). Meant for short inputs and single rows: a full map grows as T²."""

    def __init__(self, layers: Iterable[int] | None = None, rows: range | None = None):
        self.layers = None if layers is None else set(layers)
        self.rows = rows
        self.maps: dict[int, torch.Tensor] = {}

    def update(self, layer: int, chunk: AttentionChunk) -> None:
        """Copy the chunk's wanted rows into layer ``layer``'s map."""
        rows = self.rows or range(chunk.n_tokens)
        if layer not in self.maps:
            self.maps[layer] = torch.zeros(chunk.weights.shape[0], len(rows), chunk.n_keys)
        start, end = max(chunk.row_start, rows.start), min(chunk.row_end, rows.stop)
        if start < end:
            part = chunk.weights[:, start - chunk.row_start : end - chunk.row_start]
            self.maps[layer][:, start - rows.start : end - rows.start, : part.shape[-1]] = part.cpu()

    def result(self) -> dict:
        """``{"layers": {layer: [H, rows, keys]}}``."""
        return {"layers": self.maps}


def thumbnail_size(n_layers: int, n_heads: int) -> int:
    """Side of one head's thumbnail in the model view: large for small models, at least 12 px for big ones."""
    return max(12, min(40, 1100 // max(n_layers, n_heads)))


def _rounded(values: torch.Tensor, decimals: int = 4) -> list:
    return [[round(float(v), decimals) if math.isfinite(float(v)) else None for v in row] for row in values]
