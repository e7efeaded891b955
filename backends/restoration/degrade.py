"""Synthetic degradations in torch (batched, on any device, seeded through a ``torch.Generator``).

* noise: additive white Gaussian noise, σ on the 0–255 scale (σ ∈ {15, 25, 50} in training);
* haze: the atmospheric scattering model I = J·t + A·(1 − t), t = exp(−β·d), with a depth proxy d made of a
  ramp (far at the top) plus a smooth random field;
* rain: sparse seeds smeared by an oriented line kernel (per-image angle and length), screen-blended onto the image.

All functions take and return float images B×3×H×W in [0, 1]; results are clipped to [0, 1] like a saved photo.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812 - the usual torch alias

NOISE_SIGMAS = (15.0, 25.0, 50.0)
RAIN_KERNEL = 31


def _uniform(batch: int, low: float, high: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return low + (high - low) * torch.rand(batch, generator=generator, device=device)


def add_noise(clean: torch.Tensor, sigma: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Add Gaussian noise with per-image standard deviation ``sigma`` (shape [B], 0–255 scale)."""
    noise = torch.randn(clean.shape, generator=generator, device=clean.device, dtype=clean.dtype)
    return (clean + noise * (sigma.view(-1, 1, 1, 1) / 255.0)).clamp(0, 1)


def depth_proxy(batch: int, height: int, width: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """A plausible scene depth in [0.1, 1] (B×1×H×W): a tilted top-far ramp plus a smooth random field."""
    tilt = _uniform(batch, -0.5, 0.5, generator, device).view(-1, 1, 1)
    rows = torch.linspace(1, 0, height, device=device).view(1, -1, 1)
    cols = torch.linspace(-0.5, 0.5, width, device=device).view(1, 1, -1)
    ramp = (rows + tilt * cols).unsqueeze(1)
    coarse = torch.randn(batch, 1, 4, 4, generator=generator, device=device)
    field = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
    mix = _uniform(batch, 0.4, 0.9, generator, device).view(-1, 1, 1, 1)
    depth = mix * ramp + (1 - mix) * 0.25 * field
    low = depth.amin(dim=(2, 3), keepdim=True)
    high = depth.amax(dim=(2, 3), keepdim=True)
    return 0.1 + 0.9 * (depth - low) / (high - low + 1e-6)


def add_haze(clean: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Haze with random density β ∈ [0.5, 1.8] and a bright, slightly tinted airlight A ∈ [0.7, 1]."""
    batch, _, height, width = clean.shape
    device = clean.device
    depth = depth_proxy(batch, height, width, generator, device)
    beta = _uniform(batch, 0.5, 1.8, generator, device).view(-1, 1, 1, 1)
    transmission = torch.exp(-beta * depth)
    airlight = _uniform(batch, 0.7, 1.0, generator, device).view(-1, 1, 1, 1)
    tint = 0.03 * torch.randn(batch, 3, 1, 1, generator=generator, device=device)
    airlight = (airlight + tint).clamp(0, 1)
    return (clean * transmission + airlight * (1 - transmission)).clamp(0, 1)


def _streak_kernels(angle: torch.Tensor, length: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
    """Anti-aliased line kernels (B×1×K×K), value 1 on the line, for angles in radians from vertical."""
    half = RAIN_KERNEL // 2
    coords = torch.arange(-half, half + 1, device=angle.device, dtype=torch.float32)
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    sin, cos = torch.sin(angle).view(-1, 1, 1), torch.cos(angle).view(-1, 1, 1)
    along = y * cos + x * sin
    across = -y * sin + x * cos
    profile = (1 - across.abs() / width.view(-1, 1, 1)).clamp(min=0)
    inside = (along.abs() <= length.view(-1, 1, 1) / 2).float()
    return (profile * inside).unsqueeze(1)


def add_rain(clean: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Rain streaks: per-image density, length (8–30 px), angle (±25°), width and brightness."""
    batch, _, height, width = clean.shape
    device = clean.device
    density = _uniform(batch, 0.002, 0.008, generator, device).view(-1, 1, 1, 1)
    seeds = torch.rand(batch, 1, height, width, generator=generator, device=device)
    brightness = torch.rand(batch, 1, height, width, generator=generator, device=device)
    drops = (seeds < density).float() * (0.4 + 0.6 * brightness)
    angle = _uniform(batch, -25.0, 25.0, generator, device) * math.pi / 180
    kernels = _streak_kernels(angle, _uniform(batch, 8, 30, generator, device),
                              _uniform(batch, 0.7, 1.5, generator, device))
    streaks = F.conv2d(drops.view(1, batch, height, width), kernels, padding=RAIN_KERNEL // 2, groups=batch)
    strength = _uniform(batch, 0.5, 0.9, generator, device).view(-1, 1, 1, 1)
    rain = streaks.view(batch, 1, height, width).clamp(0, 1) * strength
    return (1 - (1 - clean) * (1 - rain)).clamp(0, 1)


def degrade(clean: torch.Tensor, task: str, generator: torch.Generator, sigma: float | None = None) -> torch.Tensor:
    """Degrade a batch for ``task`` ('noise', 'haze', 'rain' or 'none'); noise σ is drawn from {15, 25, 50}
    unless ``sigma`` is given."""
    if task == "noise":
        if sigma is None:
            choice = torch.randint(len(NOISE_SIGMAS), (clean.shape[0],), generator=generator, device=clean.device)
            sigmas = torch.tensor(NOISE_SIGMAS, device=clean.device)[choice]
        else:
            sigmas = torch.full((clean.shape[0],), float(sigma), device=clean.device)
        return add_noise(clean, sigmas, generator)
    if task == "haze":
        return add_haze(clean, generator)
    if task == "rain":
        return add_rain(clean, generator)
    if task == "none":
        return clean.clone()
    raise ValueError(f"unknown task {task!r}")
