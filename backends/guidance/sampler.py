"""Guided sampling with classifier-free guidance and per-head SoftPAG in one batched forward per step.

Per step the batch holds up to three branches — [unconditional, conditional, perturbed] — and the prediction is

    ε = ε_u + w_cfg·(ε_c − ε_u) + w_pag·(ε_c − ε_pert)

Branches that cannot change the result are left out (no unconditional one at w_cfg = 1, no perturbed one at
w_pag = 0 or when no head is perturbed), so those settings reproduce the plain sampler exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import torch

from backends.guidance.adapters import GuidedModel


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


@torch.no_grad()
def guided_sample(
    model: GuidedModel,
    condition: str,
    seeds: list[int],
    steps: int,
    cfg_scale: float = 1.0,
    pag_scale: float = 0.0,
    strengths: torch.Tensor | None = None,
    target: str = "identity",
    on_step: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Images [len(seeds), C, H, W] in [-1, 1]: one sample per seed, guided as the module docstring says.

    ``strengths`` [len(seeds) or 1, layers, heads] are the per-head u of each sample's perturbed branch.
    ``on_step(i)`` runs after every step (it may raise :class:`CancelledError`).
    """
    count = len(seeds)
    conditional, unconditional = model.encode(condition, count)
    use_cfg = cfg_scale != 1.0
    use_pag = pag_scale != 0.0 and strengths is not None and bool((strengths > 0).any())
    branches = ([unconditional] if use_cfg else []) + [conditional] + ([conditional] if use_pag else [])
    inputs = {key: torch.cat([branch[key] for branch in branches]) for key in conditional}
    scheduler = model.new_scheduler()
    scheduler.set_timesteps(steps, device=model.device)
    latents = model.initial_latents(seeds) * getattr(scheduler, "init_noise_sigma", 1.0)
    perturbation = (
        model.state.perturbing(strengths.to(model.device), count, target) if use_pag else nullcontext()
    )
    with perturbation:
        for index, timestep in enumerate(scheduler.timesteps):
            batch = torch.cat([latents] * len(branches))
            if hasattr(scheduler, "scale_model_input"):
                batch = scheduler.scale_model_input(batch, timestep)
            predictions = model.predict(batch, timestep, inputs).float().chunk(len(branches))
            guided = combine(predictions, use_cfg, use_pag, cfg_scale, pag_scale)
            latents = scheduler.step(guided, timestep, latents).prev_sample
            if on_step is not None:
                on_step(index)
    return model.decode(latents)
