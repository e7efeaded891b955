"""The segmenter network, its loss, and the training script end to end (tiny budgets, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from backends.segmentation.data import MAX_PROMPTS, make_samples
from backends.segmentation.evaluate import batch_tensors, summarise
from backends.segmentation.model import WEIGHTS_NAME, Segmenter, SegmenterConfig, load_checkpoint, save_weights
from backends.segmentation.train import main as train_main
from backends.segmentation.train import segmentation_loss

SMALL = SegmenterConfig(dim=32, heads=2, depth=1, encoder_depth=1, widths=(8, 16, 32))


def _inputs(batch: int = 2, tokens: int = 5) -> tuple:
    torch.manual_seed(0)
    prompts = torch.full((batch, MAX_PROMPTS, 3), -1.0)
    prompts[0, 0] = torch.tensor([0.3, 0.4, 1.0])
    return torch.rand(batch, 3, 128, 128), torch.randn(batch, tokens, 384), torch.ones(batch, tokens, dtype=bool), \
        prompts


def test_outputs_and_inspectable_attention_heads():
    model = Segmenter(SMALL).eval()
    image, text, mask, prompts = _inputs()
    out = model(image, text, mask, prompts, return_attention=True)
    assert out.masks.shape == (2, 3, 128, 128) and out.scores.shape == (2, 3)
    assert ((out.scores >= 0) & (out.scores <= 1)).all()
    n_tokens = 1 + SMALL.num_masks + MAX_PROMPTS + 5
    to_image = out.attention["tokens_to_image"]
    assert len(to_image) == SMALL.depth and to_image[0].shape == (2, SMALL.heads, n_tokens, 256)
    assert torch.allclose(to_image[0].sum(-1), torch.ones(2, SMALL.heads, n_tokens), atol=1e-4)
    back = out.attention["image_to_tokens"][0]
    padded = 1 + SMALL.num_masks + 1  # prompt slots after the first click are padding
    assert back.shape == (2, SMALL.heads, 256, n_tokens) and back[1, :, :, padded - 1].abs().max() == 0
    plain = model(image, text, mask, prompts)
    assert torch.allclose(plain.masks, out.masks, atol=1e-4)


def test_cached_image_features_give_the_same_answer():
    model = Segmenter(SMALL).eval()
    image, text, mask, prompts = _inputs(batch=1)
    features = model.encode_image(image)
    two_queries = model.decode(features, torch.cat([text, text.flip(1)]), mask.repeat(2, 1), prompts.repeat(2, 1, 1))
    assert torch.allclose(two_queries.masks[:1], model(image, text, mask, prompts).masks, atol=1e-4)


def test_loss_prefers_the_best_candidate_and_empty_targets():
    model = Segmenter(SMALL)
    samples = [s for seed in range(4) for s in make_samples(seed)]
    batch = batch_tensors(samples, "cpu")
    text = torch.randn(len(samples), 4, 384)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        out = model(batch["images"], text, torch.ones(len(samples), 4, dtype=bool), batch["prompts"])
        loss, parts = segmentation_loss(out, batch["masks"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        assert set(parts) == {"mask", "score", "iou"}
    assert losses[-1] < 0.7 * losses[0]


def test_weights_round_trip(tmp_path: Path):
    model = Segmenter(SMALL).eval()
    save_weights(model, tmp_path / WEIGHTS_NAME)
    (tmp_path / "segmentation.json").write_text(json.dumps({"config": SMALL.to_dict()}))
    loaded, _ = load_checkpoint(tmp_path / WEIGHTS_NAME)
    image, text, mask, prompts = _inputs()
    assert torch.equal(loaded.eval()(image, text, mask, prompts).masks, model(image, text, mask, prompts).masks)


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
    args = ["--device", "cpu", "--steps", "2", "--batch-size", "4", "--eval-samples", "8", "--threads", "1"]
    train_main([*args, "--out", str(tmp_path / "a"), "--seed", "1"])
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == ["segmentation.json", WEIGHTS_NAME]
    saved = json.loads((tmp_path / "a" / "segmentation.json").read_text())
    assert saved["steps"] == 2 and "heldout_scenes" in saved["heldout"]
    assert SegmenterConfig.from_dict(saved["config"]) == SegmenterConfig()
    assert (tmp_path / "a" / WEIGHTS_NAME).stat().st_size < 15 * 2**20
    resumed = train_main([*args, "--out", str(tmp_path / "b"), "--resume", str(tmp_path / "a" / WEIGHTS_NAME)])
    assert resumed["steps"] == 4 and len(resumed["runs"]) == 2
