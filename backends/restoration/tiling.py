"""Seamless tiled inference with bounded memory.

Large images are cut into overlapping tiles; each tile is restored on its own and the results are blended with a
separable weight that ramps smoothly (raised cosine) over the overlap, so no seam appears and peak memory depends on
the tile size only. The output is accumulated on the CPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

TILE = 512
OVERLAP = 64


def tile_layout(length: int, max_tile: int, overlap: int) -> tuple[int, list[int]]:
    """Tile size and start offsets covering ``length`` with as few tiles of at most ``max_tile`` as possible,
    neighbours sharing at least ``overlap`` pixels; the tiles are shrunk to the smallest size that still covers
    (a multiple of 8), so little work is repeated."""
    if length <= max_tile:
        return length, [0]
    count = math.ceil((length - overlap) / (max_tile - overlap))
    size = min(max_tile, 8 * math.ceil((length + (count - 1) * overlap) / (8 * count)))
    stride = (length - size) / (count - 1)
    return size, [round(index * stride) for index in range(count)]


def _ramp(size: int, overlap: int, at_start: bool, at_end: bool) -> torch.Tensor:
    """1-D blending weight: raised-cosine ramps of width ``overlap`` at inner edges, 1 elsewhere."""
    weight = torch.ones(size)
    ramp = 0.5 - 0.5 * torch.cos(math.pi * (torch.arange(overlap) + 0.5) / overlap)
    if not at_start:
        weight[:overlap] = ramp
    if not at_end:
        weight[-overlap:] = ramp.flip(0)
    return weight


def count_tiles(height: int, width: int, tile: int = TILE, overlap: int = OVERLAP) -> int:
    """How many tiles ``restore_tiled`` uses for an image of this size."""
    return len(tile_layout(height, tile, overlap)[1]) * len(tile_layout(width, tile, overlap)[1])


@torch.no_grad()
def restore_tiled(restore: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, tile: int = TILE,
                  overlap: int = OVERLAP) -> torch.Tensor:
    """Apply ``restore`` (1×3×h×w → 1×3×h×w) to ``image`` (1×3×H×W, CPU) whole when it fits in one tile, else
    tile by tile (tiles of at most ``tile`` px a side), blending the tiles."""
    _, channels, height, width = image.shape
    if height <= tile and width <= tile:
        return restore(image).cpu()
    (tile_height, rows), (tile_width, cols) = tile_layout(height, tile, overlap), tile_layout(width, tile, overlap)
    output = torch.zeros(1, channels, height, width)
    total = torch.zeros(1, 1, height, width)
    for top in rows:
        for left in cols:
            bottom, right = top + tile_height, left + tile_width
            restored = restore(image[..., top:bottom, left:right]).float().cpu()
            weight = (_ramp(bottom - top, overlap, top == rows[0], top == rows[-1]).view(-1, 1)
                      * _ramp(right - left, overlap, left == cols[0], left == cols[-1]).view(1, -1))
            output[..., top:bottom, left:right] += restored * weight
            total[..., top:bottom, left:right] += weight
    return output / total
