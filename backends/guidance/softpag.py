"""Per-head SoftPAG: perturbation guidance on chosen attention heads of a diffusers transformer.

For a selected head (l, h) with strength u ∈ [0, 1], the perturbed branch replaces the attention map A by
(1 − u)·A + u·T, where the target T is the identity (PAG) or the uniform map. Because I·V = V and the uniform map
gives the mean of V, the output is computed linearly, without any N×N map:

    O_h = (1 − u)·softmax(Q_h K_hᵀ / √d)·V_h + u·T(V_h)          (torch.lerp, exact at u = 0 and u = 1)

What to perturb is an argument of each forward, never state: a :class:`Perturbation` holds per-row, per-(layer, head)
strengths for every row of the batch and travels to the processors the way diffusers passes per-call settings,
``transformer(..., cross_attention_kwargs={"perturbation": plan})`` (``joint_attention_kwargs`` for SD3). Calls that
overlap in other threads therefore never see each other's heads, and a HeadHunter round scores many head sets in
one batched pass. Supported attention modules: self-attention ``attn1`` of DiT and PixArt blocks, and SD3's joint
attention ``attn`` (there only the image-token queries are perturbed; text queries keep their attention).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers.models.attention_processor import Attention
from torch.nn import functional

from backends.core.head_rows import head_rows
from backends.core.heads import HeadStack

TARGETS = ("identity", "uniform")


class Perturbation:
    """One forward's plan: ``strengths`` [batch or 1, layers, heads] is each row's per-head u (0 = plain attention).

    Passed to the processors as the ``perturbation`` attention kwarg; immutable once built.
    """

    def __init__(self, strengths: torch.Tensor, target: str = "identity"):
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, not {target!r}")
        if strengths.dim() != 3:
            raise ValueError("strengths must be [batch or 1, layers, heads]")
        self.strengths, self.target = strengths, target
        self._active = tuple((strengths > 0).any(dim=2).any(dim=0).tolist())

    def layer_strengths(self, layer: int) -> torch.Tensor | None:
        """[batch or 1, heads] strengths of ``layer`` when any of its heads is perturbed, else None."""
        return self.strengths[:, layer] if self._active[layer] else None


def soft_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    strengths: torch.Tensor | None,
    target: str = "identity",
    perturbed_tokens: int | None = None,
) -> torch.Tensor:
    """Scaled dot-product attention [B, H, N, d] whose heads lerp toward ``target`` by their row's strength.

    ``strengths`` [B or 1, H] are the heads' u per row (None: plain attention, bit-identical to diffusers). Only the
    first ``perturbed_tokens`` queries are perturbed (all if None).
    """
    if strengths is None:
        return functional.scaled_dot_product_attention(query, key, value, attn_mask=mask)
    strengths = strengths.expand(query.shape[0], -1)
    if target == "identity" and perturbed_tokens is None and mask is None:
        full = (strengths == 1).all(dim=1)
        if bool(full.any()):  # rows whose every head outputs its values need no attention at all
            output = value.clone()
            rest = ~full
            if bool(rest.any()):
                output[rest] = soft_attention(query[rest], key[rest], value[rest], None, strengths[rest], target)
            return output
    output = functional.scaled_dot_product_attention(query, key, value, attn_mask=mask)
    rows = (strengths > 0).any(dim=1).nonzero().flatten()
    if rows.numel() == 0:
        return output
    tokens = slice(None, perturbed_tokens)
    attended = output[rows][:, :, tokens]
    if target == "identity":
        goal = value[rows][:, :, tokens]
    else:
        goal = value[rows].mean(dim=2, keepdim=True).expand_as(attended)
    weight = strengths[rows].to(output.dtype)[:, :, None, None].expand_as(goal)
    output[rows, :, tokens] = torch.lerp(attended, goal, weight)
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
    """An attention processor for layer ``layer``: it perturbs what the call's ``perturbation`` says for that layer."""

    def __init__(self, layer: int):
        self.layer = layer

    def strengths(self, perturbation: Perturbation | None) -> tuple[torch.Tensor | None, str]:
        """This layer's [batch or 1, heads] strengths (None: plain attention) and the target."""
        if perturbation is None:
            return None, "identity"
        return perturbation.layer_strengths(self.layer), perturbation.target


class SoftPAGAttnProcessor(_LayerProcessor):
    """Self-attention processor (DiT / PixArt ``attn1``) with per-head SoftPAG; diffusers' maths otherwise."""

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        perturbation: Perturbation | None = None,
    ) -> torch.Tensor:
        """Attention of ``hidden_states`` [B, N, C] with this call's ``perturbation`` applied."""
        if encoder_hidden_states is not None:
            raise ValueError("SoftPAGAttnProcessor is for self-attention layers only")
        residual = hidden_states
        batch_size, sequence_length, _ = hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        query, key, value = _project(attn, hidden_states, attn.to_q, attn.to_k, attn.to_v, attn.norm_q, attn.norm_k)
        hidden_states = soft_attention(query, key, value, attention_mask, *self.strengths(perturbation))
        hidden_states = _merge_heads(hidden_states).to(query.dtype)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


class SoftPAGJointAttnProcessor(_LayerProcessor):
    """SD3 joint-attention processor with per-head SoftPAG on the image-token queries."""

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        perturbation: Perturbation | None = None,
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
        strengths, target = self.strengths(perturbation)
        hidden_states = soft_attention(
            query, key, value, None, strengths, target,
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


class PerturbationBlindProcessor:
    """Wraps the processor of an attention module SoftPAG does not perturb (e.g. PixArt's cross-attention ``attn2``),
    accepting and ignoring the ``perturbation`` kwarg so diffusers passes it on without a warning."""

    def __init__(self, processor: Callable):
        self.processor = processor

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, perturbation: Perturbation | None = None) -> torch.Tensor:
        """The wrapped processor's attention."""
        return self.processor(attn, hidden_states, encoder_hidden_states, attention_mask)


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


def install_softpag(transformer: torch.nn.Module, name: str = "transformer") -> HeadStack:
    """Put SoftPAG processors on every block's attention (once, at load); returns the perturbable head stack.

    With no ``perturbation`` passed the processors compute exactly what diffusers' processors compute.
    """
    layers = attention_layers(transformer)
    for index, module in enumerate(layers):
        joint = module.add_q_proj is not None
        module.set_processor((SoftPAGJointAttnProcessor if joint else SoftPAGAttnProcessor)(index))
    for module in transformer.modules():
        blind = isinstance(module.processor, PerturbationBlindProcessor) if isinstance(module, Attention) else True
        if not blind and not any(module is layer for layer in layers):
            module.set_processor(PerturbationBlindProcessor(module.processor))
    kind = "joint attention" if layers[0].add_q_proj is not None else "self-attention"
    return HeadStack(f"{name} {kind}", len(layers), layers[0].heads)


def strengths_for(head_sets: list[list[tuple[int, int]]], u: float, layers: int, heads: int) -> torch.Tensor:
    """Per-row strengths [len(head_sets), layers, heads]: ``u`` on each row's heads, 0 elsewhere."""
    return head_rows(head_sets, layers, heads, u)
