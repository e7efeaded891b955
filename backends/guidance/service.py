"""The Guidance panel's service: per-head SoftPAG sampling and HeadHunter search on diffusion transformers.

Models: ``fashion-dit`` (embedded, trained by HeadLab on Fashion-MNIST; works offline on CPU) and the hub models
DiT-XL-2-256, PixArt-Σ and SD3 (need the hub or a local cache, and in practice a GPU). Long calls report their
progress through ``guidance_progress`` and stop early on ``guidance_cancel``.

Calls run concurrently: which heads to perturb or switch off travels with each call (``softpag.Perturbation``), so
nothing on the shared model changes during a call and there is no panel-wide lock.
"""

from __future__ import annotations

import itertools
import json
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from backends.core.heads import EffectsCache, choose_tasks, format_heads, select_tasks
from backends.core.service import Service, ServiceError
from backends.core.text import check_text
from backends.guidance.adapters import ASSETS, EMBEDDED_MODEL, HUB_MODELS, GuidedModel, load_guided_model
from backends.guidance.api import GuidanceAPI
from backends.guidance.atlas import (
    ATLAS_VERSION,
    compute_head_effects,
    effect_grid_images,
    probe_for,
)
from backends.guidance.headhunter import SearchSettings, head_hunter
from backends.guidance.objectives import OBJECTIVES, objectives_for, per_sample
from backends.guidance.sampler import CancelledError, guided_sample
from backends.guidance.softpag import strengths_for

MAX_LABEL_CHARS = 500  # a class name or a text-to-image prompt

IDLE = {"running": None, "done": 0, "total": 0, "message": ""}
#: the head set HeadHunter chose for the embedded model (bench/bench_guidance.py); the panel's default selection
SHIPPED_HEAD_SET = ASSETS / "head_set.json"
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


