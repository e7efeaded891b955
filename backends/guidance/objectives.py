"""What HeadHunter maximises and what the panel shows per sample.

``confidence`` (the embedded classifier's probability of the conditioning class) and ``frechet`` (minus the Fréchet
distance of the samples' classifier features to the Fashion-MNIST test set) need the embedded model's classifier;
``sharpness`` (mean absolute Laplacian of the grey image), ``contrast`` and ``brightness`` (standard deviation and
mean of the grey level) need no weights and work for any model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.nn import functional

from backends.core.service import ServiceError
from backends.guidance.adapters import EmbeddedDiT, GuidedModel
from backends.guidance.evaluate import frechet_distance

OBJECTIVES = {
    "confidence": "classifier confidence in the target class (higher is better)",
    "frechet": "minus the Fréchet distance of classifier features to the test set (higher is better)",
    "sharpness": "mean |Laplacian| of the grey image, weight-free (higher is sharper)",
    "contrast": "standard deviation of the grey level in [0, 1], weight-free (higher is more contrast)",
    "brightness": "mean grey level in [0, 1], weight-free (higher is brighter)",
}
#: what each objective is measured in
UNITS = {
    "confidence": "probability of the class",
    "frechet": "−Fréchet distance (classifier features)",
    "sharpness": "mean |Laplacian| (grey in [0, 1])",
    "contrast": "std of grey (0–1)",
    "brightness": "mean grey (0–1)",
}
WEIGHT_FREE = ("sharpness", "contrast", "brightness")
_LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)


def objectives_for(model: GuidedModel) -> list[str]:
    """The objectives ``model`` supports, the panel's default first."""
    return list(OBJECTIVES) if isinstance(model, EmbeddedDiT) else list(WEIGHT_FREE)


def _grey(images: torch.Tensor) -> torch.Tensor:
    """[B, 1, H, W] grey level in [0, 1] of images [B, C, H, W] in [-1, 1]."""
    return (images.float().mean(dim=1, keepdim=True) + 1.0) / 2.0


def sharpness(images: torch.Tensor) -> np.ndarray:
    """Per image [B, C, H, W] in [-1, 1]: mean absolute Laplacian of the grey image in [0, 1]."""
    grey = _grey(images)
    return functional.conv2d(grey, _LAPLACIAN.to(grey.device)).abs().mean(dim=(1, 2, 3)).cpu().double().numpy()


def per_sample(
    model: GuidedModel, objective: str, images: torch.Tensor, condition: str | Sequence[str]
) -> np.ndarray:
    """Each sample's score under a per-sample objective (``frechet`` is a set score: see :func:`group_scores`).

    ``condition`` is the class of every sample, or one class per sample.
    """
    if objective == "sharpness":
        return sharpness(images)
    if objective == "contrast":
        return _grey(images).flatten(1).std(dim=1).cpu().double().numpy()
    if objective == "brightness":
        return _grey(images).flatten(1).mean(dim=1).cpu().double().numpy()
    if objective == "confidence" and isinstance(model, EmbeddedDiT):
        probabilities, _ = model.classifier.classify(images)
        names = [condition] * len(images) if isinstance(condition, str) else list(condition)
        return probabilities[np.arange(len(images)), [model.class_index(name) for name in names]]
    raise ServiceError(f"objective {objective!r} is not available for {model.name}; use one of {objectives_for(model)}")


def group_scores(
    model: GuidedModel, objective: str, images: torch.Tensor, condition: str | Sequence[str], groups: int
) -> np.ndarray:
    """One score per consecutive group of equal size (a head set's samples): mean, or −FD for ``frechet``."""
    if objective != "frechet":
        return per_sample(model, objective, images, condition).reshape(groups, -1).mean(axis=1)
    if not isinstance(model, EmbeddedDiT):
        raise ServiceError(f"objective 'frechet' is only available for the embedded model, not {model.name}")
    _, features = model.classifier.classify(images)
    reference = model.test_features()
    return np.array([-frechet_distance(group, reference) for group in np.split(features, groups)])
