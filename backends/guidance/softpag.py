"""Per-head SoftPAG: perturbation guidance on chosen attention heads of a diffusers transformer.

For a selected head (l, h) with strength u ∈ [0, 1], the perturbed branch replaces the attention map A by
(1 − u)·A + u·T, where the target T is the identity (PAG) or the uniform map. Because I·V = V and the uniform map
gives the mean of V, the output is computed linearly, without any N×N map:

    O_h = (1 − u)·softmax(Q_h K_hᵀ / √d)·V_h + u·T(V_h)          (torch.lerp, exact at u = 0 and u = 1)

The perturbed branch is part of the same batch as the conditional and unconditional ones: the last
``PerturbationState.perturbed_rows`` rows of every forward are perturbed, each with its own per-(layer, head)
strengths, so a HeadHunter round can score many head sets in one batched pass. Supported attention modules:
self-attention ``attn1`` of DiT and PixArt blocks, and SD3's joint attention ``attn`` (there only the image-token
queries are perturbed; text queries keep their attention).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from diffusers.models.attention_processor import Attention
from torch.nn import functional

TARGETS = ("identity", "uniform")


@dataclass
class PerturbationState:
    """What every processor installed on one transformer reads: which rows are perturbed, and how strongly.

    ``strengths`` is [P or 1, layers, heads] (on the model's device): one row of per-head strengths for each of the
    batch's last P rows.
    """

    layers: int
    heads: int
    target: str = "identity"
    strengths: torch.Tensor | None = None
    perturbed_rows: int = 0
    _active: tuple[bool, ...] = ()
    _full: tuple[bool, ...] = ()

    def layer_strengths(self, layer: int) -> torch.Tensor | None:
        """[P or 1, heads] strengths of ``layer`` while it is perturbed, else None (plain attention)."""
        return self.strengths[:, layer] if self._active and self._active[layer] else None

    def fully_perturbed(self, layer: int) -> bool:
        """Whether every head of ``layer`` has u = 1 in every perturbed row."""
        return bool(self._full) and self._full[layer]

    @contextmanager
    def perturbing(self, strengths: torch.Tensor, rows: int, target: str = "identity") -> Iterator[None]:
        """Within the block, the batch's last ``rows`` rows are perturbed with ``strengths`` [rows or 1, L, H]."""
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, not {target!r}")
        if strengths.shape[1:] != (self.layers, self.heads) or strengths.shape[0] not in (1, rows):
            raise ValueError(f"strengths must be [{rows} or 1, {self.layers}, {self.heads}]")
        self._active = tuple((strengths > 0).any(dim=2).any(dim=0).tolist())
        self._full = tuple((strengths == 1).all(dim=2).all(dim=0).tolist())
        self.strengths, self.perturbed_rows, self.target = strengths, rows, target
        try:
            yield
        finally:
            self.strengths, self.perturbed_rows, self.target, self._active, self._full = None, 0, "identity", (), ()


def soft_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    strengths: torch.Tensor | None,
    rows: int,
    target: str,
    fully_perturbed: bool = False,
    perturbed_tokens: int | None = None,
) -> torch.Tensor:
    """Scaled dot-product attention [B, H, N, d] whose last ``rows`` rows lerp each head toward ``target``.

    ``strengths`` [rows or 1, H] are the heads' u (None: plain attention, bit-identical to diffusers);
    ``fully_perturbed`` says they are all 1. Only the first ``perturbed_tokens`` queries are perturbed (all if None).
    """
    if strengths is None:
        return functional.scaled_dot_product_attention(query, key, value, attn_mask=mask)
    normal = query.shape[0] - rows
    if target == "identity" and fully_perturbed and perturbed_tokens is None and mask is None:
        # every head of this layer is fully perturbed: the perturbed rows need no attention at all
        attended = functional.scaled_dot_product_attention(query[:normal], key[:normal], value[:normal])
        return torch.cat([attended, value[normal:]])
    output = functional.scaled_dot_product_attention(query, key, value, attn_mask=mask)
    tokens = slice(None, perturbed_tokens)
    if target == "identity":
        goal = value[normal:, :, tokens]
    else:
        goal = value[normal:].mean(dim=2, keepdim=True).expand_as(output[normal:, :, tokens])
    weight = strengths.to(output.dtype)[:, :, None, None].expand_as(goal)
    output[normal:, :, tokens] = torch.lerp(output[normal:, :, tokens], goal, weight)
    return output


def _heads_view(tensor: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, N, H·d] → [B, H, N, d]."""
    return tensor.view(tensor.shape[0], -1, heads, tensor.shape[-1] // heads).transpose(1, 2)


def _merge_heads(tensor: torch.Tensor) -> torch.Tensor:
    """[B, H, N, d] → [B, N, H·d]."""
    return tensor.transpose(1, 2).reshape(tensor.shape[0], -1, tensor.shape[1] * tensor.shape[3])


def _project(
    attn: Attention, states: torch.Tensor, to_q: Callable, to_k: Callable, to_v: Callable,
    norm_q: Callable | None, norm_k: Callable | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries, keys and values [B, H, N, d] of ``states``, with the optional query/key norms applied."""
    query, key, value = (_heads_view(project(states), attn.heads) for project in (to_q, to_k, to_v))
    if norm_q is not None:
        query = norm_q(query)
    if norm_k is not None:
        key = norm_k(key)
    return query, key, value


class _LayerProcessor:
    """An attention processor that reads layer ``layer``'s per-head strengths from the shared ``state``."""

    def __init__(self, state: PerturbationState, layer: int):
        self.state, self.layer = state, layer


