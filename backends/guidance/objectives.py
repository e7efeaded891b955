"""What HeadHunter maximises and what the panel shows per sample.

``confidence`` (the embedded classifier's probability of the conditioning class) and ``frechet`` (minus the Fréchet
distance of the samples' classifier features to the Fashion-MNIST test set) need the embedded model's classifier;
``sharpness`` (mean absolute Laplacian of the grey image) needs no weights and works for any model.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional

from backends.guidance.adapters import EmbeddedDiT, GuidedModel
from backends.guidance.evaluate import frechet_distance

OBJECTIVES = {
    "confidence": "classifier confidence in the target class (higher is better)",
    "frechet": "minus the Fréchet distance of classifier features to the test set (higher is better)",
    "sharpness": "mean |Laplacian| of the grey image, weight-free (higher is sharper)",
}
_LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)


def objectives_for(model: GuidedModel) -> list[str]:
    """The objectives ``model`` supports, the panel's default first."""
    return list(OBJECTIVES) if isinstance(model, EmbeddedDiT) else ["sharpness"]


def sharpness(images: torch.Tensor) -> np.ndarray:
    """Per image [B, C, H, W] in [-1, 1]: mean absolute Laplacian of the grey image in [0, 1]."""
    grey = (images.float().mean(dim=1, keepdim=True) + 1.0) / 2.0
    return functional.conv2d(grey, _LAPLACIAN.to(grey.device)).abs().mean(dim=(1, 2, 3)).cpu().double().numpy()


def per_sample(model: GuidedModel, objective: str, images: torch.Tensor, condition: str) -> np.ndarray:
    """Each sample's score under a per-sample objective (``frechet`` is a set score: see :func:`group_scores`)."""
    if objective == "sharpness":
        return sharpness(images)
    if objective == "confidence" and isinstance(model, EmbeddedDiT):
        probabilities, _ = model.classifier.classify(images)
        return probabilities[:, model.class_index(condition)]
    raise ValueError(f"objective {objective!r} is not available for {model.name}; use one of {objectives_for(model)}")


def group_scores(model: GuidedModel, objective: str, images: torch.Tensor, condition: str, groups: int) -> np.ndarray:
    """One score per consecutive group of equal size (a head set's samples): mean, or −FD for ``frechet``."""
    if objective != "frechet":
        return per_sample(model, objective, images, condition).reshape(groups, -1).mean(axis=1)
    if not isinstance(model, EmbeddedDiT):
        raise ValueError(f"objective 'frechet' is only available for the embedded model, not {model.name}")
    _, features = model.classifier.classify(images)
    reference = model.test_features()
    return np.array([-frechet_distance(group, reference) for group in np.split(features, groups)])
