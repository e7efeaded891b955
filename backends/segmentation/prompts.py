"""The user's clicks and box are honoured by every model's answer.

A mask never leaves the box; an exclude click is never inside the mask (the part of the mask connected to it is
removed); an include click that still lies outside the mask gets a note saying why.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from backends.segmentation.query import Query


def _pixel(x: float, y: float, shape: tuple[int, int]) -> tuple[int, int]:
    """(row, column) of image coordinates (x, y), clamped to the image."""
    return min(shape[0] - 1, max(0, int(y))), min(shape[1] - 1, max(0, int(x)))


def box_region(box: tuple[float, float, float, float] | None, shape: tuple[int, int]) -> np.ndarray:
    """Boolean [H, W] map of the pixels inside ``box`` (everything when there is no box)."""
    region = np.zeros(shape, bool)
    if box is None:
        region[:] = True
        return region
    x0, y0, x1, y1 = box
    region[int(np.floor(y0)):int(np.ceil(y1)), int(np.floor(x0)):int(np.ceil(x1))] = True
    return region


def honour_prompts(probability: np.ndarray, query: Query, threshold: float) -> tuple[np.ndarray, list[str]]:
    """``probability`` [H, W] with zeros outside the box and on the mask parts under exclude clicks (the mask
    being ``probability > threshold``), and notes on include clicks the mask still misses."""
    inside = box_region(query.box, probability.shape)
    honoured = np.where(inside, probability, 0.0).astype(np.float32)
    notes = []
    removed = False
    for x, y, label in query.points:
        row, col = _pixel(x, y, probability.shape)
        if label == 0 and honoured[row, col] > threshold:
            components, _ = ndimage.label(honoured > threshold)
            honoured[components == components[row, col]] = 0.0
            removed = True
    if removed:
        notes.append("the parts of the mask under the exclude clicks were removed")
    for x, y, label in query.points:
        row, col = _pixel(x, y, probability.shape)
        if label != 1 or honoured[row, col] > threshold:
            continue
        if not inside[row, col]:
            why = "it lies outside the box, and the mask never leaves the box"
        elif probability[row, col] > threshold:
            why = "its part of the mask touched an exclude click and was removed"
        else:
            why = (f"the model gives it probability {probability[row, col]:.2f}, below the threshold {threshold:g}; "
                   "lower the threshold, pick another candidate or add a box")
        notes.append(f"the include click at ({x:g}, {y:g}) is not in the mask: {why}")
    return honoured, notes
