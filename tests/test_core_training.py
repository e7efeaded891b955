"""The shared training core: the step-indexed schedule, and a checkpoint that resumes a run exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from backends.core.training import CHECKPOINT_FILE, Schedule, Trainer, resume_point


def test_schedule_warms_up_then_decays_to_its_floor():
    schedule = Schedule(1e-3, first_step=100, last_step=1100, warmup_steps=10, floor=0.05)
    assert schedule.lr(100) == pytest.approx(1e-4)
    assert schedule.lr(109) == pytest.approx(1e-3, rel=1e-3)
    assert schedule.lr(600) == pytest.approx(1e-3 * (0.05 + 0.95 * 0.5))
    assert schedule.lr(1100) == pytest.approx(5e-5) and schedule.lr(5000) == pytest.approx(5e-5)
    constant = Schedule(2e-3, 0, 50, warmup_steps=1, floor=1.0)
    assert {constant.lr(step) for step in (0, 25, 50)} == {2e-3}


def _new_schedule(first: int) -> Schedule:
    return Schedule(1e-2, first, first + 12, warmup_steps=3)


def _trainer(out: Path | None, schedule: Schedule) -> Trainer:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=schedule.peak)
    return Trainer({"model": model}, optimizer, schedule, out, log=lambda line: None)


def _run(trainer: Trainer, **limits) -> list[int]:
    """Run ``trainer`` on a regression whose batches are drawn by the step; the steps it took."""
    taken = []

    def loss(step: int) -> tuple[torch.Tensor, dict]:
        taken.append(step)
        data = torch.randn(16, 4, generator=torch.Generator().manual_seed(step))
        return (trainer.modules["model"](data).squeeze(1) - data.sum(1)).pow(2).mean(), {}

    trainer.run(loss, **limits)
    return taken


def test_a_resumed_run_ends_where_one_uninterrupted_run_does(tmp_path: Path):
    whole = _trainer(None, _new_schedule(0))
    assert _run(whole) == list(range(12)) and len(whole.curve) == 1 and whole.curve[0]["step"] == 12

    first = _trainer(tmp_path, _new_schedule(0))
    assert _run(first, steps=5) == list(range(5)) and (tmp_path / CHECKPOINT_FILE).exists()
    point = resume_point(tmp_path, 0, _new_schedule)
    assert point.checkpoint == tmp_path / CHECKPOINT_FILE and point.schedule == _new_schedule(0)
    second = _trainer(tmp_path, point.schedule)
    second.restore(point.checkpoint)
    assert second.step == 5 and _run(second) == list(range(5, 12))
    for resumed, uninterrupted in zip(second.modules["model"].parameters(), whole.modules["model"].parameters(),
                                      strict=True):
        torch.testing.assert_close(resumed, uninterrupted, rtol=0, atol=1e-7)

    finished = resume_point(tmp_path / CHECKPOINT_FILE, 0, _new_schedule)
    assert finished.checkpoint == tmp_path / CHECKPOINT_FILE and finished.schedule == _new_schedule(12)


def test_weights_without_a_checkpoint_start_a_new_schedule_at_their_step(tmp_path: Path):
    save_file({"w": torch.zeros(1)}, str(tmp_path / "weights.safetensors"))
    point = resume_point(tmp_path / "weights.safetensors", 9609, _new_schedule)
    assert point.checkpoint is None and point.schedule == _new_schedule(9609)
    assert resume_point(None, 0, _new_schedule).schedule == _new_schedule(0)


def test_a_spent_time_budget_takes_no_step_but_still_checkpoints(tmp_path: Path):
    trainer = _trainer(tmp_path, _new_schedule(0))
    assert _run(trainer, minutes=0.0) == [] and trainer.step == 0 and (tmp_path / CHECKPOINT_FILE).exists()
