"""Held-out evaluation of the embedded models: classifier accuracy and Fréchet distance in classifier features.

Reused by the training script and the benchmarks.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager, nullcontext

import numpy as np
import torch
from scipy import linalg

from backends.guidance.adapters import EmbeddedDiT
from backends.guidance.data import to_model_range
from backends.guidance.model import NUM_CLASSES
from backends.guidance.sampler import guided_sample


def autocast_for(device: str | torch.device) -> AbstractContextManager:
    """bf16 autocast on CUDA, nothing elsewhere."""
    if torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets [N, F]."""
    mean_a, mean_b = features_a.mean(0), features_b.mean(0)
    cov_a, cov_b = np.cov(features_a, rowvar=False), np.cov(features_b, rowvar=False)
    root = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(root).all():
        offset = np.eye(len(cov_a)) * 1e-6
        root = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    return float(((mean_a - mean_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root.real))


@torch.no_grad()
def evaluate_dit(
    model: EmbeddedDiT,
    test_features: np.ndarray,
    reference_images: torch.Tensor,
    per_class: int,
    cfg_scales: tuple[float, ...] = (1.0, 3.0),
    steps: int = 25,
    seed: int = 0,
    pag_scale: float = 0.0,
    strengths: torch.Tensor | None = None,
) -> dict:
    """Sample ``per_class`` images of every class at each CFG scale (Euler, ``steps``) and score them.

    ``pag_scale`` and per-head ``strengths`` [1, layers, heads] add SoftPAG guidance to every sample.

    Per scale: accuracy of the classifier against the conditioning class, its mean confidence in that class and the
    Fréchet distance (classifier features) to the test set, given by its ``test_features``. ``reference_images``
    (real uint8 training images, as many as the samples) give the Fréchet distance of real data at the same sample
    size, the floor to compare against.
    """
    classifier = model.classifier
    labels = np.repeat(np.arange(NUM_CLASSES), per_class)
    _, reference_features = classifier.classify(to_model_range(reference_images[: len(labels)]))
    results: dict = {
        "samples_per_scale": len(labels),
        "steps": steps,
        "fd_real_reference": round(frechet_distance(reference_features, test_features), 3),
        "by_cfg_scale": {},
    }
    for scale in cfg_scales:
        start = time.perf_counter()
        samples = []
        for label in range(NUM_CLASSES):
            seeds = [seed * 1_000_003 + label * per_class + index for index in range(per_class)]
            with autocast_for(model.device):
                samples.append(guided_sample(model, str(label), seeds, steps, scale, pag_scale, strengths))
        probabilities, features = classifier.classify(torch.cat(samples))
        results["by_cfg_scale"][str(scale)] = {
            "accuracy": round(float((probabilities.argmax(1) == labels).mean()), 4),
            "confidence": round(float(probabilities[np.arange(len(labels)), labels].mean()), 4),
            "fd_test": round(frechet_distance(features, test_features), 3),
            "seconds": round(time.perf_counter() - start, 2),
        }
    return results
