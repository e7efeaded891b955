"""Guided sampling with classifier-free guidance and per-head SoftPAG in one batched forward per step.

Per step the batch holds up to three branches — [unconditional, conditional, perturbed] — and the prediction is

    ε = ε_u + w_cfg·(ε_c − ε_u) + w_pag·(ε_c − ε_pert)

Branches that cannot change the result are left out (no unconditional one at w_cfg = 1, no perturbed one at
w_pag = 0 or when no head is perturbed), so those settings reproduce the plain sampler exactly. Heads switched off
for a call (``heads_off``) are perturbed with u = 1 in every branch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from backends.guidance.adapters import GuidedModel
from backends.guidance.softpag import Perturbation


class CancelledError(Exception):
    """Raised by a progress callback to stop sampling or a search."""


def combine(
    predictions: list[torch.Tensor], use_cfg: bool, use_pag: bool, cfg_scale: float, pag_scale: float
) -> torch.Tensor:
    """The guided prediction from the branch predictions in batch order [unconditional?, conditional, perturbed?]."""
    branches = list(predictions)
    unconditional = branches.pop(0) if use_cfg else None
    conditional = branches.pop(0)
    guided = conditional if unconditional is None else unconditional + cfg_scale * (conditional - unconditional)
    if use_pag:
        guided = guided + pag_scale * (conditional - branches.pop(0))
    return guided


def encode_conditions(
    model: GuidedModel, condition: str | Sequence[str], count: int
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(conditional, unconditional) inputs for ``count`` samples of one condition, or of one condition per sample."""
    if isinstance(condition, str):
        return model.encode(condition, count)
    if len(condition) != count:
        raise ValueError(f"{len(condition)} conditions for {count} samples")
    if len(set(condition)) == 1:
        return model.encode(condition[0], count)
    pairs = [model.encode(each, 1) for each in condition]
    return tuple({key: torch.cat([pair[side][key] for pair in pairs]) for key in pairs[0][side]} for side in (0, 1))


def branch_strengths(
    count: int, use_cfg: bool, use_pag: bool, strengths: torch.Tensor | None, heads_off: torch.Tensor | None,
) -> torch.Tensor | None:
    """Per-row strengths [branches·count, L, H] of the batch [unconditional?, conditional, perturbed?], or None.

    ``heads_off`` heads are perturbed (u = 1 is ablation) in every branch; the perturbed branch adds ``strengths``.
    """
    if heads_off is None and not use_pag:
        return None
    shape = (count, *(heads_off if heads_off is not None else strengths).shape[1:])
    off = torch.zeros(shape) if heads_off is None else heads_off.float().expand(shape)
    rows = [off] * (2 if use_cfg else 1)
    if use_pag:
        rows.append(torch.maximum(off, strengths.float().expand(shape)))
    return torch.cat(rows)


@torch.no_grad()
def guided_sample(
    model: GuidedModel,
    condition: str | Sequence[str],
    seeds: list[int],
    steps: int,
    cfg_scale: float = 1.0,
    pag_scale: float = 0.0,
    strengths: torch.Tensor | None = None,
    target: str = "identity",
    on_step: Callable[[int], None] | None = None,
    heads_off: torch.Tensor | None = None,
) -> torch.Tensor:
    """Images [len(seeds), C, H, W] in [-1, 1]: one sample per seed, guided as the module docstring says.

    ``condition`` is one class/prompt for all samples or one per sample. ``strengths`` [len(seeds) or 1, layers,
    heads] are the per-head u of each sample's perturbed branch; ``heads_off`` (same shape, 1 = off) are heads
    perturbed in every branch, i.e. ablated for this call. Both travel with each forward (nothing on the model
    changes), so concurrent calls are independent. ``on_step(i)`` runs after every step (it may raise
    :class:`CancelledError`).
    """
    count = len(seeds)
    conditional, unconditional = encode_conditions(model, condition, count)
    use_cfg = cfg_scale != 1.0
    use_pag = pag_scale != 0.0 and strengths is not None and bool((strengths > 0).any())
    branches = ([unconditional] if use_cfg else []) + [conditional] + ([conditional] if use_pag else [])
    inputs = {key: torch.cat([branch[key] for branch in branches]) for key in conditional}
    plan = branch_strengths(count, use_cfg, use_pag, strengths, heads_off)
    perturbation = None if plan is None else Perturbation(plan.to(model.device), target)
    scheduler = model.new_scheduler()
    scheduler.set_timesteps(steps, device=model.device)
    latents = model.initial_latents(seeds) * getattr(scheduler, "init_noise_sigma", 1.0)
    for index, timestep in enumerate(scheduler.timesteps):
        batch = torch.cat([latents] * len(branches))
        if hasattr(scheduler, "scale_model_input"):
            batch = scheduler.scale_model_input(batch, timestep)
        predictions = model.predict(batch, timestep, inputs, perturbation).float().chunk(len(branches))
        guided = combine(predictions, use_cfg, use_pag, cfg_scale, pag_scale)
        latents = scheduler.step(guided, timestep, latents).prev_sample
        if on_step is not None:
            on_step(index)
    return model.decode(latents)
