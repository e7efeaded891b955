"""Degradation synthesis, instruction templates, the image split and the training batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backends.restoration.data import BatchSampler
from backends.restoration.degrade import add_haze, add_noise, add_rain, degrade, depth_proxy
from backends.restoration.images import HELDOUT_NAMES, NEW_PHOTO_NAMES, load_images, training_names
from backends.restoration.prompts import TASKS, heldout_paraphrases, training_templates


@pytest.fixture(scope="module")
def clean() -> torch.Tensor:
    image = load_images(["chelsea"])["chelsea"][:128, :128]
    return torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0).float().div(255).repeat(2, 1, 1, 1)


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_noise_has_the_requested_sigma(clean: torch.Tensor):
    flat = torch.full((4, 3, 64, 64), 0.5)
    noisy = add_noise(flat, torch.tensor([15.0, 25.0, 50.0, 25.0]), _generator())
    measured = (noisy - flat).flatten(1).std(dim=1) * 255
    assert torch.allclose(measured, torch.tensor([15.0, 25.0, 50.0, 25.0]), rtol=0.05)
    assert noisy.min() >= 0 and noisy.max() <= 1


def test_haze_lifts_the_dark_channel_most_where_the_scene_is_far(clean: torch.Tensor):
    hazy = add_haze(clean, _generator())
    assert hazy.min() >= 0 and hazy.max() <= 1
    assert hazy.min(dim=1).values.mean() > clean.min(dim=1).values.mean() + 0.1
    depth = depth_proxy(2, 64, 64, _generator(), torch.device("cpu"))
    assert depth.min() >= 0.1 - 1e-6 and depth.max() <= 1 + 1e-6


def test_rain_adds_thin_bright_streaks(clean: torch.Tensor):
    rainy = add_rain(clean, _generator())
    difference = rainy - clean
    assert difference.min() >= -1e-6  # rain only adds light
    covered = (difference.amax(dim=1) > 0.05).float().mean()
    assert 0.01 < covered < 0.5


def test_degradations_are_deterministic_per_seed(clean: torch.Tensor):
    for task in TASKS:
        assert torch.equal(degrade(clean, task, _generator(3)), degrade(clean, task, _generator(3)))
    assert not torch.equal(degrade(clean, "rain", _generator(3)), degrade(clean, "rain", _generator(4)))
    assert torch.equal(degrade(clean, "none", _generator()), clean)
    with pytest.raises(ValueError):
        degrade(clean, "blur", _generator())


def test_templates_are_many_and_the_heldout_paraphrases_are_unseen():
    templates = training_templates()
    heldout = heldout_paraphrases()
    assert set(templates) == set(heldout) == set(TASKS)
    for task in ("noise", "haze", "rain"):
        assert len(templates[task]) >= 100
    assert len(templates["none"]) >= 20
    seen = {sentence.lower() for sentences in templates.values() for sentence in sentences}
    assert not any(sentence.lower() in seen for sentences in heldout.values() for sentence in sentences)


def test_whole_images_are_held_out():
    assert not set(HELDOUT_NAMES) & set(training_names())
    assert not set(NEW_PHOTO_NAMES) & set(training_names())
    assert len(training_names()) >= 30 and len(NEW_PHOTO_NAMES) >= 15


def test_batches_pair_each_sample_with_an_instruction_of_its_task():
    images = list(load_images(["chelsea", "camera"]).values())
    ids = {task: [10 * index, 10 * index + 1] for index, task in enumerate(TASKS)}
    batch = BatchSampler(images, ids, crop=32, device=torch.device("cpu"), seed=0).sample(16)
    assert batch.degraded.shape == batch.clean.shape == (16, 3, 32, 32)
    assert set((batch.prompt // 10).tolist()) <= set(range(len(TASKS)))
    assert torch.equal(batch.prompt // 10, batch.task)
    none = batch.task == TASKS.index("none")
    assert torch.equal(batch.degraded[none], batch.clean[none])
    again = BatchSampler(images, ids, crop=32, device=torch.device("cpu"), seed=0).sample(16)
    assert torch.equal(batch.degraded, again.degraded) and np.array_equal(batch.prompt, again.prompt)
