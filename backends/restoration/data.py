"""Training batches generated on the fly on the training device.

The clean training images live on the device as uint8 tensors; each batch takes random crops at random scales,
flips/rotates them, tints grayscale sources, and degrades every sample with a random task. Instructions are
indices into a table of precomputed sentence embeddings, so no text encoder runs during training.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the usual torch alias

from backends.restoration.degrade import degrade
from backends.restoration.prompts import TASKS

# sampling probabilities of the tasks in a training batch, in TASKS order (noise, haze, rain, none)
TASK_WEIGHTS = (0.32, 0.27, 0.31, 0.10)
GRAY_WEIGHT = 0.5  # relative sampling weight of (tinted) grayscale sources against colour photos


@dataclass
class Batch:
    """Degraded inputs, clean targets, the task index and the instruction index of every sample."""

    degraded: torch.Tensor
    clean: torch.Tensor
    task: torch.Tensor
    prompt: torch.Tensor


class BatchSampler:
    """Random restoration batches from a set of clean images.

    Discrete choices (image, crop box, flips, task, instruction) come from a seeded NumPy generator so that the
    host never waits for the device; pixel randomness (tints, degradations) comes from a seeded device generator.
    """

    def __init__(self, images: list[np.ndarray], prompt_ids_by_task: dict[str, list[int]], crop: int,
                 device: torch.device, seed: int, task_weights: tuple[float, ...] = TASK_WEIGHTS):
        self.device = device
        self.task_weights = np.asarray(task_weights, dtype=float) / sum(task_weights)
        self.crop = crop
        self.images = [torch.from_numpy(image).permute(2, 0, 1).contiguous().to(device) for image in images]
        self.is_gray = [bool((image == image[..., :1]).all()) for image in images]
        areas = np.array([float(image.shape[0] * image.shape[1]) for image in images])
        weights = np.sqrt(areas) * np.where(self.is_gray, GRAY_WEIGHT, 1.0)
        self.image_weights = weights / weights.sum()
        self.prompt_ids = {task: np.asarray(ids) for task, ids in prompt_ids_by_task.items()}
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)

    def _crop(self) -> torch.Tensor:
        """One clean crop (3×crop×crop float in [0, 1]) at a random scale, flip, rotation and tint."""
        index = int(self.rng.choice(len(self.images), p=self.image_weights))
        image = self.images[index]
        height, width = image.shape[-2:]
        size = min(int(self.crop / self.rng.uniform(0.5, 1.0)), height, width)
        top, left = int(self.rng.integers(height - size + 1)), int(self.rng.integers(width - size + 1))
        patch = image[:, top:top + size, left:left + size].float().div(255).unsqueeze(0)
        if size != self.crop:
            patch = F.interpolate(patch, size=(self.crop, self.crop), mode="bilinear", antialias=size > self.crop,
                                  align_corners=False)
        flip_x, flip_y, transpose = self.rng.random(3) < 0.5
        if flip_x:
            patch = patch.flip(-1)
        if flip_y:
            patch = patch.flip(-2)
        if transpose:
            patch = patch.transpose(-1, -2)
        if self.is_gray[index]:
            patch = patch * (1 - 0.4 * torch.rand(1, 3, 1, 1, generator=self.generator, device=self.device))
        return patch[0].clamp(0, 1)

    def sample(self, batch_size: int) -> Batch:
        """A batch with tasks drawn by the task weights and, for each sample, a random instruction of its task."""
        clean = torch.stack([self._crop() for _ in range(batch_size)])
        task = self.rng.choice(len(TASKS), size=batch_size, p=self.task_weights)
        prompt = np.empty(batch_size, dtype=np.int64)
        degraded = clean.clone()
        for task_index, task_name in enumerate(TASKS):
            chosen = np.flatnonzero(task == task_index)
            if chosen.size == 0:
                continue
            prompt[chosen] = self.rng.choice(self.prompt_ids[task_name], size=chosen.size)
            chosen_on_device = torch.from_numpy(chosen).to(self.device)
            degraded[chosen_on_device] = degrade(clean[chosen_on_device], task_name, self.generator)
        return Batch(degraded=degraded, clean=clean, task=torch.from_numpy(task).to(self.device),
                     prompt=torch.from_numpy(prompt).to(self.device))
