"""The head vocabulary every panel shares: heads of an attention stack, head lists, task specificity, effect caches.

A head is ``(layer, head)`` (0-based) of a named attention stack with ``layers`` × ``heads`` heads. Head lists are
written as items separated by commas (spaces and semicolons work too):

* ``18.6``, ``18:6``, ``L18H6``, ``L18.H6`` — one head (layer 18, head 6);
* ``17.*``, ``L17H*`` or ``L17`` — every head of layer 17;
* ``all`` — every head; ``none`` or nothing — no head.

:func:`parse_heads` is the one parser (it raises :class:`ServiceError` naming the valid ranges) and
:func:`format_heads` writes the canonical form back (``"17.3,18.6"``). Pure Python: no torch, no numpy.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import platformdirs

from backends.core.service import ServiceError

_ITEM = re.compile(r"^(?:l?(\d+)(?:[.:]h?|h)(\d+|\*)|l(\d+))$")
_SEPARATORS = re.compile(r"[\s,;]+")
SYNTAX = "write layer.head (18.6 or L18H6), layer.* or L18 for a whole layer, all, or none"

Grid = list[list[float]]


class Head(NamedTuple):
    """One attention head: its layer and its index within the layer (both 0-based)."""

    layer: int
    head: int

    def __str__(self) -> str:
        return f"{self.layer}.{self.head}"


@dataclass(frozen=True)
class HeadStack:
    """A named attention stack (e.g. "DiT self-attention") of ``layers`` layers × ``heads`` heads."""

    name: str
    layers: int
    heads: int

    def all_heads(self) -> list[Head]:
        """Every head, layer by layer."""
        return [Head(layer, head) for layer in range(self.layers) for head in range(self.heads)]

    def parse(self, spec: str) -> list[Head]:
        """:func:`parse_heads` on this stack."""
        return parse_heads(spec, self.layers, self.heads, self.name)

    def describe(self) -> dict:
        """JSON: ``stack`` (its name), ``layers``, ``heads``."""
        return {"stack": self.name, "layers": self.layers, "heads": self.heads}


def parse_heads(spec: str, layers: int, heads: int, stack: str = "model") -> list[Head]:
    """The heads a head list names, sorted and without repeats (see the module docstring for the forms).

    Raises :class:`ServiceError` for a malformed item or a layer/head outside ``layers`` × ``heads``; the message
    names the valid ranges of ``stack``.
    """
    text = (spec or "").strip().lower()
    if text in ("", "none"):
        return []
    if text == "all":
        return HeadStack(stack, layers, heads).all_heads()
    found: set[Head] = set()
    for item in filter(None, _SEPARATORS.split(text)):
        match = _ITEM.match(item)
        if match is None:
            raise ServiceError(f"heads: {item!r} is not a head; {SYNTAX}")
        layer, head = int(match.group(1) or match.group(3)), match.group(2)
        if layer >= layers:
            raise ServiceError(f"heads: layer {layer} does not exist; the {stack} has layers 0–{layers - 1}")
        if head is None or head == "*":
            found.update(Head(layer, index) for index in range(heads))
        elif int(head) >= heads:
            raise ServiceError(f"heads: head {layer}.{head} does not exist; each layer of the {stack} has heads "
                               f"0–{heads - 1}")
        else:
            found.add(Head(layer, int(head)))
    return sorted(found)


def format_heads(heads: Iterable[tuple[int, int]]) -> str:
    """[(2, 1), (3, 0)] → ``"2.1,3.0"`` in the given order; no heads → ``"none"``."""
    return ",".join(f"{layer}.{head}" for layer, head in heads) or "none"


def task_specificity(effects: Mapping[str, Sequence[Sequence[float]]]) -> Grid:
    """Per head: 1 − the normalised entropy, over tasks, of the head's |effect| (0 = equal on all tasks, 1 = one task).

    Each task's |effect| is first divided by its largest |effect| over all heads, so tasks measured in different
    units weigh the same. A head with no effect on any task, and every head when there are fewer than two tasks,
    gets 0.
    """
    grids = list(effects.values())
    if not grids:
        return []
    layers, heads = len(grids[0]), len(grids[0][0])
    if len(grids) < 2:
        return [[0.0] * heads for _ in range(layers)]
    scales = [max((abs(value) for row in grid for value in row), default=0.0) or 1.0 for grid in grids]
    result = []
    for layer in range(layers):
        row = []
        for head in range(heads):
            weights = [abs(grid[layer][head]) / scale for grid, scale in zip(grids, scales, strict=True)]
            total = sum(weights)
            if total <= 0:
                row.append(0.0)
                continue
            entropy = -sum(w / total * math.log(w / total) for w in weights if w > 0)
            row.append(round(1.0 - entropy / math.log(len(grids)), 4))
        result.append(row)
    return result


def top_heads(grid: Sequence[Sequence[float]], k: int = 5) -> list[str]:
    """The ``k`` heads with the largest values of ``grid`` [layers][heads], largest first, as ``"L.H"``."""
    cells = [(value, Head(layer, head)) for layer, row in enumerate(grid) for head, value in enumerate(row)]
    cells.sort(key=lambda cell: (-cell[0], cell[1]))
    return [str(head) for _, head in cells[:k]]


def effects_cache_dir() -> Path:
    """Where head-effect atlases are cached on disk (``HEADLAB_CACHE_DIR`` overrides the user cache dir)."""
    return Path(os.environ.get("HEADLAB_CACHE_DIR") or platformdirs.user_cache_dir("headlab")) / "head_effects"


class EffectsCache:
    """Head-effect results of one panel, kept in memory and as JSON files on disk, keyed by model and fingerprint.

    The fingerprint says what the result depends on (weights, probe set, code version): a changed fingerprint misses.
    """

    def __init__(self, panel: str):
        self.panel = panel
        self._memory: dict[str, dict] = {}

    def _path(self, key: str) -> Path:
        return effects_cache_dir() / self.panel / f"{re.sub(r'[^A-Za-z0-9._-]+', '_', key)}.json"

    def get(self, key: str) -> dict | None:
        """The cached result for ``key`` (memory first, then disk), or None."""
        if key in self._memory:
            return self._memory[key]
        try:
            result = json.loads(self._path(key).read_text())
        except (OSError, ValueError):
            return None
        self._memory[key] = result
        return result

    def put(self, key: str, result: dict) -> None:
        """Keep ``result`` in memory and write it to disk atomically (a failed write only loses the disk copy)."""
        self._memory[key] = result
        path = self._path(key)
        with suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
            temporary.write_text(json.dumps(result))
            temporary.replace(path)
