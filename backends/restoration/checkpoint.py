"""Saving and loading the restoration weights (safetensors) and the optimiser state used to resume training.

``restorer.safetensors`` holds the restorer and the prompt classifier (fp32) with the restorer's config in its
metadata, so it is self-contained; ``restorer_optim.safetensors`` holds AdamW's moments in bfloat16 and the step.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, safe_open, save_file

from backends.restoration.model import PromptClassifier, RestorationModels, RestorerConfig, TextPromptIR

WEIGHTS_FILE = "restorer.safetensors"
OPTIMIZER_FILE = "restorer_optim.safetensors"
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


def save_optimizer(optimizer: torch.optim.Optimizer, names: dict[torch.nn.Parameter, str], path: str | Path,
                   step: int) -> None:
    """AdamW moments per parameter name, in bfloat16, plus the step count."""
    tensors = {}
    for parameter, state in optimizer.state.items():
        name = names[parameter]
        tensors[f"exp_avg.{name}"] = state["exp_avg"].to(torch.bfloat16)
        tensors[f"exp_avg_sq.{name}"] = state["exp_avg_sq"].to(torch.bfloat16)
    _atomic_save(tensors, Path(path), {"step": str(step)})


def load_optimizer(optimizer: torch.optim.Optimizer, parameters: dict[str, torch.nn.Parameter],
                   path: str | Path) -> int:
    """Restore AdamW moments written by ``save_optimizer``; returns the saved step."""
    tensors = load_file(str(path))
    step = int(read_metadata(path)["step"])
    for name, parameter in parameters.items():
        if f"exp_avg.{name}" not in tensors:
            continue
        optimizer.state[parameter] = {
            "step": torch.tensor(float(step)),
            "exp_avg": tensors[f"exp_avg.{name}"].to(parameter.device, torch.float32),
            "exp_avg_sq": tensors[f"exp_avg_sq.{name}"].to(parameter.device, torch.float32),
        }
    return step
