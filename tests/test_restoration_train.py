"""The training script end to end on CPU (tiny model, seconds of training), its files, --resume, bfloat16
autocast and the sentence-embedding cache that lets it train without MiniLM."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from backends.core.training import CHECKPOINT_FILE
from backends.restoration import sentences, train
from backends.restoration.checkpoint import REPORT_FILE, WEIGHTS_FILE, load_models

TINY_ARGS = ["--device", "cpu", "--minutes", "0.05", "--seed", "0", "--batch", "2", "--crop", "32", "--width", "8",
             "--blocks", "1,1,1,1", "--eval-side", "32", "--no-baselines", "--threads", "1"]


def test_training_writes_reloadable_files_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    threads = torch.get_num_threads()  # the script sets its own thread count; give the rest of the session back
    try:
        _train_and_resume(tmp_path, monkeypatch)
    finally:
        torch.set_num_threads(threads)


def _no_minilm() -> None:
    raise AssertionError("MiniLM was loaded although the sentence cache matches")


def _train_and_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    cache = tmp_path / "sentences.safetensors"
    train.main([*TINY_ARGS, "--out", str(first), "--sentences", str(cache), "--cpu-bf16"])
    assert cache.exists()
    assert sorted(p.name for p in first.iterdir()) == sorted([WEIGHTS_FILE, CHECKPOINT_FILE, REPORT_FILE])
    report = json.loads((first / REPORT_FILE).read_text())
    steps = report["train"]["steps"]
    assert steps > 0 and report["train"]["loss_curve"]
    assert report["config"]["width"] == 8
    heldout = report["heldout"]
    assert {"noise25", "haze", "rain", "none_identity"} <= set(heldout["cases"])
    assert heldout["prompt_understanding"]["count"] == 32
    assert load_models(first / WEIGHTS_FILE).metadata["step"] == str(steps)

    monkeypatch.setattr(sentences, "MiniLMEncoder", _no_minilm)  # the second run must read the cache
    train.main([*TINY_ARGS, "--out", str(second), "--resume", str(first / WEIGHTS_FILE), "--compile",
                "--sentences", str(cache)])
    resumed = json.loads((second / REPORT_FILE).read_text())["train"]
    assert resumed["first_step"] == steps and resumed["steps"] > steps
    assert report["train"]["bf16"] and not resumed["bf16"]
    assert resumed["resumed_from"].endswith(WEIGHTS_FILE)
    assert [run["steps"] for run in resumed["previous_runs"]] == [steps]
