"""One attention function for every Heads-panel model, steered per call by a :class:`HeadPlan`.

Models are loaded with ``attn_implementation="headlab"``: the function below, registered once at import. A call
that wants something from the heads passes its own plan as ``headlab_plan=plan`` to the model (transformers forwards
the model call's keyword arguments down to the attention function), so nothing global changes during a call and
concurrent calls never see each other's plans. Without a plan the function is plain scaled-dot-product attention.

A plan can

* hand each layer's attention weights to **reducers** (see :mod:`backends.heads.attention`), computed in chunks of
  query rows so a long input never holds more than one chunk of one layer: on a CPU the layer's output and each row's
  log-normaliser come from the fused flash kernel, and a chunk's weights are ``exp(q·kᵀ·scale − lse)``;
* **ablate** heads: ``zero`` (the head's output is 0), ``uniform`` (its query is 0, so softmax spreads attention
  evenly over the positions it may see) or ``mean`` (its output is replaced by its mean on the clean text);
* make heads **streaming heads** (StreamingLLM, DuoAttention, RazorAttention): they see only the first ``sink``
  positions and the most recent ``window`` ones.

Reducers see the weights before any streaming restriction; ablation by ``uniform`` shows in them (the query is 0).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch.nn.functional import scaled_dot_product_attention
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from backends.core.service import ServiceError

ATTENTION = "headlab"
ABLATION_MODES = ("zero", "uniform", "mean")
#: values of one chunk of weights (heads × rows × keys): 8 MB of float32
CHUNK_VALUES = 2**21


@dataclass
class AttentionChunk:
    """Rows ``row_start…row_start+rows−1`` of one layer's attention map, for every head.

    ``weights`` is ``[heads, rows, keys]`` (float32); columns at ``keys`` and beyond are 0 (causal maps need only the
    keys up to the chunk's last row). ``entropy`` is each row's entropy in nats, ``[heads, rows]``.
    """

    weights: torch.Tensor
    row_start: int
    n_tokens: int  # query rows of the whole map
    n_keys: int  # columns of the whole map
    entropy: torch.Tensor
    input_ids: torch.Tensor
    causal: bool

    @property
    def row_end(self) -> int:
        """One past the chunk's last row."""
        return self.row_start + self.weights.shape[1]


@dataclass
class Ablation:
    """Heads whose output is removed: ``mode`` and, per layer, the head indices (and, for ``mean``, their means).

    ``per_row`` ablates different heads in each sequence of a batch instead: ``[B, layers, heads]`` booleans (True =
    off in that row); ``heads`` then lists every head some row ablates, and mean mode needs the means of every head
    of those layers (``layer → [heads, head_dim]``).
    """

    mode: str
    heads: dict[int, list[int]]
    means: dict[int, torch.Tensor] = field(default_factory=dict)  # layer → [len(heads), head_dim]
    recording: bool = False  # mean mode: record the heads' mean outputs instead of replacing them
    per_row: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.mode not in ABLATION_MODES:
            raise ServiceError(f"unknown ablation mode {self.mode!r}; choose one of {', '.join(ABLATION_MODES)}")
        if self.mode == "mean" and not self.recording and set(self.means) != set(self.heads):
            raise ServiceError("mean ablation needs the heads' mean outputs; record them on the clean text first")

    @classmethod
    def rows(cls, mode: str, per_row: torch.Tensor, means: dict[int, torch.Tensor] | None = None) -> Ablation:
        """Row ``b`` of a batch ablates the heads where ``per_row[b]`` ([layers, heads]) is True."""
        layers = sorted(int(layer) for layer in per_row.any(dim=(0, 2)).nonzero().flatten())
        heads = {layer: list(range(per_row.shape[2])) for layer in layers}
        return cls(mode, heads, {layer: means[layer] for layer in layers} if means else {}, per_row=per_row.bool())


@dataclass
class Streaming:
    """Heads (per layer) that attend only to the first ``sink`` and the last ``window`` positions."""

    heads: dict[int, list[int]]
    sink: int
    window: int


@dataclass
class HeadPlan:
    """What one model call does to its heads. ``layers`` maps each attention module (by ``id``) to its layer."""

    layers: dict[int, int]
    reducers: list = field(default_factory=list)
    input_ids: torch.Tensor | None = None  # [T], what reducers are told the tokens are
    ablation: Ablation | None = None
    streaming: Streaming | None = None

    def kwargs(self) -> dict:
        """The keyword argument that carries this plan through a model call."""
        return {"headlab_plan": self}

    def rows_wanted(self, layer: int, n_tokens: int) -> range | None:
        """The query rows of ``layer`` some reducer wants weights for (None: no reducer wants this layer)."""
        spans = [_rows_of(reducer, layer, n_tokens) for reducer in self.reducers]
        spans = [span for span in spans if span is not None and len(span)]
        if not spans:
            return None
        return range(min(span.start for span in spans), max(span.stop for span in spans))


def by_layer(heads: Iterable[tuple[int, int]]) -> dict[int, list[int]]:
    """(layer, head) pairs grouped as layer → sorted head indices."""
    grouped: dict[int, list[int]] = {}
    for layer, head in sorted(set(heads)):
        grouped.setdefault(layer, []).append(head)
    return grouped


def _rows_of(reducer, layer: int, n_tokens: int) -> range | None:
    layers = getattr(reducer, "layers", None)
    if layers is not None and layer not in layers:
        return None
    rows = getattr(reducer, "rows", None)
    return range(n_tokens) if rows is None else range(max(rows.start, 0), min(rows.stop, n_tokens))


# -- the attention function -------------------------------------------------------------------------------------------
def headlab_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    headlab_plan: HeadPlan | None = None,
    **_kwargs,
) -> tuple[torch.Tensor, None]:
    """Attention of one layer (query ``[B, heads, T, d]``, key/value ``[B, kv_heads, K, d]``) under the call's plan.

    Returns the output ``[B, T, heads, d]`` and no weights (reducers receive them instead).
    """
    plan = headlab_plan
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    key, value = _expand_kv(key, query.shape[1]), _expand_kv(value, query.shape[1])
    mask, causal = _mask(module, attention_mask, query.shape[2], key.shape[2], query.device)
    if plan is None:
        return _sdpa(query, key, value, mask, causal, scale).transpose(1, 2).contiguous(), None
    layer = plan.layers.get(id(module))
    if layer is None:
        raise ServiceError(f"{type(module).__name__} is not one of the model's attention layers")
    ablation = plan.ablation
    ablated_heads = ablation.heads.get(layer, []) if ablation else []
    rows_off = ablation.per_row[:, layer].to(query.device) if ablated_heads and ablation.per_row is not None else None
    if ablated_heads and ablation.mode == "uniform":
        query = query.clone()
        if rows_off is None:
            query[:, ablated_heads] = 0  # every score 0 → softmax is uniform over the visible positions
        else:
            query = query.masked_fill(rows_off[:, :, None, None], 0)
    rows = plan.rows_wanted(layer, query.shape[2])
    if rows is None:
        output = _sdpa(query, key, value, mask, causal, scale)
    else:
        output = _attention_with_reducers(plan, layer, query, key, value, mask, causal, scale, rows)
    streaming = plan.streaming.heads.get(layer, []) if plan.streaming else []
    if streaming:
        local = _streaming_mask(mask, query.shape[2], key.shape[2], plan.streaming, query.device)
        output = output.clone()
        output[:, streaming] = _sdpa(query[:, streaming], key[:, streaming], value[:, streaming], local, False, scale)
    output = output.transpose(1, 2)  # [B, T, heads, d]
    if ablated_heads and ablation.mode in ("zero", "mean"):
        if ablation.recording:
            ablation.means[layer] = output[:, :, ablated_heads].float().mean(dim=(0, 1))
        elif rows_off is not None:
            replacement = 0 if ablation.mode == "zero" else ablation.means[layer].to(output.dtype)
            output = torch.where(rows_off[:, None, :, None], replacement, output)
        else:
            output = output.clone()
            replacement = 0 if ablation.mode == "zero" else ablation.means[layer].to(output.dtype)
            output[:, :, ablated_heads] = replacement
    return output.contiguous(), None


