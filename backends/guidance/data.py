"""Fashion-MNIST batches for training, kept on the training device and drawn with a seeded generator.

The whole training split is 47 MB as uint8, so it lives on the device and batches are gathered there: no
DataLoader workers are needed and data loading never limits the step rate.
"""

from __future__ import annotations

import torch

from backends.core.fashion_mnist import load_fashion_mnist


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 28, 28] → float [B, 1, 28, 28] in [-1, 1]."""
    return images.float().unsqueeze(1) / 127.5 - 1.0


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [B, 1, H, W] in [-1, 1] → uint8 [B, H, W] (clipped)."""
    return ((images.squeeze(1).float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)


def load_split(split: str, device: str | torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST ``split`` as (uint8 images [N, 28, 28], int64 labels [N]) on ``device``."""
    images, labels = load_fashion_mnist(split)
    return torch.from_numpy(images.copy()).to(device), torch.from_numpy(labels).to(device)


class DeviceBatches:
    """Endless random batches (images in [-1, 1], labels) drawn from device-resident data with a seeded generator."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int):
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self.generator = torch.Generator(device=images.device).manual_seed(seed)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch: float images [B, 1, 28, 28] and int64 labels [B]."""
        index = torch.randint(
            0, len(self.labels), (self.batch_size,), device=self.images.device, generator=self.generator
        )
        return to_model_range(self.images[index]), self.labels[index]
