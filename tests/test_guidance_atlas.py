"""The Guidance head atlas on the embedded Fashion-MNIST DiT: its contract, its cache, and that it predicts held-out
ablations (``heads_off``) — all offline on the CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backends.core.service import ServiceError
from backends.guidance.atlas import PROBE_STEPS, probe_for, score_heads_off
from backends.guidance.service import GuidanceService

torch.set_num_threads(1)
#: held-out seeds: the atlas probe uses seeds 0–19
HELD_OUT_SEED = 1000


@pytest.fixture(scope="module")
def service(empty_cache) -> GuidanceService:
    """A CPU service whose atlas cache lives in a fresh folder and that ignores the shipped atlas, so the atlas is
    computed here."""
    service = GuidanceService(device="cpu")
    service.effects_cache.shipped = None
    return service


@pytest.fixture(scope="module")
def atlas(service: GuidanceService) -> dict:
    """The full atlas (every objective)."""
    return service.call("guidance_head_effects", "", "")


def test_atlas_contract(atlas: dict):
    assert (atlas["model"], atlas["stack"], atlas["layers"], atlas["heads"]) == (
        "fashion-dit", "fashion-dit self-attention", 6, 6)
    assert atlas["tasks"] == ["confidence", "frechet", "sharpness", "contrast", "brightness"]
    assert set(atlas["metric"]) == set(atlas["effects"]) == set(atlas["top"]) == set(atlas["tasks"])
    for task in atlas["tasks"]:
        grid = np.array(atlas["effects"][task])
        assert grid.shape == (6, 6) and np.isfinite(grid).all() and np.abs(grid).max() > 0
        top = atlas["top"][task]
        assert len(top) == 5 and grid[tuple(map(int, top[0].split(".")))] == grid.min()
    specificity = np.array(atlas["specificity"])
    assert specificity.shape == (6, 6) and (specificity >= 0).all() and (specificity <= 1).all()
    assert atlas["probe"]["samples"] == 20 and atlas["seconds"] > 0 and not atlas["cached"]


def test_the_shipped_atlas_is_what_the_computation_gives(atlas: dict, tmp_path, monkeypatch):
    """The atlas that ships with the app (read by a service with an empty cache) matches the one computed here."""
    monkeypatch.setenv("HEADLAB_CACHE_DIR", str(tmp_path))
    shipped = GuidanceService(device="cpu").call("guidance_head_effects", "", "")
    assert shipped["cached"]
    for task in atlas["tasks"]:
        assert np.allclose(shipped["effects"][task], atlas["effects"][task], atol=2e-3), task


def test_atlas_is_cached_in_memory_and_on_disk_and_subsets_tasks(service: GuidanceService, atlas: dict):
    again = service.call("guidance_head_effects", "", "sharpness, confidence")
    assert again["cached"] and again["tasks"] == ["sharpness", "confidence"]
    assert again["effects"]["confidence"] == atlas["effects"]["confidence"]
    assert again["specificity"] != atlas["specificity"]  # specificity is over the tasks asked for
    from_disk = GuidanceService(device="cpu").call("guidance_head_effects", "", "confidence")
    assert from_disk["cached"] and from_disk["effects"]["confidence"] == atlas["effects"]["confidence"]


@pytest.mark.parametrize("tasks", ["nope", "confidence,nope", "Confidence", "psnr"])
def test_unknown_tasks_are_service_errors(service: GuidanceService, atlas: dict, tasks: str):
    with pytest.raises(ServiceError, match="not available for fashion-dit; choose from confidence"):
        service.call("guidance_head_effects", "", tasks)


def _least_effective(grid: list[list[float]]) -> str:
    values = np.abs(np.array(grid))
    layer, head = np.unravel_index(values.argmin(), values.shape)
    return f"{layer}.{head}"


def test_switching_off_the_top_confidence_head_hurts_more_than_the_least_effective_on_held_out_seeds(
    service: GuidanceService, atlas: dict
):
    """Through the public endpoint: ``heads_off`` on new seeds of every class, plain sampling as in the atlas."""
    top, least = atlas["top"]["confidence"][0], _least_effective(atlas["effects"]["confidence"])

    def confidence(heads_off: str) -> float:
        values = []
        for label in range(10):
            _, info = service.call("guidance_sample", "", str(label), 2, HELD_OUT_SEED + 2 * label, PROBE_STEPS,
                                   1.0, 0.0, "none", 1.0, heads_off)
            values += info["objective"]["values"]
        return float(np.mean(values))

    baseline = confidence("")
    assert baseline - confidence(top) > baseline - confidence(least)


@pytest.fixture(scope="module")
def held_out(service: GuidanceService, atlas: dict) -> dict[str, tuple[float, float, float]]:
    """Per objective: its score on held-out seeds with no head, its top head and its least-effective head off."""
    model = service.model("")
    names = sorted({name for task in atlas["tasks"] for name in (atlas["top"][task][0],
                                                                 _least_effective(atlas["effects"][task]))})
    sets = [[], *[model.stack.parse(name) for name in names]]
    scores = score_heads_off(model, sets, probe_for(model, seed_offset=HELD_OUT_SEED), atlas["tasks"])
    position = {name: 1 + index for index, name in enumerate(names)}
    return {task: (scores[task][0], scores[task][position[atlas["top"][task][0]]],
                   scores[task][position[_least_effective(atlas["effects"][task])]]) for task in atlas["tasks"]}


@pytest.mark.parametrize("task", ["confidence", "frechet", "sharpness", "contrast", "brightness"])
def test_top_head_of_each_objective_hurts_it_more_than_the_least_effective_on_held_out_seeds(
    held_out: dict, task: str
):
    baseline, top_off, least_off = held_out[task]
    assert baseline - top_off > baseline - least_off


def test_effect_grid_has_one_tile_per_head(service: GuidanceService):
    image, info = service.call("guidance_effect_grid", "", "Sneaker", 0, 4)
    grid = info["grid"]
    assert (grid["rows"], grid["cols"]) == (7, 6)
    assert image.size == (6 * grid["tile"] + 7 * grid["pad"], 7 * grid["tile"] + 8 * grid["pad"])
    assert np.array(info["objective"]["per_head"]).shape == (6, 6)
    with pytest.raises(ServiceError, match="steps must be"):
        service.call("guidance_effect_grid", "", "Sneaker", 0, 0)
    with pytest.raises(ServiceError, match="class"):
        service.call("guidance_effect_grid", "", "  ", 0, 4)