AttentionInterface.register(ATTENTION, headlab_attention)
AttentionMaskInterface.register(ATTENTION, sdpa_mask)


def _expand_kv(states: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Key/value heads repeated so query head h reads KV head h // group (grouped-query attention)."""
    group = n_heads // states.shape[1]
    return states if group == 1 else states.repeat_interleave(group, dim=1)


def _mask(
    module: torch.nn.Module, mask: torch.Tensor | None, n_queries: int, n_keys: int, device: torch.device
) -> tuple[torch.Tensor | None, bool]:
    """(boolean mask ``[B|1, 1, T, K]`` with True = may attend, or None; whether the layer is plainly causal)."""
    if mask is not None:
        return (mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2), False
    causal = bool(getattr(module, "is_causal", False)) and n_queries > 1
    if causal and n_queries != n_keys:  # queries after cached keys: each sees the keys up to its own position
        positions = torch.arange(n_keys - n_queries, n_keys, device=device)[:, None]
        return (torch.arange(n_keys, device=device)[None, :] <= positions)[None, None], False
    return None, causal


def _sdpa(query, key, value, mask, causal: bool, scale: float) -> torch.Tensor:
    """Fused attention ``[B, heads, T, d]`` (a causal layer runs as ``is_causal``: the kernel skips masked blocks)."""
    return scaled_dot_product_attention(query, key, value, attn_mask=mask, is_causal=causal, scale=scale)


def _causal(n_tokens: int, device: torch.device) -> torch.Tensor:
    """``[T, T]`` booleans: True where a query may see a key (on or below the diagonal)."""
    return torch.ones(n_tokens, n_tokens, dtype=torch.bool, device=device).tril()


def _streaming_mask(
    mask: torch.Tensor | None, n_queries: int, n_keys: int, streaming: Streaming, device: torch.device
) -> torch.Tensor:
    """The layer's mask restricted to the first ``sink`` keys and the ``window`` keys up to each query."""
    positions = torch.arange(n_keys - n_queries, n_keys, device=device)[:, None]
    keys = torch.arange(n_keys, device=device)[None, :]
    local = ((keys < streaming.sink) | (positions - keys < streaming.window)) & (keys <= positions)
    local = local[None, None]
    return local if mask is None else local & mask


def _attention_with_reducers(
    plan: HeadPlan,
    layer: int,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    causal: bool,
    scale: float,
    rows: range,
) -> torch.Tensor:
    """The layer's output ``[1, heads, T, d]``; the weights of ``rows`` go to the plan's reducers, chunk by chunk."""
    if query.shape[0] != 1:
        raise ServiceError("attention weights are handed over for one sequence at a time")
    n_heads, n_queries, _ = query.shape[1:]
    n_keys = key.shape[2]
    q, k, v = query[0].float() * scale, key[0].float(), value[0].float()
    fused = q.device.type == "cpu" and query.dtype == torch.float32
    if fused:  # the flash kernel gives the output and every row's log-normaliser in one fused pass
        output, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            query, key, value, 0.0, causal, attn_mask=mask, scale=scale
        )
        lse = lse[0]
    else:
        output = torch.empty_like(query)
    step = max(1, CHUNK_VALUES // (n_heads * n_keys))
    for start in range(rows.start, rows.stop, step):
        end = min(start + step, rows.stop)
        keys = end if causal else n_keys
        scores = q[:, start:end] @ k[:, :keys].transpose(1, 2)  # [H, rows, keys]
        if causal:  # only the chunk's diagonal block has keys after the query
            scores[:, :, start:end].masked_fill_(_causal(end - start, q.device).logical_not(), float("-inf"))
        elif mask is not None:
            scores.masked_fill_(~mask[0, :, start:end, :keys], float("-inf"))
        row_lse = lse[:, start:end] if fused else scores.logsumexp(-1)
        weights = scores.sub_(row_lse[..., None]).exp_()
        if not fused:
            output[0, :, start:end] = (weights @ v[:, :keys]).to(output.dtype)
        # H = lse − Σ p·s and Σ_j p_j s_j = q·(Σ_j p_j k_j): one small product instead of a pass over p·log p
        entropy = row_lse - (q[:, start:end] * (weights @ k[:, :keys])).sum(-1)
        chunk = AttentionChunk(weights, start, n_queries, n_keys, entropy, plan.input_ids, causal)
        for reducer in plan.reducers:
            wanted = _rows_of(reducer, layer, n_queries)
            if wanted is not None and start < wanted.stop and end > wanted.start:
                reducer.update(layer, chunk)
    if not fused and (rows.start > 0 or rows.stop < n_queries):  # rows no reducer wanted: plain attention
        full = _sdpa(query, key, value, mask, causal, scale)
        full[:, :, rows.start : rows.stop] = output[:, :, rows.start : rows.stop]
        output = full
    return output
