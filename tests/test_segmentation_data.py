"""Generated scenes and queries: determinism, masks, query semantics, prompts and the held-out split."""

from __future__ import annotations

import numpy as np
import pytest

from backends.segmentation.data import (
    CATEGORIES,
    COLOURS,
    HELDOUT_SEED_START,
    NEGATIVE,
    NO_COLOUR,
    POSITIVE,
    WORDINGS,
    make_samples,
)
from backends.segmentation.outofstyle import SCENE_STYLES, out_of_style_samples

TRAIN_SEEDS = range(0, 240)


@pytest.fixture(scope="module")
def train_samples():
    return [s for seed in TRAIN_SEEDS for s in make_samples(seed, 2)]


def test_samples_are_deterministic_and_scene_shared():
    a, b = make_samples(123, 2), make_samples(123, 2)
    assert np.array_equal(a[0].image, b[0].image) and a[0].expression == b[0].expression
    assert np.array_equal(a[1].mask, b[1].mask)
    assert a[0].image is a[1].image  # two queries on one scene
    assert not np.array_equal(make_samples(124)[0].image, a[0].image)


def test_masks_are_unions_of_disjoint_item_masks(train_samples):
    for sample in train_samples[:100]:
        union = np.zeros_like(sample.mask)
        for item in sample.items:
            assert item.mask.any()
            assert not (union & item.mask).any()  # items never overlap
            union |= item.mask
        assert not (sample.mask & ~union).any()
        assert sample.image.shape == (128, 128, 3) and sample.image.dtype == np.uint8


def test_absent_queries_have_empty_masks_and_others_do_not(train_samples):
    absent = [s for s in train_samples if s.kind == "absent"]
    assert absent and all(s.count == 0 and not s.mask.any() for s in absent)
    present = [s for s in train_samples if s.kind != "absent"]
    assert all(s.count > 0 and s.mask.any() for s in present)


def test_every_query_kind_appears(train_samples):
    kinds = {s.kind for s in train_samples}
    assert kinds >= {"category", "colour_category", "colour", "size", "position", "relation", "ordinal", "plural",
                     "absent", "points", "box"}


def test_relation_targets_satisfy_their_relation():
    checked = 0
    for seed in range(300):
        sample = make_samples(seed, kinds=("relation",))[0]
        if sample.kind != "relation" or " left of the " not in sample.expression:
            continue
        anchor_name = sample.expression.rsplit(" the ", 1)[1]
        anchors = [it for it in sample.items if anchor_name in (n for n, _ in CATEGORIES[it.category].names)]
        target = next(it for it in sample.items if (it.mask & sample.mask).any())
        assert any(target.centre[0] < a.centre[0] for a in anchors)
        checked += 1
    assert checked >= 3


def test_colour_queries_name_the_target_colour(train_samples):
    for sample in (s for s in train_samples if s.kind == "colour_category"):
        target = next(it for it in sample.items if (it.mask & sample.mask).any())
        assert any(word in sample.expression for word in COLOURS[target.colour][1])


def test_prompt_clicks_fall_on_the_right_pixels(train_samples):
    for sample in (s for s in train_samples if s.kind in ("points", "box")):
        rows = sample.prompts[sample.prompts[:, 2] >= 0]
        assert len(rows) and sample.expression == ""
        for x, y, label in rows:
            px, py = int(x * 128), int(y * 128)
            if label == POSITIVE:
                assert sample.mask[py, px]
            elif label == NEGATIVE:
                assert not sample.mask[py, px]


def test_heldout_wordings_never_appear_in_training(train_samples):
    heldout_phrases = {"show me the", "where is", "beneath", "higher up than", "uppermost", "tiniest", "left edge",
                       "right edge"}
    heldout_phrases |= {name for cat in CATEGORIES for name, _ in cat.heldout_names}
    heldout_phrases |= {w for _, _, held in COLOURS.values() for w in held}
    for sample in train_samples:
        words = f" {sample.expression} "
        assert not any(f" {phrase} " in words or words.startswith(f" {phrase}") for phrase in heldout_phrases), (
            sample.expression)
    assert all(len(held) for _, held in WORDINGS.values())


def test_heldout_scenes_use_heldout_wordings_and_test_items():
    samples = [make_samples(HELDOUT_SEED_START + i, heldout_wording=True, kinds=("category",))[0]
               for i in range(30)]
    held_templates = {t.split("{")[0] for t in WORDINGS["category"][1]}
    assert all(any(s.expression.startswith(t) for t in held_templates) for s in samples if s.kind == "category")


def test_generator_draws_uncoloured_items_wide_sizes_and_plain_backgrounds():
    scenes = [make_samples(seed)[0] for seed in range(300)]
    items = [it for s in scenes for it in s.items]
    uncoloured = [it for it in items if it.colour == NO_COLOUR]
    assert 0.08 < len(uncoloured) / len(items) < 0.25
    for sample in scenes:
        for item in sample.items:
            if item.colour == NO_COLOUR:  # grey: the three channels agree (up to the translucent blend)
                pixels = sample.image[item.mask].astype(float)
                assert np.abs(pixels - pixels.mean(1, keepdims=True)).mean() < 40
    sides = [max(it.box[2] - it.box[0], it.box[3] - it.box[1]) for it in items]
    assert min(sides) <= 20 and max(sides) >= 58
    flat = [s for s in scenes if np.ptp(s.image[~np.logical_or.reduce([it.mask for it in s.items])], 0).max() < 90]
    brightness = [s.image[~np.logical_or.reduce([it.mask for it in s.items])].mean() for s in flat]
    assert min(brightness) < 50 and max(brightness) > 200  # plain backgrounds, dark and light


def test_colour_queries_never_name_uncoloured_items(train_samples):
    for sample in train_samples:
        if sample.kind in ("colour", "colour_category") and sample.count:
            assert all(it.colour != NO_COLOUR for it in sample.items if (it.mask & sample.mask).any())


@pytest.mark.parametrize("style", SCENE_STYLES)
def test_out_of_style_sets_are_deterministic_and_consistent(style):
    first, again = out_of_style_samples(40, style=style), out_of_style_samples(40, style=style)
    assert all(np.array_equal(a.image, b.image) and a.expression == b.expression for a, b in zip(first, again,
                                                                                               strict=True))
    for sample in first:
        union = np.logical_or.reduce([it.mask for it in sample.items])
        assert not (sample.mask & ~union).any() and sample.expression
        assert (sample.count == 0) == (not sample.mask.any())
