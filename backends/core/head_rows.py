"""Per-row head settings as tensors: what every panel's models take to switch heads off (or perturb them) row by
row of a batch, for one call."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def head_rows(head_sets: Sequence[Sequence[tuple[int, int]]], layers: int, heads: int, value: float = 1.0
              ) -> torch.Tensor:
    """A ``[len(head_sets), layers, heads]`` float tensor: ``value`` at each row's (layer, head) pairs, 0 elsewhere."""
    rows = torch.zeros(len(head_sets), layers, heads)
    for row, pairs in enumerate(head_sets):
        for layer, head in pairs:
            rows[row, layer, head] = value
    return rows
