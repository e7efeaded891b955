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
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import platformdirs

from backends.core.service import ServiceError

_ITEM = re.compile(r"^(?:l?(\d+)(?:[.:]h?|h)(\d+|\*)|l(\d+))$")
_SEPARATORS = re.compile(r"[\s,;]+")
SYNTAX = "write layer.head (18.6 or L18H6), layer.* or L18 for a whole layer, all, or none"

Grid = list[list[float | None]]
#: how many heads each task's ``top`` list of an atlas names
TOP_K = 5


class Head(NamedTuple):
    """One attention head: its layer and its index within the layer (both 0-based)."""

    layer: int
    head: int

    def __str__(self) -> str:
        return f"{self.layer}.{self.head}"


@dataclass(frozen=True)
class HeadStack:
    """A named attention stack (e.g. "DiT self-attention") of ``layers`` layers × ``heads`` heads.

    Stacks whose layers differ in width (a U-Net's levels) give ``heads_per_layer``; ``heads`` is then the widest
    layer and the heads a layer lacks do not exist (their cells in layers×heads grids are None). ``layer_names``
    optionally says what each layer is.
    """

    name: str
    layers: int
    heads: int
    heads_per_layer: tuple[int, ...] = ()
    layer_names: tuple[str, ...] = ()

    def width(self, layer: int) -> int:
        """How many heads ``layer`` has."""
        return self.heads_per_layer[layer] if self.heads_per_layer else self.heads

    def all_heads(self) -> list[Head]:
        """Every head, layer by layer."""
        return [Head(layer, head) for layer in range(self.layers) for head in range(self.width(layer))]

    def parse(self, spec: str) -> list[Head]:
        """:func:`parse_heads` on this stack."""
        found = parse_heads(spec, self.layers, self.heads, self.name)
        if not self.heads_per_layer:
            return found
        text = (spec or "").strip().lower()
        for item in [] if text in ("", "none", "all") else filter(None, _SEPARATORS.split(text)):
            match = _ITEM.match(item)  # parse_heads accepted every item
            layer, head = int(match.group(1) or match.group(3)), match.group(2)
            if head not in (None, "*") and int(head) >= self.width(layer):
                raise ServiceError(f"heads: head {layer}.{head} does not exist; layer {layer} of the {self.name} has "
                                   f"heads 0–{self.width(layer) - 1}")
        return [head for head in found if head.head < self.width(head.layer)]

    def grid(self, values: Mapping[Head, float]) -> Grid:
        """A layers×heads grid of ``values`` (0.0 for heads not given, None for heads the stack lacks)."""
        return [[values.get(Head(layer, head), 0.0) if head < self.width(layer) else None
                 for head in range(self.heads)] for layer in range(self.layers)]

    def describe(self) -> dict:
        """JSON: ``stack`` (its name), ``layers``, ``heads`` (and ``heads_per_layer``, ``layer_names`` if set)."""
        described: dict = {"stack": self.name, "layers": self.layers, "heads": self.heads}
        if self.heads_per_layer:
            described["heads_per_layer"] = list(self.heads_per_layer)
        if self.layer_names:
            described["layer_names"] = list(self.layer_names)
        return described


def names_no_head(spec: str | None) -> bool:
    """Whether a head list names no head ("", "none", blank); a :class:`ServiceError` if it is not text at all."""
    if spec is not None and not isinstance(spec, str):
        raise ServiceError(f"a head list is text, e.g. '2.1,L3', not {type(spec).__name__}")
    return (spec or "").strip().lower() in ("", "none")


def parse_heads(spec: str, layers: int, heads: int, stack: str = "model") -> list[Head]:
    """The heads a head list names, sorted and without repeats (see the module docstring for the forms).

    Raises :class:`ServiceError` for a malformed item or a layer/head outside ``layers`` × ``heads``; the message
    names the valid ranges of ``stack``.
    """
    if names_no_head(spec):
        return []
    text = spec.strip().lower()
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
    scales = [max((abs(value) for row in grid for value in row if value is not None), default=0.0) or 1.0
              for grid in grids]
    result = []
    for layer in range(layers):
        row = []
        for head in range(heads):
            if grids[0][layer][head] is None:
                row.append(None)
                continue
            weights = [abs(grid[layer][head]) / scale for grid, scale in zip(grids, scales, strict=True)]
            total = sum(weights)
            if total <= 0:
                row.append(0.0)
                continue
            entropy = -sum(w / total * math.log(w / total) for w in weights if w > 0)
            row.append(round(1.0 - entropy / math.log(len(grids)), 4))
        result.append(row)
    return result


def top_heads(grid: Sequence[Sequence[float | None]], k: int = 5) -> list[str]:
    """The ``k`` heads with the largest values of ``grid`` [layers][heads], largest first, as ``"L.H"`` (None cells
    are heads the stack lacks)."""
    cells = [(value, Head(layer, head)) for layer, row in enumerate(grid) for head, value in enumerate(row)
             if value is not None]
    cells.sort(key=lambda cell: (-cell[0], cell[1]))
    return [str(head) for _, head in cells[:k]]


