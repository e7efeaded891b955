"""What every segmentation adapter takes and returns, and parsing of the API's point/box strings."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from PIL import Image

from backends.core.service import ServiceError

MAX_CLICKS = 4

@dataclass
class Query:
    """One request in image pixel coordinates: expression, clicks (x, y, label 1/0) and an optional box."""

    image: Image.Image  # RGB
    expression: str = ""
    points: list[tuple[float, float, int]] = field(default_factory=list)
    box: tuple[float, float, float, float] | None = None


@dataclass
class Prediction:
    """Candidate probability maps at the image's size, their predicted scores and optional extras."""

    probabilities: np.ndarray  # [K, H, W] float32 in [0, 1]
    scores: list[float]
    extras: dict[str, Any] = field(default_factory=dict)


class SegmentationModel(Protocol):
    """A loaded segmentation model (embedded or hub)."""

    name: str

    def predict(self, query: Query) -> Prediction:
        """Candidate masks for ``query``."""


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ServiceError(f"{what} must be a finite number, not {value!r}")
    return float(value)


def _load_json(text: str, what: str, example: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ServiceError(f"{what} is not valid JSON ({error.msg}); write it like {example}") from error


def parse_points(text: str, width: int, height: int) -> tuple[list[tuple[float, float, int]], list[str]]:
    """Clicks from a JSON list of [x, y, label] (label 1 = include, 0 = exclude) and notes about what was dropped.

    Points outside the image are an error; beyond MAX_CLICKS only the last ones are kept (with a note).
    """
    if not text or not text.strip():
        return [], []
    raw = _load_json(text, "points", "[[120, 80, 1], [40, 200, 0]]")
    if not isinstance(raw, list) or any(not isinstance(p, (list, tuple)) or len(p) != 3 for p in raw):
        raise ServiceError("points must be a JSON list of [x, y, label] triples, e.g. [[120, 80, 1], [40, 200, 0]]")
    points = []
    for x, y, label in raw:
        x, y = _number(x, "a point's x"), _number(y, "a point's y")
        if label not in (0, 1):
            raise ServiceError(f"a point's label must be 1 (include) or 0 (exclude), not {label!r}")
        if not (0 <= x <= width and 0 <= y <= height):
            raise ServiceError(f"point ({x:g}, {y:g}) lies outside the {width}×{height} image")
        points.append((x, y, int(label)))
    notes = []
    if len(points) > MAX_CLICKS:
        notes.append(f"only the last {MAX_CLICKS} of {len(points)} points were used")
        points = points[-MAX_CLICKS:]
    return points, notes


def parse_box(text: str, width: int, height: int) -> tuple[float, float, float, float] | None:
    """A box from JSON [x0, y0, x1, y1] in pixels ("" or "[]" = no box); it must overlap the image."""
    if not text or not text.strip():
        return None
    raw = _load_json(text, "box", "[30, 40, 200, 180]")
    if raw in ([], None):
        return None
    if not isinstance(raw, list) or len(raw) != 4:
        raise ServiceError("box must be a JSON list [x0, y0, x1, y1], e.g. [30, 40, 200, 180]")
    x0, y0, x1, y1 = (_number(v, "a box coordinate") for v in raw)
    x0, x1 = sorted((x0, x1))
    y0, y1 = sorted((y0, y1))
    if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
        raise ServiceError(f"box [{x0:g}, {y0:g}, {x1:g}, {y1:g}] lies outside the {width}×{height} image")
    if x1 - x0 < 2 or y1 - y0 < 2:
        raise ServiceError("the box is too small: give two distinct corners [x0, y0, x1, y1]")
    return max(0.0, x0), max(0.0, y0), min(float(width), x1), min(float(height), y1)
