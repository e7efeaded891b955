"""Rectified-flow training of the embedded DiT: x_t = (1 − t)·x₀ + t·ε, the model predicts v = ε − x₀.

t is drawn from a logit-normal law. Sampling integrates dx/dt = v from t = 1 (noise) to t = 0 with diffusers'
FlowMatchEulerDiscreteScheduler, whose timesteps are 1000·t like the ones used here (see ``sampler.py``).
"""

from __future__ import annotations

import torch
from diffusers import DiTTransformer2DModel

from backends.guidance.model import NULL_CLASS, TIMESTEP_SCALE


def predict_velocity(
    dit: DiTTransformer2DModel, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """The DiT's velocity for noisy images ``x`` at flow times ``t`` [B] (in [0, 1]) and class ``labels`` [B]."""
    return dit(x, timestep=t * TIMESTEP_SCALE, class_labels=labels).sample


def flow_matching_loss(
    dit: DiTTransformer2DModel,
    clean: torch.Tensor,
    labels: torch.Tensor,
    generator: torch.Generator,
    label_dropout: float,
) -> torch.Tensor:
    """Mean squared velocity error at logit-normal t; labels become the null class at rate ``label_dropout``."""
    batch = clean.shape[0]
    device = clean.device
    t = torch.sigmoid(torch.randn(batch, device=device, generator=generator))
    noise = torch.randn(clean.shape, device=device, generator=generator)
    dropped = torch.rand(batch, device=device, generator=generator) < label_dropout
    labels = torch.where(dropped, torch.full_like(labels, NULL_CLASS), labels)
    tb = t.view(-1, 1, 1, 1)
    noisy = (1 - tb) * clean + tb * noise
    velocity = predict_velocity(dit, noisy, t, labels)
    return torch.nn.functional.mse_loss(velocity.float(), noise - clean)