def atlas_result(
    model: str, stack: HeadStack, metric: Mapping[str, str], baseline: Mapping[str, float],
    off_scores: Mapping[str, Sequence[float]], probe: dict, version: int, seconds: float,
    lower_is_better: Iterable[str] = (),
) -> dict:
    """The head-atlas JSON every panel returns, from each task's score with each head of ``stack`` off.

    ``off_scores[task]`` lists the task's score with one head off, for the heads of ``stack.all_heads()`` in order;
    ``effects[task]`` is that score − ``baseline[task]`` as a layers×heads grid (None where the stack has no head),
    ``relative`` the same in % of the baseline. ``better`` says per task whether higher or lower scores are better
    (tasks in ``lower_is_better``, e.g. a loss, are better lower).
    """
    heads, lower = stack.all_heads(), set(lower_is_better)
    effects, relative = {}, {}
    for task, scores in off_scores.items():
        base = float(baseline[task])
        change = {head: round(float(score) - base, 5) for head, score in zip(heads, scores, strict=True)}
        effects[task] = stack.grid(change)
        relative[task] = stack.grid({head: round(100.0 * value / max(abs(base), 1e-8), 3)
                                     for head, value in change.items()})
    return {
        "model": model, **stack.describe(), "tasks": list(off_scores), "metric": dict(metric),
        "better": {task: "lower" if task in lower else "higher" for task in off_scores},
        "baseline": {task: round(float(baseline[task]), 5) for task in off_scores}, "effects": effects,
        "relative": relative, "probe": probe, "version": version, "seconds": round(seconds, 2),
    }


def harm(atlas: dict, task: str, field: str = "effects") -> Grid:
    """How much removing each head hurts ``task``: its ``field`` ("effects" or "relative"), signed so that larger =
    worse for the task (None where the stack has no head)."""
    sign = 1.0 if atlas.get("better", {}).get(task) == "lower" else -1.0
    return [[None if value is None else sign * value for value in row] for row in atlas[field][task]]


def select_tasks(atlas: dict, tasks: Sequence[str]) -> dict:
    """The atlas restricted to ``tasks``, with their task specificity and each task's top heads (the heads whose
    removal hurts it, most first)."""
    tasks = list(tasks)
    effects = {name: atlas["effects"][name] for name in tasks}
    return {
        **atlas, "tasks": tasks, "metric": {name: atlas["metric"][name] for name in tasks},
        "better": {name: atlas.get("better", {}).get(name, "higher") for name in tasks},
        "baseline": {name: atlas["baseline"][name] for name in tasks}, "effects": effects,
        "relative": {name: atlas["relative"][name] for name in tasks},
        "specificity": task_specificity(effects),
        "top": {name: top_heads([[value if value is not None and value > 0 else None for value in row]
                                 for row in harm(atlas, name)], TOP_K) for name in tasks},
    }


def choose_tasks(spec: str, available: Sequence[str], model: str) -> list[str]:
    """The tasks a comma-separated ``spec`` names ("" = all of ``available``), without repeats; a
    :class:`ServiceError` names the unknown ones."""
    if spec is not None and not isinstance(spec, str):
        raise ServiceError(f"tasks: a comma-separated list of task names, not {type(spec).__name__}")
    chosen = [name.strip() for name in (spec or "").split(",") if name.strip()] or list(available)
    unknown = [name for name in chosen if name not in available]
    if unknown:
        raise ServiceError(f"tasks: {', '.join(map(repr, unknown))} not available for {model}; choose from "
                           f"{', '.join(available)}")
    return list(dict.fromkeys(chosen))


def effects_cache_dir() -> Path:
    """Where head-effect atlases are cached on disk (``HEADLAB_CACHE_DIR`` overrides the user cache dir)."""
    return Path(os.environ.get("HEADLAB_CACHE_DIR") or platformdirs.user_cache_dir("headlab")) / "head_effects"


class EffectsCache:
    """Head-effect results of one panel, kept in memory and as JSON files on disk, keyed by model and fingerprint.

    The fingerprint says what the result depends on (weights, probe set, code version): a changed fingerprint misses.
    ``shipped`` is a folder of atlases that ship with the app (``<key>.json``), read when the cache has none.
    """

    def __init__(self, panel: str, shipped: Path | None = None):
        self.panel = panel
        self.shipped = shipped
        self._memory: dict[str, dict] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()

    def get_or_compute(self, key: str, compute: Callable[[], dict]) -> tuple[dict, bool]:
        """(the result for ``key``, whether it was cached); computes it once (other callers wait and share it)."""
        with self._locks_lock:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            result = self.get(key)
            if result is not None:
                return result, True
            result = compute()
            self.put(key, result)
            return result, False

    def _path(self, key: str) -> Path:
        return effects_cache_dir() / self.panel / f"{re.sub(r'[^A-Za-z0-9._-]+', '_', key)}.json"

    def get(self, key: str) -> dict | None:
        """The cached result for ``key`` (memory first, then disk), or None."""
        if key in self._memory:
            return self._memory[key]
        paths = [self._path(key)]
        if self.shipped is not None:
            paths.append(self.shipped / self._path(key).name)
        for path in paths:
            try:
                result = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            self._memory[key] = result
            return result
        return None

    def put(self, key: str, result: dict) -> None:
        """Keep ``result`` in memory and write it to disk atomically (a failed write only loses the disk copy)."""
        self._memory[key] = result
        path = self._path(key)
        with suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
            temporary.write_text(json.dumps(result))
            temporary.replace(path)
