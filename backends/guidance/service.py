"""The Guidance panel's service: per-head SoftPAG sampling and HeadHunter search on diffusion transformers.

Models: ``fashion-dit`` (embedded, trained by HeadLab on Fashion-MNIST; works offline on CPU) and the hub models
DiT-XL-2-256, PixArt-Σ and SD3 (need the hub or a local cache, and in practice a GPU). Long calls report their
progress through ``guidance_progress`` and stop early on ``guidance_cancel``.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from backends.core.service import Service, ServiceError
from backends.guidance.adapters import EMBEDDED_MODEL, HUB_MODELS, GuidedModel, load_guided_model
from backends.guidance.api import GuidanceAPI
from backends.guidance.headhunter import SearchSettings, head_hunter
from backends.guidance.objectives import OBJECTIVES, objectives_for, per_sample
from backends.guidance.sampler import CancelledError, guided_sample
from backends.guidance.softpag import format_heads, parse_heads, strengths_for

IDLE = {"running": None, "done": 0, "total": 0, "message": ""}
GRID_PAD = 2
#: small tiles (the embedded 28×28 images) are enlarged to at least this many pixels for display
MIN_TILE = 112
#: most samples per call for hub models (large latents; the embedded model allows LIMITS["n"])
HUB_MAX_SAMPLES = 8
LIMITS = {"n": (1, 64), "steps": (1, 100), "cfg_scale": (0.0, 20.0), "pag_scale": (0.0, 20.0), "u": (0.0, 1.0),
          "seeds": (1, 16), "rounds": (1, 10)}


def check_range(name: str, value: float) -> None:
    """Raise a :class:`ServiceError` when ``value`` is outside ``LIMITS[name]`` (or not a finite number)."""
    low, high = LIMITS[name]
    if not isinstance(value, (int, float)) or not math.isfinite(value) or not low <= value <= high:
        raise ServiceError(f"{name} must be between {low} and {high}, not {value!r}")


def image_grid(images: torch.Tensor, pad: int = GRID_PAD) -> tuple[Image.Image, dict[str, int]]:
    """Tile images [N, C, H, W] in [-1, 1] into a near-square RGB grid; returns it and its layout."""
    count, _, height, _ = images.shape
    scale = max(1, math.ceil(MIN_TILE / height))
    tiles = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
    tiles = tiles.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    if tiles.shape[1] == 1:
        tiles = tiles.expand(-1, 3, -1, -1)
    tile = height * scale
    cols = math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    canvas = np.full((rows * tile + (rows + 1) * pad, cols * tile + (cols + 1) * pad, 3), 255, np.uint8)
    for index in range(count):
        top = pad + (index // cols) * (tile + pad)
        left = pad + (index % cols) * (tile + pad)
        canvas[top:top + tile, left:left + tile] = tiles[index].permute(1, 2, 0).numpy()
    return Image.fromarray(canvas), {"rows": rows, "cols": cols, "tile": tile, "pad": pad}


class GuidanceService(GuidanceAPI, Service):
    """Per-head perturbation guidance (SoftPAG) with CFG, and HeadHunter head search."""

    default_model = EMBEDDED_MODEL
    known_models: ClassVar[tuple[str, ...]] = (EMBEDDED_MODEL, *HUB_MODELS)

    def __init__(self, device: str | None = None):
        super().__init__(device)
        self._progress: dict[str, Any] = dict(IDLE)
        self._cancel = threading.Event()
        # the perturbation state lives on the shared model: one sampling run or search at a time
        self._run_lock = threading.Lock()

    def load_model(self, model_id: str) -> GuidedModel:
        """The embedded DiT or a hub pipeline, with SoftPAG processors installed."""
        try:
            return load_guided_model(model_id, self.device, self.dtype)
        except (OSError, ValueError) as error:
            hint = "" if model_id == EMBEDDED_MODEL else " (hub models need internet or a local cache, and a GPU)"
            raise ServiceError(f"cannot load model {model_id!r}: {error}{hint}") from error

    @contextmanager
    def _job(self, name: str, total: int) -> Iterator[None]:
        """Run one sampling call or search at a time, with its progress visible to ``guidance_progress``."""
        with self._run_lock:
            self._cancel.clear()
            self._progress = {"running": name, "done": 0, "total": total, "message": "", "started": time.time()}
            try:
                yield
            finally:
                self._progress = dict(IDLE)

    def _report(self, done: int, total: int, message: str = "") -> None:
        """Record progress; raise :class:`CancelledError` once ``guidance_cancel`` was called."""
        self._progress.update(done=done, total=total, message=message)
        if self._cancel.is_set():
            raise CancelledError

    def guidance_layout(self, model: str = "") -> dict:
        guided = self.model(model)
        return {**guided.describe(), "objectives": {name: OBJECTIVES[name] for name in objectives_for(guided)}}

    def guidance_sample(
        self, model: str = "", label: str = "Sneaker", n: int = 8, seed: int = 0, steps: int = 20,
        cfg_scale: float = 1.0, pag_scale: float = 3.0, heads: str = "none", u: float = 1.0,
    ) -> tuple[Image.Image, dict]:
        for name, value in (("n", n), ("steps", steps), ("cfg_scale", cfg_scale), ("pag_scale", pag_scale), ("u", u)):
            check_range(name, value)
        if not label.strip():
            raise ServiceError("Please give a class (embedded model) or a prompt (text-to-image models).")
        guided = self.model(model)
        if guided.name != EMBEDDED_MODEL and n > HUB_MAX_SAMPLES:
            raise ServiceError(f"hub models draw at most {HUB_MAX_SAMPLES} samples per call")
        chosen = parse_heads(heads, guided.layers, guided.heads)
        strengths = strengths_for([chosen], u, guided.layers, guided.heads)
        seeds = [int(seed) + index for index in range(int(n))]
        start = time.perf_counter()
        try:
            with self._job("guidance_sample", int(steps)):
                images = guided_sample(
                    guided, label, seeds, int(steps), cfg_scale, pag_scale, strengths,
                    on_step=lambda index: self._report(index + 1, int(steps), f"step {index + 1}/{steps}"),
                )
        except CancelledError as error:
            raise ServiceError("Sampling was cancelled.") from error
        grid, layout = image_grid(images)
        objective = objectives_for(guided)[0]
        scores = per_sample(guided, objective, images, label)
        return grid, {
            "model": guided.name, "label": label, "seeds": seeds, "steps": int(steps), "cfg_scale": cfg_scale,
            "pag_scale": pag_scale, "heads": format_heads(chosen), "u": u, "grid": layout,
            "objective": {"name": objective, "values": [round(float(v), 5) for v in scores],
                          "mean": round(float(scores.mean()), 5)},
            "seconds": round(time.perf_counter() - start, 3),
        }

    def guidance_search(
        self, model: str = "", label: str = "Sneaker", seeds: int = 4, rounds: int = 1, top_k: int = 3,
        u: float = 1.0, pag_scale: float = 3.0, cfg_scale: float = 1.0, steps: int = 20, objective: str = "confidence",
    ) -> dict:
        for name, value in (("seeds", seeds), ("rounds", rounds), ("steps", steps), ("cfg_scale", cfg_scale),
                            ("pag_scale", pag_scale), ("u", u)):
            check_range(name, value)
        guided = self.model(model)
        if objective not in objectives_for(guided):
            raise ServiceError(f"objective {objective!r} is not available for {guided.name}: use one of "
                               f"{', '.join(objectives_for(guided))}")
        if not 1 <= top_k <= guided.layers * guided.heads:
            raise ServiceError(f"top_k must be between 1 and {guided.layers * guided.heads}")
        if not label.strip():
            raise ServiceError("Please give a class (embedded model) or a prompt (text-to-image models).")
        if guided.conditioning == "class":
            guided.class_index(label)  # a bad label fails now, not after the first round
        settings = SearchSettings(
            condition=label, objective=objective, seeds=int(seeds), rounds=int(rounds), top_k=int(top_k), u=u,
            pag_scale=pag_scale, cfg_scale=cfg_scale, steps=int(steps),
            max_batch=144 if guided.device.type == "cpu" and guided.name == EMBEDDED_MODEL else 16,
        )
        with self._job("guidance_search", 0):
            return {"model": guided.name, **head_hunter(guided, settings, self._report)}

    def guidance_progress(self) -> dict:
        return dict(self._progress)

    def guidance_cancel(self) -> dict:
        running = self._progress.get("running")
        if running:
            self._cancel.set()
        return {"cancelled": running}
