"""Saving and loading the restoration weights (safetensors).

``restorer.safetensors`` holds the restorer and the prompt classifier (fp32) with the restorer's config and the
training step in its metadata, so it is self-contained (the optimizer state for resuming lives in the training
core's ``checkpoint.pt``, see :mod:`backends.core.training`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, safe_open, save_file

from backends.restoration.model import PromptClassifier, RestorationModels, RestorerConfig, TextPromptIR

WEIGHTS_FILE = "restorer.safetensors"
REPORT_FILE = "restoration.json"


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    temporary = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(temporary), metadata=metadata)
    os.replace(temporary, path)


def save_models(models: RestorationModels, path: str | Path, step: int) -> None:
    """Write both networks (fp32) with the restorer config and the training step in the metadata."""
    metadata = {"config": json.dumps(models.restorer.config.to_dict()), "step": str(step)}
    _atomic_save({k: v.float() for k, v in models.state_dict().items()}, Path(path), metadata)


def read_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata of a safetensors file."""
    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata() or {}


def load_models(path: str | Path, device: torch.device | str = "cpu") -> RestorationModels:
    """Rebuild the restorer and classifier from a weights file written by ``save_models``."""
    metadata = read_metadata(path)
    config = RestorerConfig.from_dict(json.loads(metadata["config"]))
    models = RestorationModels(TextPromptIR(config), PromptClassifier(config.text_dim), metadata=metadata)
    models.load_state_dict(load_file(str(path)))
    models.restorer.to(device).eval()
    models.classifier.to(device).eval()
    return models
