"""The one training loop behind every panel's trainer (nanoGPT-style).

* :class:`Schedule`: a step-indexed learning rate, linear warm-up then cosine decay to a floor (floor 1: constant);
* :class:`Trainer`: optimisation steps (backward, gradient clipping, ``optimizer.step``, an optional after-step hook
  such as an EMA update), a loss curve averaged over ~15 s windows, and one resumable checkpoint —
  ``checkpoint.pt`` holding the modules, the optimizer, the step and the schedule — written every ~60 s and at the end.

A run ends at its schedule's last step or when its time budget is spent, whichever comes first. ``--resume DIR``
(:func:`resume_point`) continues a checkpoint exactly: the same optimizer moments, step and schedule; when the
schedule was already finished, or DIR holds weights only (the shipped ``assets/``), a new schedule starts at that
step, from those weights.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

CHECKPOINT_FILE = "checkpoint.pt"
LOG_EVERY_S = 15.0
CHECKPOINT_EVERY_S = 60.0

StepFunction = Callable[[int], tuple[torch.Tensor, dict[str, float | torch.Tensor]]]


@dataclass(frozen=True)
class Schedule:
    """Learning rate by step: linear warm-up over ``warmup_steps`` from ``first_step``, then cosine decay from
    ``peak`` to ``floor``·peak at ``last_step``."""

    peak: float
    first_step: int
    last_step: int
    warmup_steps: int = 100
    floor: float = 0.05

    def lr(self, step: int) -> float:
        """The learning rate of ``step``."""
        warm = min(1.0, (step - self.first_step + 1) / self.warmup_steps)
        progress = min(1.0, (step - self.first_step) / max(1, self.last_step - self.first_step))
        return self.peak * warm * (self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * progress)))

    def to_dict(self) -> dict:
        """The schedule as JSON-ready values."""
        return asdict(self)


@dataclass
class ResumePoint:
    """Where a run starts: a checkpoint to restore (None: a fresh optimizer) and the schedule to follow."""

    checkpoint: Path | None
    schedule: Schedule


def resume_point(resume: Path | None, weights_step: int, new_schedule: Callable[[int], Schedule]) -> ResumePoint:
    """The start of a run given ``--resume`` (a run directory or a file in it; None: a new model).

    With an unfinished checkpoint there, the run continues its schedule; otherwise ``new_schedule(first_step)``
    starts at the checkpoint's step, or at ``weights_step`` (the step recorded with the weights resumed from)."""
    folder = None if resume is None else resume if resume.is_dir() else resume.parent
    path = None if folder is None else folder / CHECKPOINT_FILE
    if path is None or not path.exists():
        return ResumePoint(None, new_schedule(weights_step if resume is not None else 0))
    saved = torch.load(path, map_location="cpu", weights_only=True)
    schedule = Schedule(**saved["schedule"])
    if saved["step"] >= schedule.last_step:
        schedule = new_schedule(saved["step"])
    return ResumePoint(path, schedule)


@dataclass
class Trainer:
    """Optimises ``modules["model"]`` (every module in ``modules`` is checkpointed) with ``optimizer`` by
    ``schedule``; ``out`` (None: no checkpoint) receives ``checkpoint.pt``."""

    modules: dict[str, nn.Module]
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    out: Path | None = None
    clip: float | None = 1.0
    after_step: Callable[[int], None] | None = None
    log: Callable[[str], None] = print
    step: int = field(init=False)
    curve: list[dict] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.step = self.schedule.first_step

    def restore(self, path: Path) -> None:
        """Load the modules, optimizer and step of a checkpoint (its schedule is chosen by :func:`resume_point`)."""
        saved = torch.load(path, map_location="cpu", weights_only=True)
        for name, module in self.modules.items():
            module.load_state_dict(saved["modules"][name])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.step = int(saved["step"])

    def save(self) -> None:
        """Write ``checkpoint.pt`` atomically (nothing without ``out``)."""
        if self.out is None:
            return
        state = {"modules": {name: module.state_dict() for name, module in self.modules.items()},
                 "optimizer": self.optimizer.state_dict(), "step": self.step, "schedule": self.schedule.to_dict()}
        temporary = self.out / (CHECKPOINT_FILE + ".tmp")
        torch.save(state, temporary)
        os.replace(temporary, self.out / CHECKPOINT_FILE)

    def run(self, step_fn: StepFunction, minutes: float | None = None,
            on_checkpoint: Callable[[float], None] | None = None, steps: int | None = None) -> float:
        """Train until the schedule's last step, for ``minutes`` or for ``steps`` more steps, whichever ends first
        (None: no such limit); ``step_fn(step)`` gives the loss and its logged parts (floats or tensors, read only
        when logged). Every ~60 s and at the end the checkpoint is saved and ``on_checkpoint(seconds)`` writes the
        trainer's own files. Returns the seconds trained."""
        model = self.modules["model"]
        started = time.time()
        last_log = last_save = started
        window: dict[str, float | torch.Tensor] = {}
        window_steps = 0
        end = self.schedule.last_step if steps is None else min(self.schedule.last_step, self.step + steps)
        while self.step < end and (minutes is None or time.time() - started < minutes * 60):
            for group in self.optimizer.param_groups:
                group["lr"] = self.schedule.lr(self.step)
            loss, parts = step_fn(self.step)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), self.clip)
            self.optimizer.step()
            if self.after_step is not None:
                self.after_step(self.step)
            self.step += 1
            window_steps += 1
            for key, value in {"loss": loss.detach(), **parts}.items():
                window[key] = window.get(key, 0.0) + value
            now = time.time()
            if now - last_log >= LOG_EVERY_S:
                self._log_window(window, window_steps, now - started, window_steps / (now - last_log))
                last_log, window, window_steps = now, {}, 0
            if now - last_save >= CHECKPOINT_EVERY_S:
                self._checkpoint(now - started, on_checkpoint)
                last_save = now
        seconds = time.time() - started
        if window_steps:
            self._log_window(window, window_steps, seconds, None)
        self._checkpoint(seconds, on_checkpoint)
        return seconds

    def _log_window(self, window: dict, steps: int, seconds: float, rate: float | None) -> None:
        point = {"step": self.step, "seconds": round(seconds, 1),
                 **{key: round(float(value) / steps, 5) for key, value in window.items()}}
        self.curve.append(point)
        speed = "" if rate is None else f"  {rate:.2f} steps/s"
        self.log(f"step {self.step}{speed}  " + "  ".join(f"{k} {v:.4f}" for k, v in point.items()
                                                          if k not in ("step", "seconds"))
                 + f"  lr {self.optimizer.param_groups[0]['lr']:.2e}")

    def _checkpoint(self, seconds: float, on_checkpoint: Callable[[float], None] | None) -> None:
        self.save()
        if on_checkpoint is not None:
            on_checkpoint(seconds)
