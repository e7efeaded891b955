"""HeadLab's small Fashion-MNIST classifier network (trained by the Guidance panel, reused by Segmentation)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

NUM_CLASSES = 10
IMAGE_SIZE = 28
CLASSIFIER_CONFIG: dict = {"channels": [32, 64, 128], "feature_dim": 128, "dropout": 0.3}


class FashionClassifier(nn.Module):
    """A small CNN on [-1, 1] images [B, 1, 28, 28]: ``features`` for Fréchet distances, logits from ``forward``."""

    def __init__(self, channels: list[int], feature_dim: int, dropout: float):
        super().__init__()
        layers: list[nn.Module] = []
        previous = 1
        for width in channels:
            layers += [
                nn.Conv2d(previous, width, 3, padding=1), nn.GELU(),
                nn.Conv2d(width, width, 3, padding=1), nn.GELU(),
                nn.MaxPool2d(2),
            ]
            previous = width
        side = IMAGE_SIZE // 2 ** len(channels)
        self.convs = nn.Sequential(*layers)
        self.embed = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(previous * side * side, feature_dim))
        self.head = nn.Sequential(nn.GELU(), nn.Dropout(dropout), nn.Linear(feature_dim, NUM_CLASSES))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features [B, feature_dim]."""
        return self.embed(self.convs(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits [B, 10]."""
        return self.head(self.features(images))

    @torch.no_grad()
    def classify(self, images: torch.Tensor, batch_size: int = 1000) -> tuple[np.ndarray, np.ndarray]:
        """(softmax probabilities [N, 10], features [N, F]) of [-1, 1] images [N, 1, 28, 28], as float64 arrays."""
        probabilities, features = [], []
        for start in range(0, len(images), batch_size):
            feature = self.features(images[start:start + batch_size].float())
            features.append(feature.double().cpu())
            probabilities.append(self.head(feature).softmax(-1).double().cpu())
        return torch.cat(probabilities).numpy(), torch.cat(features).numpy()
