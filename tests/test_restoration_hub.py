"""The InstructIR hub path, offline: randomly initialised weights of the same architecture in a local folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from backends.core.service import ServiceError
from backends.core.text_encoder import minilm_dir
from backends.restoration.hub import HEAD_FILE, IMAGE_CONFIG, IMAGE_FILE, InstructionHead, InstructIRNet
from backends.restoration.prompts import TASKS
from backends.restoration.service import RestorationService


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("instructir")
    torch.manual_seed(0)
    torch.save(InstructIRNet(**IMAGE_CONFIG).state_dict(), folder / IMAGE_FILE)
    torch.save(InstructionHead().state_dict(), folder / HEAD_FILE)
    (folder / "text_encoder").symlink_to(minilm_dir(), target_is_directory=True)  # stands in for bge-micro-v2
    return folder


def test_instructir_loads_strictly_and_restores(checkpoint: Path):
    service = RestorationService(device="cpu")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8))
    restored, summary = service.call("restore", image, "remove the rain please", str(checkpoint), None)
    assert restored.size == image.size
    assert summary["model"] == str(checkpoint) and summary["degradation"] in TASKS
    assert abs(sum(summary["probabilities"].values()) - 1) < 1e-3


def test_a_checkpoint_with_other_names_is_refused(tmp_path: Path, checkpoint: Path):
    torch.save({"unexpected.weight": torch.zeros(1)}, tmp_path / IMAGE_FILE)
    (tmp_path / HEAD_FILE).symlink_to(checkpoint / HEAD_FILE)
    with pytest.raises(ServiceError, match="could not load"):
        RestorationService(device="cpu").call("understand", None, "remove the rain", str(tmp_path))


def test_instructir_has_no_heads_to_switch_off(checkpoint: Path):
    service = RestorationService(device="cpu")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8))
    _, summary = service.call("restore", image, "remove the rain", str(checkpoint), None, "", None, "none")
    assert summary["heads_off"] == "none"
    for endpoint in ("restore", "restore_compare"):
        with pytest.raises(ServiceError, match="exposes no attention heads to switch off"):
            service.call(endpoint, image, "remove the rain", str(checkpoint), None, "", None, "0.0")
    with pytest.raises(ServiceError, match="exposes no attention heads to switch off or to map"):
        service.call("restoration_head_effects", str(checkpoint), "")