class SoftPAGAttnProcessor(_LayerProcessor):
    """Self-attention processor (DiT / PixArt ``attn1``) with per-head SoftPAG; diffusers' maths otherwise."""

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attention of ``hidden_states`` [B, N, C] with the state's perturbation on the last rows."""
        if encoder_hidden_states is not None:
            raise ValueError("SoftPAGAttnProcessor is for self-attention layers only")
        residual = hidden_states
        batch_size, sequence_length, _ = hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        query, key, value = _project(attn, hidden_states, attn.to_q, attn.to_k, attn.to_v, attn.norm_q, attn.norm_k)
        state = self.state
        hidden_states = soft_attention(
            query, key, value, attention_mask, state.layer_strengths(self.layer), state.perturbed_rows, state.target,
            fully_perturbed=state.fully_perturbed(self.layer),
        )
        hidden_states = _merge_heads(hidden_states).to(query.dtype)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


class SoftPAGJointAttnProcessor(_LayerProcessor):
    """SD3 joint-attention processor with per-head SoftPAG on the image-token queries of the last rows."""

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Joint attention over [image tokens, text tokens], as diffusers' JointAttnProcessor2_0, plus SoftPAG."""
        image_tokens = hidden_states.shape[1]
        query, key, value = _project(attn, hidden_states, attn.to_q, attn.to_k, attn.to_v, attn.norm_q, attn.norm_k)
        if encoder_hidden_states is not None:
            context_query, context_key, context_value = _project(
                attn, encoder_hidden_states, attn.add_q_proj, attn.add_k_proj, attn.add_v_proj,
                attn.norm_added_q, attn.norm_added_k,
            )
            query = torch.cat([query, context_query], dim=2)
            key = torch.cat([key, context_key], dim=2)
            value = torch.cat([value, context_value], dim=2)
        state = self.state
        hidden_states = soft_attention(
            query, key, value, None, state.layer_strengths(self.layer), state.perturbed_rows, state.target,
            perturbed_tokens=image_tokens if encoder_hidden_states is not None else None,
        )
        hidden_states = _merge_heads(hidden_states).to(query.dtype)
        if encoder_hidden_states is not None:
            hidden_states, encoder_hidden_states = hidden_states[:, :image_tokens], hidden_states[:, image_tokens:]
            if not attn.context_pre_only:
                encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if encoder_hidden_states is not None:
            return hidden_states, encoder_hidden_states
        return hidden_states


def attention_layers(transformer: torch.nn.Module) -> list[Attention]:
    """The perturbable attention module of every block: SD3's joint ``attn``, else DiT/PixArt's ``attn1``."""
    layers = []
    for block in transformer.transformer_blocks:
        module = getattr(block, "attn1", None) or getattr(block, "attn", None)
        if not isinstance(module, Attention):
            raise ValueError(f"{type(block).__name__} has no diffusers self-attention module to perturb")
        if module.spatial_norm is not None or module.group_norm is not None:
            raise ValueError(f"{type(block).__name__}: attention with spatial/group norm is not supported")
        layers.append(module)
    return layers


def install_softpag(transformer: torch.nn.Module) -> PerturbationState:
    """Put SoftPAG processors on every block's attention; returns the state that steers them.

    With no perturbation active the processors compute exactly what diffusers' processors compute.
    """
    layers = attention_layers(transformer)
    state = PerturbationState(layers=len(layers), heads=layers[0].heads)
    for index, module in enumerate(layers):
        joint = module.add_q_proj is not None
        module.set_processor((SoftPAGJointAttnProcessor if joint else SoftPAGAttnProcessor)(state, index))
    return state


_HEAD = re.compile(r"^(\d+)\.(\d+)$")


def parse_heads(spec: str, layers: int, heads: int) -> list[tuple[int, int]]:
    """``"2.1,3.0"`` → [(2, 1), (3, 0)] (layer.head, 0-based); ``"none"`` or "" → []; ``"all"`` → every head.

    ``"L3"`` selects every head of layer 3. Raises ValueError with a readable message for anything else.
    """
    text = spec.strip().lower()
    if text in ("", "none"):
        return []
    if text == "all":
        return [(layer, head) for layer in range(layers) for head in range(heads)]
    chosen: list[tuple[int, int]] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        if item.startswith("l") and item[1:].isdigit():
            pairs = [(int(item[1:]), head) for head in range(heads)]
        elif match := _HEAD.match(item):
            pairs = [(int(match.group(1)), int(match.group(2)))]
        else:
            raise ValueError(f"heads: {item!r} is not like '2.1' (layer.head), 'L2', 'all' or 'none'")
        for layer, head in pairs:
            if layer >= layers or head >= heads:
                raise ValueError(f"heads: {layer}.{head} is outside this model's {layers} layers × {heads} heads")
            if (layer, head) not in chosen:
                chosen.append((layer, head))
    return chosen


def format_heads(pairs: list[tuple[int, int]]) -> str:
    """[(2, 1), (3, 0)] → ``"2.1,3.0"``; [] → ``"none"``."""
    return ",".join(f"{layer}.{head}" for layer, head in pairs) or "none"


def strengths_for(head_sets: list[list[tuple[int, int]]], u: float, layers: int, heads: int) -> torch.Tensor:
    """Per-row strengths [len(head_sets), layers, heads]: ``u`` on each row's heads, 0 elsewhere."""
    strengths = torch.zeros(len(head_sets), layers, heads)
    for row, pairs in enumerate(head_sets):
        for layer, head in pairs:
            strengths[row, layer, head] = u
    return strengths