def image_grid(
    images: torch.Tensor, pad: int = GRID_PAD, cols: int | None = None
) -> tuple[Image.Image, dict[str, int]]:
    """Tile images [N, C, H, W] in [-1, 1] into an RGB grid (near-square unless ``cols``); returns it and its layout."""
    count, _, height, _ = images.shape
    scale = max(1, math.ceil(MIN_TILE / height))
    tiles = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
    tiles = tiles.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    if tiles.shape[1] == 1:
        tiles = tiles.expand(-1, 3, -1, -1)
    tile = height * scale
    cols = cols or math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    canvas = np.full((rows * tile + (rows + 1) * pad, cols * tile + (cols + 1) * pad, 3), 255, np.uint8)
    for index in range(count):
        top = pad + (index // cols) * (tile + pad)
        left = pad + (index % cols) * (tile + pad)
        canvas[top:top + tile, left:left + tile] = tiles[index].permute(1, 2, 0).numpy()
    return Image.fromarray(canvas), {"rows": rows, "cols": cols, "tile": tile, "pad": pad}


@dataclass
class _Job:
    """One running sampling call, search or atlas: its progress and its cancel flag."""

    name: str
    total: float
    done: float = 0
    message: str = ""
    started: float = field(default_factory=time.time)
    cancel: threading.Event = field(default_factory=threading.Event)

    def describe(self) -> dict[str, Any]:
        """JSON: ``running`` (endpoint), ``done`` of ``total``, ``message``, ``started``."""
        return {"running": self.name, "done": round(self.done, 3), "total": self.total, "message": self.message,
                "started": self.started}


class GuidanceService(GuidanceAPI, Service):
    """Per-head perturbation guidance (SoftPAG) with CFG, HeadHunter head search and the head atlas."""

    default_model = EMBEDDED_MODEL
    known_models: ClassVar[tuple[str, ...]] = (EMBEDDED_MODEL, *HUB_MODELS)

    def __init__(self, device: str | None = None):
        super().__init__(device)
        self._jobs: dict[int, _Job] = {}
        self._job_ids = itertools.count()
        self._jobs_lock = threading.Lock()  # guards the job table only; calls themselves run concurrently
        self.effects_cache = EffectsCache(self.panel, SHIPPED_HEAD_SET.parent / "head_effects")

    def load_model(self, model_id: str) -> GuidedModel:
        """The embedded DiT or a hub pipeline, with SoftPAG processors installed."""
        try:
            return load_guided_model(model_id, self.device, self.dtype)
        except (OSError, ValueError) as error:
            hint = "" if model_id == EMBEDDED_MODEL else " (hub models need internet or a local cache, and a GPU)"
            raise ServiceError(f"cannot load model {model_id!r}: {error}{hint}") from error

    @contextmanager
    def _job(self, name: str, total: float) -> Iterator[_Job]:
        """Register a running call so ``guidance_progress`` shows it and ``guidance_cancel`` can stop it."""
        job = _Job(name, total)
        with self._jobs_lock:
            key = next(self._job_ids)
            self._jobs[key] = job
        try:
            yield job
        finally:
            with self._jobs_lock:
                del self._jobs[key]

    @staticmethod
    def _reporter(job: _Job) -> Callable[[float, float, str], None]:
        """A progress callback for ``job``: records progress, raises :class:`CancelledError` once cancelled."""

        def report(done: float, total: float, message: str = "") -> None:
            job.done, job.total, job.message = done, total, message
            if job.cancel.is_set():
                raise CancelledError

        return report

    def guidance_layout(self, model: str = "") -> dict:
        guided = self.model(model)
        return {**guided.describe(), "objectives": {name: OBJECTIVES[name] for name in objectives_for(guided)},
                "default_heads": shipped_head_set(guided)}

    def guidance_sample(
        self, model: str = "", label: str = "Sneaker", n: int = 8, seed: int = 0, steps: int = 20,
        cfg_scale: float = 1.0, pag_scale: float = 3.0, heads: str = "none", u: float = 1.0, heads_off: str = "",
    ) -> tuple[Image.Image, dict]:
        for name, value in (("n", n), ("steps", steps), ("cfg_scale", cfg_scale), ("pag_scale", pag_scale), ("u", u)):
            check_range(name, value)
        label = check_text(label, "class (embedded model) or prompt (text-to-image models)", MAX_LABEL_CHARS)
        guided = self.model(model)
        if guided.name != EMBEDDED_MODEL and n > HUB_MAX_SAMPLES:
            raise ServiceError(f"hub models draw at most {HUB_MAX_SAMPLES} samples per call")
        chosen = guided.stack.parse(heads)
        switched_off = guided.stack.parse(heads_off)
        strengths = strengths_for([chosen], u, guided.layers, guided.heads)
        off = strengths_for([switched_off], 1.0, guided.layers, guided.heads) if switched_off else None
        seeds = [int(seed) + index for index in range(int(n))]
        start = time.perf_counter()
        try:
            with self._job("guidance_sample", int(steps)) as job:
                report = self._reporter(job)
                images = guided_sample(
                    guided, label, seeds, int(steps), cfg_scale, pag_scale, strengths,
                    on_step=lambda index: report(index + 1, int(steps), f"step {index + 1}/{steps}"), heads_off=off,
                )
        except CancelledError as error:
            raise ServiceError("Sampling was cancelled.") from error
        grid, layout = image_grid(images)
        objective = objectives_for(guided)[0]
        scores = per_sample(guided, objective, images, label)
        return grid, {
            "model": guided.name, "label": label, "seeds": seeds, "steps": int(steps), "cfg_scale": cfg_scale,
            "pag_scale": pag_scale, "heads": format_heads(chosen), "u": u, "heads_off": format_heads(switched_off),
            "grid": layout,
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
        label = check_text(label, "class (embedded model) or prompt (text-to-image models)", MAX_LABEL_CHARS)
        if guided.conditioning == "class":
            guided.class_index(label)  # a bad label fails now, not after the first round
        settings = SearchSettings(
            condition=label, objective=objective, seeds=int(seeds), rounds=int(rounds), top_k=int(top_k), u=u,
            pag_scale=pag_scale, cfg_scale=cfg_scale, steps=int(steps),
            max_batch=144 if guided.device.type == "cpu" and guided.name == EMBEDDED_MODEL else 16,
        )
        with self._job("guidance_search", 0) as job:
            return {"model": guided.name, **head_hunter(guided, settings, self._reporter(job))}

    def guidance_head_effects(self, model: str = "", tasks: str = "") -> dict:
        guided = self.model(model)
        chosen = choose_tasks(tasks, objectives_for(guided), guided.name)
        probe = probe_for(guided)

        def compute() -> dict:
            try:
                with self._job("guidance_head_effects", 1 + guided.layers * guided.heads) as job:
                    return compute_head_effects(guided, self._reporter(job))
            except CancelledError as error:
                raise ServiceError("The head atlas was cancelled.") from error

        key = f"{guided.fingerprint()}-v{ATLAS_VERSION}-{len(probe.seeds)}x{probe.steps}"
        atlas, cached = self.effects_cache.get_or_compute(key, compute)
        return {**select_tasks(atlas, chosen), "cached": cached}

    def guidance_effect_grid(self, model: str = "", label: str = "Sneaker", seed: int = 0, steps: int = 20) -> tuple:
        check_range("steps", steps)
        label = check_text(label, "class (embedded model) or prompt (text-to-image models)", MAX_LABEL_CHARS)
        guided = self.model(model)
        if guided.name != EMBEDDED_MODEL:
            raise ServiceError("the effect grid samples one image per head: only the embedded model is fast enough")
        images = effect_grid_images(guided, label, int(seed), int(steps))
        blanks = torch.ones(guided.heads - 1, *images.shape[1:])
        grid, layout = image_grid(torch.cat([images[:1], blanks, images[1:]]), cols=guided.heads)
        objective = objectives_for(guided)[0]
        scores = per_sample(guided, objective, images, label)
        per_head = np.round(scores[1:], 5).reshape(guided.layers, guided.heads).tolist()
        return grid, {"model": guided.name, "label": label, "seed": int(seed), "steps": int(steps), "grid": layout,
                      "objective": {"name": objective, "baseline": round(float(scores[0]), 5), "per_head": per_head}}

    def guidance_progress(self) -> dict:
        with self._jobs_lock:
            jobs = [job.describe() for job in self._jobs.values()]
        return {**(jobs[0] if jobs else IDLE), "jobs": jobs}

    def guidance_cancel(self) -> dict:
        with self._jobs_lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            job.cancel.set()
        return {"cancelled": ",".join(dict.fromkeys(job.name for job in jobs)) or None}


def shipped_head_set(guided: GuidedModel) -> str:
    """The head list shipped for ``guided`` (``assets/guidance/head_set.json``), or "none" for other models."""
    try:
        record = json.loads(SHIPPED_HEAD_SET.read_text())
    except (OSError, ValueError):
        return "none"
    return format_heads(guided.stack.parse(record["heads"])) if record.get("model") == guided.name else "none"
