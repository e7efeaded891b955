"""The Guidance training script end to end on a tiny budget: files, reload, resume."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from backends.core.fashion_mnist import load_fashion_mnist
from backends.guidance.adapters import EmbeddedDiT
from backends.guidance.train import main


@pytest.fixture
def small_fashion_mnist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The first 600 training and 300 test images of Fashion-MNIST, as idx files in a folder the loader is sent to."""
    folder = tmp_path / "fmnist"
    folder.mkdir()
    for split, prefix, count in (("train", "train", 600), ("test", "t10k", 300)):
        images, labels = load_fashion_mnist(split)
        header = np.array([2051, count, 28, 28], ">i4").tobytes()
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(header + images[:count].tobytes()))
        label_header = np.array([2049, count], ">i4").tobytes()
        label_bytes = labels[:count].astype(np.uint8).tobytes()
        (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(label_header + label_bytes))
    monkeypatch.setenv("HEADLAB_FMNIST_DIR", str(folder))
    return folder


def test_train_writes_reloadable_files_and_resumes(tmp_path: Path, small_fashion_mnist: Path):
    common = ["--device", "cpu", "--minutes", "2", "--threads", "1", "--eval-per-class", "1", "--steps", "3",
              "--eval-steps", "4"]
    main([*common, "--out", str(tmp_path / "run"), "--seed", "1", "--classifier-seconds", "1"])
    files = sorted(path.name for path in (tmp_path / "run").iterdir())
    assert files == ["checkpoint.pt", "classifier.safetensors", "dit.safetensors", "guidance.json"]
    report = json.loads((tmp_path / "run" / "guidance.json").read_text())
    assert report["status"] == "done" and report["training"]["steps"] == 3
    assert set(report["evaluation"]["by_cfg_scale"]) == {"1.0", "3.0"}
    assert 0 <= report["classifier"]["test_accuracy"] <= 1
    assert (tmp_path / "run" / "dit.safetensors").stat().st_size < 15 * 2**20
    model = EmbeddedDiT.load(tmp_path / "run", "cpu", torch.float32)
    assert (model.layers, model.heads) == (6, 6)

    main([*common, "--out", str(tmp_path / "more"), "--resume", str(tmp_path / "run")])
    resumed = json.loads((tmp_path / "more" / "guidance.json").read_text())
    assert resumed["training"]["steps"] == 6 and resumed["training"]["resumed_from"] == str(tmp_path / "run")
    assert resumed["classifier"]["test_accuracy"] == report["classifier"]["test_accuracy"]
