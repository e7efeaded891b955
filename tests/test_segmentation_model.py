"""The object-centric segmenter: objects, prompt evidence, candidate sets, fusion, training step and script."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from backends.core.text_encoder import MiniLMEncoder, TextCache
from backends.core.training import CHECKPOINT_FILE
from backends.segmentation.data import (
    BOX_BOTTOM_RIGHT,
    BOX_TOP_LEFT,
    MAX_PROMPTS,
    NEGATIVE,
    PAD,
    POSITIVE,
    make_samples,
)
from backends.segmentation.evaluate import summarise
from backends.segmentation.model import (
    MIN_OBJECT_AREA,
    WEIGHTS_NAME,
    Segmenter,
    SegmenterConfig,
    candidate_maps,
    candidate_sets,
    find_objects,
    load_checkpoint,
    prompt_evidence,
    save_weights,
)
from backends.segmentation.train import augment_scene, average_weights, cast_shadows, degrade, training_step
from backends.segmentation.train import main as train_main

SMALL = SegmenterConfig(widths=(8, 16, 16, 32), object_widths=(8, 16, 32), dim=32, heads=2, depth=1)


@pytest.fixture(scope="module")
def texts() -> TextCache:
    return TextCache(MiniLMEncoder())


def _no_prompts() -> torch.Tensor:
    return torch.tensor([[0.0, 0.0, PAD]] * MAX_PROMPTS)


def test_objects_are_components_near_ones_merge_and_specks_drop():
    fg = np.zeros((64, 64), bool)
    fg[5:15, 5:15] = True  # object A
    fg[5:15, 16:20] = True  # one pixel apart from A: the same object
    fg[30:50, 30:40] = True  # object B, the largest
    fg[60:62, 60:62] = True  # a speck
    masks = find_objects(fg, max_objects=8)
    assert masks.shape == (2, 64, 64)
    assert masks[0].sum() == 200 and masks[1].sum() == 140 and not (masks[0] & masks[1]).any()
    assert (masks.any(0) == (fg & ~np.pad(np.ones((2, 2), bool), ((60, 2), (60, 2))))).all()
    assert find_objects(fg, max_objects=1).shape[0] == 1 and MIN_OBJECT_AREA > 4
    assert find_objects(np.zeros((64, 64), bool), 8).shape == (0, 64, 64)


def test_prompt_evidence_counts_clicks_and_box_cover():
    masks = torch.zeros(2, 100, 100, dtype=torch.bool)
    masks[0, 10:20, 10:20] = True
    masks[1, 50:90, 50:90] = True
    prompts = _no_prompts()
    prompts[0] = torch.tensor([0.15, 0.15, POSITIVE])
    prompts[1] = torch.tensor([0.6, 0.6, NEGATIVE])
    prompts[-2] = torch.tensor([0.0, 0.0, BOX_TOP_LEFT])
    prompts[-1] = torch.tensor([0.2, 0.2, BOX_BOTTOM_RIGHT])
    evidence = prompt_evidence(masks, prompts)
    assert evidence[:, :4].tolist() == [[1, 0, 1, 1], [0, 1, 1, 1]]
    assert evidence[0, 4] == 1.0 and evidence[1, 4] == 0.0 and evidence[0, 5] == pytest.approx(100 / 400)
    assert prompt_evidence(masks, _no_prompts()).abs().sum() == 0


def test_candidate_sets_are_the_most_probable_object_sets():
    sets = candidate_sets(np.array([0.9, 0.2, 0.6]))
    assert [s.tolist() for s, _ in sets] == [[True, False, True], [True, False, False], [True, True, True]]
    scores = [score for _, score in sets]
    assert scores[0] == pytest.approx(0.9 * 0.8 * 0.6) and scores[0] > scores[1] > scores[2]
    assert candidate_sets(np.array([0.1]))[0][0].tolist() == [False]  # absent: the empty set wins
    assert len(candidate_sets(np.zeros(0))) == 3


def test_fusion_outputs_and_inspectable_word_heads(texts: TextCache):
    torch.manual_seed(0)
    model = Segmenter(SMALL).eval()
    sample = make_samples(3)[0]
    image = torch.from_numpy(sample.image).permute(2, 0, 1).float() / 255
    features = model.embed_objects(image, torch.from_numpy(np.stack([it.mask for it in sample.items])))
    count = len(sample.items)
    empty = model.embed_objects(image, torch.zeros(0, 128, 128, dtype=torch.bool))
    text = texts(["the red bag", "all the shirts"])
    out = model.decode([features, empty], text.tokens, text.mask, torch.stack([_no_prompts()] * 2), True)
    assert out.logits.shape == (2, count) and out.object_mask[1].sum() == 0 and (out.logits[1] == -30).all()
    words = out.attention["words_to_objects"][0]  # [B, heads, T, 1 + N]
    assert words.shape == (2, SMALL.heads, text.tokens.shape[1], 1 + count)
    assert torch.allclose(words.sum(-1), torch.ones_like(words.sum(-1)), atol=1e-5)
    assert words[1, :, :, 1:].abs().max() == 0  # no objects: every word looks at "nothing"
    single = model.decode([features], text.tokens[:1], text.mask[:1], _no_prompts()[None])
    assert torch.allclose(single.logits[0], out.logits[0], atol=1e-5)
    features.foreground = torch.rand(128, 128)
    maps, scores, sets = candidate_maps(features, out.logits[0])
    assert maps.shape == (3, 128, 128) and scores[0] >= max(scores[1:]) and len(sets) == 3


def test_training_steps_reduce_the_loss(texts: TextCache):
    torch.manual_seed(0)
    model = Segmenter(SMALL)
    scenes = [make_samples(seed, 4) for seed in range(3)]
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(15):
        loss, parts = training_step(model, texts, scenes, 0, generator, rng)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert {"referred", "foreground", "aux", "exact", "category_acc"} <= set(parts)
    assert losses[-1] < 0.7 * losses[0]


def test_weights_round_trip(tmp_path: Path, texts: TextCache):
    model = Segmenter(SMALL).eval()
    save_weights(model, tmp_path / WEIGHTS_NAME)
    (tmp_path / "segmentation.json").write_text(json.dumps({"config": SMALL.to_dict()}))
    loaded, _ = load_checkpoint(tmp_path / WEIGHTS_NAME)
    image = torch.from_numpy(make_samples(5)[0].image).permute(2, 0, 1).float() / 255
    text = texts(["the bag"])
    answers = [m.decode([m.eval().encode_image(image)], text.tokens, text.mask, _no_prompts()[None]).logits
               for m in (model, loaded)]
    assert torch.equal(*answers)


def test_metrics_summary():
    records = [
        {"kind": "plural", "count": 2, "inter": 50, "union": 100, "oracle_iou": 0.6, "empty": False,
         "pred_count": 2, "gt_mask_count": 2},
        {"kind": "category", "count": 1, "inter": 90, "union": 100, "oracle_iou": 0.9, "empty": False},
        {"kind": "absent", "count": 0, "inter": 0, "union": 10, "oracle_iou": 0.0, "empty": True},
    ]
    metrics = summarise(records)
    assert metrics["mIoU"] == 0.7 and metrics["oIoU"] == 0.7 and metrics["Pr@0.5"] == 0.5
    assert metrics["empty_mask_rate"] == 1.0 and metrics["counting_accuracy"] == 1.0


def test_training_script_runs_saves_reloads_and_resumes(tmp_path: Path):
    args = ["--device", "cpu", "--steps", "2", "--scenes", "2", "--queries-per-scene", "2", "--eval-samples", "8",
            "--scene-statistics", "40"]
    train_main([*args, "--out", str(tmp_path / "a"), "--seed", "1"])
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == [CHECKPOINT_FILE, "segmentation.json", WEIGHTS_NAME]
    saved = json.loads((tmp_path / "a" / "segmentation.json").read_text())
    assert saved["steps"] == 2 and "heldout_scenes" in saved["heldout"] and saved["queries_seen"] == 8
    assert SegmenterConfig.from_dict(saved["config"]) == SegmenterConfig()
    assert (tmp_path / "a" / WEIGHTS_NAME).stat().st_size < 15 * 2**20
    resumed = train_main([*args, "--out", str(tmp_path / "b"), "--resume", str(tmp_path / "a" / WEIGHTS_NAME),
                          "--augment", "--wise-ft", "0.5"])
    assert resumed["steps"] == 4 and len(resumed["runs"]) == 2 and resumed["queries_seen"] == 16
    assert resumed["runs"][-1]["augmentation"]["shadow_share"] > 0 and resumed["runs"][-1]["wise_ft"] == 0.5
    assert saved["runs"][-1]["augmentation"] is None and resumed["runs"][-1]["schedule"]["first_step"] == 2
    with pytest.raises(SystemExit, match="--resume"):
        train_main([*args, "--out", str(tmp_path / "c"), "--wise-ft", "0.5"])


def test_training_augmentation_darkens_only_the_background_and_keeps_the_queries():
    rng = np.random.default_rng(0)
    scene = make_samples(7, 3)
    image, items = scene[0].image, scene[0].items
    union = np.logical_or.reduce([item.mask for item in items])
    shadowed = cast_shadows(image, items, rng)
    assert (shadowed[union] == image[union]).all() and (shadowed <= image).all() and (shadowed != image).any()
    degraded = degrade(image, rng)
    assert degraded.shape == image.shape and degraded.dtype == np.uint8 and not np.array_equal(degraded, image)
    augmented = [augment_scene(scene, rng) for _ in range(30)]
    changed = [a for a in augmented if a is not scene]
    assert 0 < len(changed) < 30
    for variant in changed:
        assert all(sample.image is variant[0].image for sample in variant)
        assert [(s.expression, s.mask.tobytes()) for s in variant] == [(s.expression, s.mask.tobytes()) for s in scene]


def test_wise_ft_average_interpolates_every_weight():
    torch.manual_seed(0)
    start, trained = Segmenter(SMALL), Segmenter(SMALL)
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    average_weights(trained, start.state_dict(), 0.25)
    for name, value in trained.state_dict().items():
        expected = 0.25 * before[name] + 0.75 * start.state_dict()[name]
        assert torch.allclose(value, expected if value.is_floating_point() else before[name], atol=1e-6), name
