"""The Referring-segmentation panel's fusion heads: the head stack, per-call ``heads_off`` (zero ablation), and the
shipped head atlas — its contract, and that it predicts ablations on held-out scenes. Offline on the CPU."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

from backends.core.heads import select_tasks
from backends.core.service import ServiceError
from backends.segmentation.atlas import (
    ATLAS_KINDS,
    PROBE_SEED_START,
    SHIPPED,
    atlas_key,
    compute_head_effects,
    prepare_probe,
    probe_samples,
    score_heads_off,
)
from backends.segmentation.classical import CLASSICAL_ID
from backends.segmentation.data import HELDOUT_SEED_START, Sample
from backends.segmentation.embedded import EMBEDDED_ID, EmbeddedSegmenter
from backends.segmentation.hub import HUB_ID
from backends.segmentation.model import heads_off_mask
from backends.segmentation.service import SegmentationService

torch.set_num_threads(1)
#: held-out scenes: the atlas probe starts at PROBE_SEED_START and uses fewer than 1000 scenes
HELD_OUT_SEED_START = HELDOUT_SEED_START + 60_000_000
HELD_OUT_PER_KIND = 32
VOLATILE = ("seconds", "feature_cache_hit", "answer_cache_hit")


@pytest.fixture(scope="module")
def service(empty_cache) -> SegmentationService:
    """A CPU service with an empty atlas cache folder, so the atlas comes from the shipped file."""
    return SegmentationService(device="cpu")


@pytest.fixture(scope="module")
def segmenter(service: SegmentationService) -> EmbeddedSegmenter:
    return service.model(EMBEDDED_ID)


@pytest.fixture(scope="module")
def atlas(service: SegmentationService) -> dict:
    return service.call("segmentation_head_effects", "", "")


@pytest.fixture(scope="module")
def held_out() -> list[Sample]:
    return probe_samples(HELD_OUT_PER_KIND, HELD_OUT_SEED_START)


def _least_effective(grid: list[list[float]]) -> str:
    values = np.abs(np.array(grid))
    layer, head = np.unravel_index(values.argmin(), values.shape)
    return f"{layer}.{head}"


def _strongest_kind(atlas: dict) -> str:
    """The kind whose top head has the largest effect."""
    return min(atlas["tasks"], key=lambda kind: np.min(atlas["effects"][kind]))


def _summary(result: dict) -> dict:
    return {key: value for key, value in result.items() if key not in VOLATILE}


def test_the_stack_is_every_fusion_attention_module_by_its_heads(segmenter: EmbeddedSegmenter, atlas: dict):
    stack = segmenter.stack
    assert (stack.layers, stack.heads) == (9, 4) and len(stack.all_heads()) == 36
    assert stack.layer_names[:4] == ("block 0 · objects→words", "block 0 · objects→objects",
                                     "block 0 · words→objects", "block 1 · objects→words")
    assert (atlas["stack"], atlas["layers"], atlas["heads"]) == (stack.name, 9, 4)
    assert atlas["layer_names"] == list(stack.layer_names)


@pytest.mark.parametrize(("heads_off", "message"), [
    ("9.0", "layer 9 does not exist; the fashion-refseg fusion attention has layers 0–8"),
    ("2.4", "head 2.4 does not exist; each layer of the fashion-refseg fusion attention has heads 0–3"),
    ("two", "'two' is not a head"),
])
def test_bad_head_lists_name_the_ranges_before_any_model_work(service: SegmentationService, heads_off: str,
                                                              message: str):
    for name, args in (("segment", ("", "", "", "")), ("segment_view", ("", "", "", "", 0.5, -1)),
                       ("segment_attention", ("", "", "", -1, -1, 1))):
        with pytest.raises(ServiceError, match=message):  # no image: the head list is checked first
            service.call(name, None, *args, heads_off)


def test_hub_models_have_no_head_stack(service: SegmentationService):
    image = Image.new("RGB", (32, 32))
    with pytest.raises(ServiceError, match="heads_off needs the embedded segmenter.*has no head stack"):
        service.call("segment", image, "the bag", "", "", HUB_ID, "0.1")
    with pytest.raises(ServiceError, match="the head atlas needs the embedded segmenter"):
        service.call("segmentation_head_effects", HUB_ID, "")
    with pytest.raises(ServiceError, match="not available for fashion-refseg; choose from category"):
        service.call("segmentation_head_effects", "", "colour,absent")


def test_switching_off_a_top_head_changes_the_answer_and_no_head_is_the_default(
    service: SegmentationService, atlas: dict, held_out: list[Sample]
):
    kind = _strongest_kind(atlas)
    top = atlas["top"][kind][0]
    changed = 0
    for sample in [sample for sample in held_out if sample.kind == kind][:8]:
        image = Image.fromarray(sample.image)
        mask, default = service.call("segment", image, sample.expression, "", "", "")
        same_mask, same = service.call("segment", image, sample.expression, "", "", "", "")
        off_mask, off = service.call("segment", image, sample.expression, "", "", "", top)
        assert np.array_equal(np.asarray(mask), np.asarray(same_mask)) and _summary(same) == _summary(default)
        assert (default["heads_off"], default["heads_off_applied"]) == ("none", False)
        assert (off["heads_off"], off["heads_off_applied"], off["answered_by"]) == (top, True, EMBEDDED_ID)
        changed += not np.array_equal(np.asarray(mask), np.asarray(off_mask))
    assert changed > 0
    layer = top.split(".")[0]
    _, attention = service.call("segment_attention", image, sample.expression, "", "", -1, -1, 1, f"L{layer}")
    assert attention["heads_off"] == ",".join(f"{layer}.{head}" for head in range(4))


def test_heads_off_has_no_effect_when_grabcut_answers(service: SegmentationService):
    noise = Image.fromarray((np.random.default_rng(0).random((96, 128, 3)) * 255).astype(np.uint8))
    _, result = service.call("segment", noise, "", "[[40, 40, 1]]", "", "", "all")
    assert result["answered_by"] == CLASSICAL_ID and result["heads_off"] != "none"
    assert not result["heads_off_applied"] and any("heads_off had no effect" in note for note in result["notes"])


def test_rows_of_one_batch_switch_their_own_heads_off(segmenter: EmbeddedSegmenter, held_out: list[Sample]):
    probe = prepare_probe(segmenter, held_out[:4])
    model, stack = segmenter.model, segmenter.stack
    inputs = (probe.features, probe.text.tokens, probe.text.mask, probe.prompts)
    with torch.no_grad():
        plain = model.decode(*inputs).logits
        zeros = model.decode(*inputs, heads_off=heads_off_mask([[]] * 4, stack)).logits
        mixed = model.decode(*inputs, heads_off=heads_off_mask([[], stack.parse("0.1"), [], stack.parse("all")],
                                                               stack)).logits
        alone = model.decode(*[x[1:2] for x in inputs], heads_off=heads_off_mask([stack.parse("0.1")], stack)).logits
    assert torch.equal(plain, zeros)
    assert torch.allclose(mixed[[0, 2]], plain[[0, 2]], atol=1e-5) and not torch.allclose(mixed[3], plain[3])
    assert torch.allclose(mixed[1, :alone.shape[1]], alone[0], atol=1e-5)


def test_concurrent_calls_with_different_heads_off_each_get_their_sequential_answer(
    service: SegmentationService, atlas: dict, held_out: list[Sample]
):
    head_lists = ["", atlas["top"][_strongest_kind(atlas)][0], "0.*", "all"]
    calls = [(Image.fromarray(sample.image), sample.expression, heads) for sample in held_out[8:10]
             for heads in head_lists]
    fresh = SegmentationService(device="cpu")  # no cached answers: every call runs the model
    start = threading.Barrier(4)

    def segment(call: tuple) -> tuple[np.ndarray, dict]:
        image, expression, heads = call
        start.wait()
        mask, result = fresh.call("segment", image, expression, "", "", "", heads)
        return np.asarray(mask), result

    with ThreadPoolExecutor(4) as pool:
        concurrent = [list(pool.map(segment, calls[i:i + 4])) for i in range(0, len(calls), 4)]
    for (image, expression, heads), (mask, result) in zip(calls, sum(concurrent, []), strict=True):
        assert not result["answer_cache_hit"]
        sequential_mask, sequential = service.call("segment", image, expression, "", "", "", heads)
        assert np.array_equal(mask, np.asarray(sequential_mask)) and _summary(result) == _summary(sequential)


def test_the_shipped_atlas_is_read_and_subsets_tasks(service: SegmentationService, segmenter: EmbeddedSegmenter,
                                                     atlas: dict):
    shipped = json.loads((SHIPPED / f"{atlas_key(segmenter)}.json").read_text())
    assert atlas["cached"] and atlas["effects"] == shipped["effects"] and atlas["tasks"] == list(ATLAS_KINDS)
    assert atlas["probe"]["seed_start"] == PROBE_SEED_START and atlas["probe"]["queries"] == 288
    part = service.call("segmentation_head_effects", "", "size, colour")
    assert part["tasks"] == ["size", "colour"] and part["effects"]["size"] == atlas["effects"]["size"]
    for kind in atlas["tasks"]:
        grid = np.array(atlas["effects"][kind])
        assert grid.shape == (9, 4) and grid[tuple(map(int, atlas["top"][kind][0].split(".")))] == grid.min()


def test_recomputing_the_atlas_gives_the_documented_shape(segmenter: EmbeddedSegmenter):
    atlas = select_tasks(compute_head_effects(segmenter, per_kind=2), ATLAS_KINDS)
    assert {"model", "stack", "layers", "heads", "layer_names", "tasks", "metric", "baseline", "effects",
            "relative", "specificity", "top", "probe", "version", "seconds"} <= set(atlas)
    assert atlas["model"] == EMBEDDED_ID and atlas["tasks"] == list(ATLAS_KINDS) and atlas["seconds"] > 0
    assert atlas["metric"] == dict.fromkeys(ATLAS_KINDS, "mIoU") and atlas["probe"]["queries"] == 18
    for kind in ATLAS_KINDS:
        grid = np.array(atlas["effects"][kind])
        assert grid.shape == (9, 4) and np.isfinite(grid).all() and 0 <= atlas["baseline"][kind] <= 1
        assert (grid[8] == 0).all()  # the last words→objects heads feed nothing the answer reads
        top = [tuple(map(int, head.split("."))) for head in atlas["top"][kind]]
        assert len(top) <= 5 and all(grid[layer, head] < 0 for layer, head in top)  # only heads it needs
        assert len(top) == min(5, int((grid < 0).sum()))
    specificity = np.array(atlas["specificity"])
    assert specificity.shape == (9, 4) and (specificity >= 0).all() and (specificity <= 1).all()


@pytest.fixture(scope="module")
def held_out_drops(segmenter: EmbeddedSegmenter, atlas: dict, held_out: list[Sample]) -> dict[str, dict[str, float]]:
    """Per kind: its mIoU drop on the held-out scenes with each kind's top head, and its least-effective head, off."""
    names = sorted({atlas["top"][kind][0] for kind in atlas["tasks"]}
                   | {_least_effective(atlas["effects"][kind]) for kind in atlas["tasks"]})
    scores = score_heads_off(segmenter, [[], *[segmenter.stack.parse(name) for name in names]],
                             prepare_probe(segmenter, held_out))
    return {kind: {name: float(scores[kind][0] - scores[kind][1 + index]) for index, name in enumerate(names)}
            for kind in atlas["tasks"]}


def test_the_strongest_kinds_top_head_hurts_it_more_than_its_least_effective_on_held_out_scenes(
    atlas: dict, held_out_drops: dict
):
    kind = _strongest_kind(atlas)
    drops = held_out_drops[kind]
    assert drops[atlas["top"][kind][0]] > drops[_least_effective(atlas["effects"][kind])]


def test_top_heads_of_two_kinds_doubly_dissociate_on_held_out_scenes(atlas: dict, held_out_drops: dict):
    """The strongest kind A and the strongest kind B with another top head: A's top head hurts A more than B, and
    B's hurts B more than A."""
    first = _strongest_kind(atlas)
    top_a = atlas["top"][first][0]
    second = min((kind for kind in atlas["tasks"] if atlas["top"][kind][0] != top_a),
                 key=lambda kind: np.min(atlas["effects"][kind]))
    top_b = atlas["top"][second][0]
    assert held_out_drops[first][top_a] > held_out_drops[second][top_a]
    assert held_out_drops[second][top_b] > held_out_drops[first][top_b]
