"""The Guidance service on the embedded Fashion-MNIST DiT (assets/guidance), offline on the CPU."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from backends.core.service import ServiceError
from backends.guidance.service import GuidanceService

torch.set_num_threads(1)
FAST = {"n": 4, "seed": 3, "steps": 6}


@pytest.fixture(scope="module")
def service() -> GuidanceService:
    """One CPU service for the module (the model loads once)."""
    return GuidanceService(device="cpu")


def sample(service: GuidanceService, **changes) -> tuple[np.ndarray, dict]:
    """Call guidance_sample through the service's endpoint dispatcher, with FAST settings unless changed."""
    settings = {"model": "", "label": "Sneaker", **FAST, "cfg_scale": 2.0, "pag_scale": 3.0, "heads": "2.1,3.0",
                "u": 1.0, "heads_off": "", **changes}
    image, info = service.call("guidance_sample", *settings.values())
    return np.asarray(image), info


def test_layout_lists_the_grid_and_classes(service: GuidanceService):
    layout = service.call("guidance_layout", "")
    assert (layout["layers"], layout["heads"], layout["conditioning"]) == (6, 6, "class")
    assert layout["classes"][7] == "Sneaker"
    assert list(layout["objectives"]) == ["confidence", "frechet", "sharpness", "contrast", "brightness"]
    assert layout["stack"] == "fashion-dit self-attention"
    assert layout["default_heads"] == "0.2,2.2,3.4"  # the shipped HeadHunter head set (assets/guidance)


def test_sample_grid_layout_objectives_and_determinism(service: GuidanceService):
    pixels, info = sample(service)
    grid = info["grid"]
    assert (grid["rows"], grid["cols"]) == (2, 2)
    side = grid["rows"] * grid["tile"] + (grid["rows"] + 1) * grid["pad"]
    assert pixels.shape == (side, side, 3)
    assert info["seeds"] == [3, 4, 5, 6] and info["heads"] == "2.1,3.0"
    assert len(info["objective"]["values"]) == 4 and info["objective"]["name"] == "confidence"
    again, _ = sample(service)
    assert np.array_equal(pixels, again)  # same seed → same image


def test_pag_scale_zero_and_u_zero_reproduce_the_baseline(service: GuidanceService):
    baseline, _ = sample(service, heads="none", pag_scale=0.0)
    no_scale, _ = sample(service, pag_scale=0.0)
    no_strength, _ = sample(service, u=0.0)
    guided, _ = sample(service, heads="all")
    assert np.array_equal(no_scale, baseline)
    assert np.array_equal(no_strength, baseline)
    assert not np.array_equal(guided, baseline)


@pytest.mark.parametrize(
    ("changes", "message"),
    [({"heads": "9.9"}, "layer 9 does not exist; the fashion-dit self-attention has layers 0–5"),
     ({"heads": "2.6"}, "heads 0–5"), ({"heads": "2-1"}, "not a head"),
     ({"heads_off": "6.0"}, "layers 0–5"), ({"heads_off": "L7"}, "layer 7"), ({"heads_off": "x"}, "not a head"),
     ({"label": "Spaceship"}, "unknown class"), ({"n": 0}, "n must be"),
     ({"u": 2.0}, "u must be"), ({"label": " "}, "class"), ({"steps": 1000}, "steps")],
)
def test_bad_input_is_a_clear_service_error(service: GuidanceService, changes: dict, message: str):
    with pytest.raises(ServiceError, match=message):
        sample(service, **changes)


def test_unknown_model_is_a_service_error(service: GuidanceService):
    with pytest.raises(ServiceError, match="cannot load model"):
        service.call("guidance_layout", "nobody/no-such-model")


def test_headhunter_greedy_rounds(service: GuidanceService):
    result = service.call("guidance_search", "", "Trouser", 1, 2, 2, 1.0, 3.0, 1.0, 2, "confidence")
    assert not result["cancelled"]
    assert len(result["heads"].split(",")) == 4
    first, second = result["rounds"]
    assert len(first["scores"]) == 36 and len(second["scores"]) == 34
    assert first["added"] == ",".join(sorted(first["scores"], key=lambda h: -first["scores"][h])[:2])
    assert isinstance(result["baseline_score"], float)


def test_search_can_be_cancelled_and_reports_progress(service: GuidanceService):
    results: list[dict] = []
    worker = threading.Thread(
        target=lambda: results.append(
            service.call("guidance_search", "", "Bag", 2, 3, 1, 1.0, 3.0, 1.0, 8, "sharpness")
        )
    )
    worker.start()
    deadline = time.monotonic() + 60
    while service.call("guidance_progress")["done"] < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    progress = service.call("guidance_progress")
    assert progress["running"] == "guidance_search" and progress["total"] > progress["done"] > 0
    assert service.call("guidance_cancel") == {"cancelled": "guidance_search"}
    worker.join(timeout=60)
    assert results and results[0]["cancelled"]
    assert service.call("guidance_progress")["running"] is None
    assert service.call("guidance_cancel") == {"cancelled": None}


def test_heads_off_changes_only_that_call(service: GuidanceService):
    plain, plain_info = sample(service, pag_scale=0.0, heads="none")
    off, info = sample(service, pag_scale=0.0, heads="none", heads_off="L3H2,4.*")
    assert info["heads_off"] == "3.2,4.0,4.1,4.2,4.3,4.4,4.5" and plain_info["heads_off"] == "none"
    assert not np.array_equal(off, plain)
    again, _ = sample(service, pag_scale=0.0, heads="none")
    assert np.array_equal(again, plain)  # nothing stayed switched off on the shared model


def test_concurrent_samplings_each_get_their_sequential_result(service: GuidanceService):
    """Different heads, u and heads_off in 4 threads at once: each result equals the same call run alone."""
    variants = [
        {"heads": "2.1,3.0", "u": 1.0},
        {"heads": "L1", "u": 0.5},
        {"heads": "none", "pag_scale": 0.0, "heads_off": "3.2"},
        {"heads": "0.2,2.2,3.4", "u": 0.75, "heads_off": "5.*", "label": "Bag"},
    ]
    sequential = [sample(service, **changes) for changes in variants]
    barrier = threading.Barrier(len(variants))
    concurrent: dict[int, tuple[np.ndarray, dict]] = {}
    most_jobs = []

    def run(index: int) -> None:
        barrier.wait()
        concurrent[index] = sample(service, **variants[index])

    def watch() -> None:
        while len(concurrent) < len(variants):
            most_jobs.append(len(service.call("guidance_progress")["jobs"]))
            time.sleep(0.01)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(variants))]
    threads.append(threading.Thread(target=watch))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert max(most_jobs) >= 2  # the calls really overlapped (no panel-wide lock)
    for index, (pixels, info) in enumerate(sequential):
        assert np.array_equal(concurrent[index][0], pixels), variants[index]
        assert concurrent[index][1]["objective"] == info["objective"]
