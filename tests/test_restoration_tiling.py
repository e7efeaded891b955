"""Tiled restoration: bounded tile size, exact on pointwise maps, and no seams with a real network."""

from __future__ import annotations

import torch

from backends.restoration.model import TextPromptIR
from backends.restoration.tiling import count_tiles, restore_tiled, tile_layout
from tests.test_restoration_model import TINY, _randomised


def test_few_small_tiles_cover_the_image_with_the_overlap():
    for length in (100, 384, 385, 1000, 1024, 2048):
        size, starts = tile_layout(length, 384, 48)
        assert size <= 384 and starts[0] == 0 and starts[-1] + size == length
        assert all(b - a <= size - 48 for a, b in zip(starts, starts[1:], strict=False))
        assert len(starts) * size < length + len(starts) * 48 + 8 * len(starts)  # little repeated work
    assert tile_layout(1024, 512, 64)[0] == 384
    assert count_tiles(1000, 700, 384, 48) == 3 * 2


def test_pointwise_maps_are_reproduced_exactly_and_tiles_stay_small():
    image = torch.rand(1, 3, 150, 230)
    seen = []

    def square(part: torch.Tensor) -> torch.Tensor:
        seen.append(part.shape[-2:])
        return part**2

    assert torch.allclose(restore_tiled(square, image, tile=64, overlap=16), image**2, atol=1e-6)
    assert len(seen) == count_tiles(150, 230, 64, 16) and all(h <= 64 and w <= 64 for h, w in seen)


def test_a_network_restored_in_tiles_shows_no_seams():
    torch.manual_seed(0)
    model = _randomised(TextPromptIR(TINY), seed=2).eval()
    for module in model.modules():  # keep the random network's output in a sane range
        if isinstance(module, torch.nn.Conv2d) and module.out_channels == 3:
            module.weight.data *= 0.05
    text = torch.randn(1, 384)
    ramp = torch.linspace(0, 1, 160)
    image = (0.5 * (ramp.view(1, 1, -1, 1) + ramp.view(1, 1, 1, -1)) + 0.05 * torch.rand(1, 3, 160, 160)).clamp(0, 1)
    with torch.no_grad():
        whole = model(image, text)
        tiled = restore_tiled(lambda part: model(part, text), image, tile=64, overlap=16)
    assert (tiled - whole).abs().mean() < 0.02
    steps = (tiled[..., :, 1:] - tiled[..., :, :-1]).abs().mean(dim=(0, 1, 2))  # per column boundary
    _, starts = tile_layout(160, 64, 16)
    seam_columns = [start + offset for start in starts[1:] for offset in range(16)]
    others = [c for c in range(steps.numel()) if c not in seam_columns]
    assert steps[seam_columns].max() < 2 * steps[others].mean() + 0.01
