"""The restorer's head stack, per-call ``heads_off`` and the shipped head atlas, which must predict held-out
ablations (other crops and seeds of the held-out photos) — all offline on the CPU."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

from backends.core.heads import Head, select_tasks
from backends.core.images import to_pil
from backends.core.service import ServiceError
from backends.restoration.atlas import SHIPPED, Ablation, Probe, atlas_key, compute_head_effects, score_ablations
from backends.restoration.evaluate import degraded_case, to_tensor
from backends.restoration.images import HELDOUT_NAMES, heldout_images, load_images
from backends.restoration.prompts import SUGGESTED_PROMPTS
from backends.restoration.service import RestorationService
from backends.restoration.tiling import tile_layout

torch.set_num_threads(1)
NOISE = SUGGESTED_PROMPTS["noise"]
#: crops of the held-out photos away from the probe's centre crops, degraded with other seeds
HELD_OUT = Probe(where=(0.1, 0.9), seed=1000)
ATLAS_FIELDS = {"model", "stack", "layers", "heads", "heads_per_layer", "tasks", "metric", "effects", "specificity",
                "top", "seconds"}


@pytest.fixture(scope="module")
def service(empty_cache) -> RestorationService:
    """A CPU service whose atlas cache is a fresh folder: the atlas can only come from the shipped file."""
    return RestorationService(device="cpu")


@pytest.fixture(scope="module")
def atlas(service: RestorationService) -> dict:
    return service.call("restoration_head_effects", "", "")


@pytest.fixture(scope="module")
def clean() -> Image.Image:
    return Image.fromarray(heldout_images(64)["coffee"])


@pytest.fixture(scope="module")
def noisy(clean: Image.Image) -> Image.Image:
    return to_pil(degraded_case(np.asarray(clean), "noise", 25.0, seed=0))


def test_the_stack_is_the_mdta_of_every_block(service: RestorationService):
    stack = service.model("").stack
    assert (stack.layers, stack.heads) == (13, 8)
    assert stack.heads_per_layer == (1, 2, 2, 4, 4, 8, 8, 4, 4, 2, 2, 1, 1)
    assert stack.layer_names[0] == "encoder 1 · block 0" and stack.layer_names[5] == "latent · block 0"
    assert stack.layer_names[7] == "decoder 3 · block 0" and stack.layer_names[-1] == "refinement · block 0"
    assert len(stack.all_heads()) == 43


@pytest.mark.parametrize(("heads_off", "message"), [
    ("13.0", "layers 0–12"), ("0.1", "layer 0 of the TextPromptIR MDTA channel attention has heads 0–0"),
    ("11.1", "heads 0–0"), ("5.8", "heads 0–7"), ("head", "not a head"),
])
def test_bad_head_lists_are_refused_before_any_model_work(service: RestorationService, noisy: Image.Image,
                                                          heads_off: str, message: str):
    # a region in words would need the segmentation panel: the head list is checked first
    with pytest.raises(ServiceError, match=message):
        service.call("restore", noisy, NOISE, "", None, "the bag", None, heads_off)
    with pytest.raises(ServiceError, match=message):
        service.call("restore_compare", noisy, NOISE, "", None, "", None, heads_off)


def test_no_heads_off_is_the_default_call_and_the_list_is_echoed(service: RestorationService, noisy: Image.Image):
    default, summary = service.call("restore", noisy, NOISE)
    for spec in ("", "none", " "):
        image, echoed = service.call("restore", noisy, NOISE, "", None, "", None, spec)
        assert np.array_equal(np.asarray(image), np.asarray(default)) and echoed["heads_off"] == "none"
    assert summary["heads_off"] == "none"
    _, _, _, compared = service.call("restore_compare", noisy, NOISE, "", None, "", None, "L3")
    assert compared["heads_off"] == "3.0,3.1,3.2,3.3"


def test_switching_off_the_top_noise_head_changes_and_worsens_the_result(
    service: RestorationService, atlas: dict, noisy: Image.Image, clean: Image.Image
):
    _, default = service.call("restore", noisy, NOISE, "", clean)
    _, ablated = service.call("restore", noisy, NOISE, "", clean, "", None, atlas["top"]["noise"][0])
    assert ablated["heads_off"] == atlas["top"]["noise"][0]
    assert ablated["psnr"] < default["psnr"] - 1


def test_heads_off_reaches_every_tile(service: RestorationService):
    restorer = service.model("")
    image = to_tensor(degraded_case(heldout_images(96)["astronaut"], "noise", 25.0, seed=0))
    whole = restorer.restore(image, NOISE, tile=48, overlap=16)
    ablated = restorer.restore(image, NOISE, tile=48, overlap=16, heads_off=[Head(0, 0)])
    change = (ablated - whole).abs().mean(dim=1)[0]
    size, starts = tile_layout(96, 48, 16)
    assert len(starts) == 3
    for top in starts:  # the centre of each of the nine tiles changed
        for left in starts:
            middle = slice(top + size // 2 - 4, top + size // 2 + 4), slice(left + size // 2 - 4, left + size // 2 + 4)
            assert change[middle].mean() > 1e-3


def test_concurrent_calls_with_different_heads_each_get_their_sequential_result(
    service: RestorationService, noisy: Image.Image
):
    specs = ["", "0.0", "5.3", "L9"]

    def restore(spec: str) -> np.ndarray:
        return np.asarray(service.call("restore", noisy, NOISE, "", None, "", None, spec)[0])

    sequential = [restore(spec) for spec in specs]
    with ThreadPoolExecutor(len(specs)) as pool:
        concurrent = list(pool.map(restore, specs))
    assert len({result.tobytes() for result in sequential}) == len(specs)
    for alone, together in zip(sequential, concurrent, strict=True):
        assert np.array_equal(alone, together)


def test_the_shipped_atlas_is_used_and_subsets_tasks(service: RestorationService, atlas: dict):
    restorer = service.model("")
    assert (SHIPPED / f"{atlas_key(restorer, Probe())}.json").exists()  # else: python -m backends.restoration.atlas
    assert atlas["cached"] and atlas["tasks"] == ["noise", "haze", "rain"]
    assert set(atlas) >= ATLAS_FIELDS and len(atlas["prompt_injection"]["rain"]) == 13
    again = service.call("restoration_head_effects", "", "rain, noise")
    assert again["tasks"] == ["rain", "noise"] and set(again["prompt_injection"]) == {"rain", "noise"}
    assert again["effects"]["rain"] == atlas["effects"]["rain"]
    with pytest.raises(ServiceError, match="not available for textprompt-ir; choose from noise, haze, rain"):
        service.call("restoration_head_effects", "", "blur")


def test_an_atlas_on_a_small_probe_has_the_atlas_shape(service: RestorationService):
    restorer = service.model("")
    small = compute_head_effects(restorer, Probe(names=HELDOUT_NAMES[:1], size=32))
    result = select_tasks(small, small["tasks"])
    assert set(result) >= ATLAS_FIELDS and result["model"] == "textprompt-ir"
    assert result["heads_per_layer"] == list(restorer.stack.heads_per_layer) and result["seconds"] > 0
    for task in ("noise", "haze", "rain"):
        grid = result["effects"][task]
        assert len(grid) == 13 and all(len(row) == 8 for row in grid)
        assert [sum(value is not None for value in row) for row in grid] == result["heads_per_layer"]
        assert len(result["top"][task]) == 5 and len(small["prompt_injection"][task]) == 13
    assert np.isfinite([value for row in result["specificity"] for value in row if value is not None]).all()


def _least_effective(grid: list[list[float | None]]) -> str:
    cells = [(abs(value), layer, head) for layer, row in enumerate(grid) for head, value in enumerate(row)
             if value is not None]
    _, layer, head = min(cells)
    return f"{layer}.{head}"


@pytest.fixture(scope="module")
def held_out(service: RestorationService, atlas: dict) -> dict[str, dict[str, float]]:
    """Per task: the PSNR change on the held-out crops with each task's top and least-effective head off."""
    restorer = service.model("")
    names = sorted({name for task in atlas["tasks"]
                    for name in (atlas["top"][task][0], _least_effective(atlas["effects"][task]))})
    scores = score_ablations(restorer, HELD_OUT, [Ablation(), *(Ablation(tuple(restorer.stack.parse(name)))
                                                                for name in names)])
    return {task: {name: float(scores[task][1 + index] - scores[task][0]) for index, name in enumerate(names)}
            for task in atlas["tasks"]}


def test_the_held_out_crops_are_disjoint_from_the_probe():
    for image in load_images(HELDOUT_NAMES).values():
        (top, left), (other_top, other_left) = Probe().corner(*image.shape[:2]), HELD_OUT.corner(*image.shape[:2])
        assert abs(top - other_top) >= HELD_OUT.size or abs(left - other_left) >= HELD_OUT.size


@pytest.mark.parametrize("task", ["rain", "noise"])
def test_the_top_head_of_a_task_hurts_it_more_than_its_least_effective_head_on_held_out_crops(
    atlas: dict, held_out: dict, task: str
):
    change = held_out[task]
    assert change[atlas["top"][task][0]] < change[_least_effective(atlas["effects"][task])] - 1.0
