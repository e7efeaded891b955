"""Held-out evaluation of the referring segmenter (used by train.py and the benchmarks).

Each query runs end to end (foreground, objects, fusion). Held-out scenes come from seeds ≥ HELDOUT_SEED_START
and Fashion-MNIST's test split, never seen in training.
Sets: "heldout_scenes" (text queries with training wordings), "heldout_wordings" (held-out templates and
synonyms), "prompts" (clicks and boxes only), and "out_of_style", "out_of_style_engraved" and
"out_of_style_collage" (text queries on scenes drawn by the hand-coded rules of ``outofstyle`` in its cartoon,
engraved and collage styles, which the generator never produces).
Metrics: mIoU, oIoU, Pr@0.5…0.9 and oracle mIoU (best of the three
candidates) over queries whose referent is present; empty-mask rate over queries about absent objects; counting
accuracy over plural queries (count of detections from tasks.detect vs the number of referred items).
"""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np
import torch

from backends.core.text_encoder import TextCache
from backends.segmentation.data import HELDOUT_SEED_START, TEXT_QUERIES, Sample, make_samples
from backends.segmentation.model import Segmenter, candidate_maps
from backends.segmentation.outofstyle import SCENE_STYLES, out_of_style_samples
from backends.segmentation.tasks import detect, iou, min_area

PRECISION_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
TEXT_KINDS = tuple(TEXT_QUERIES)
EVAL_SETS = {  # name → (share of the samples, held-out wording, query kinds, seed offset)
    "heldout_scenes": (0.6, False, TEXT_KINDS, 0),
    "heldout_wordings": (0.25, True, TEXT_KINDS, 10_000_000),
    "prompts": (0.15, False, ("points", "box"), 20_000_000),
}
OUT_OF_STYLE_SHARE = 0.3  # of the total, for each out-of-style set
OUT_OF_STYLE_SETS = {"cartoon": "out_of_style", "engraved": "out_of_style_engraved",
                     "collage": "out_of_style_collage"}  # scene style → set name


def heldout_samples(count: int, heldout_wording: bool = False, kinds: tuple[str, ...] | None = None,
                    offset: int = 0) -> list[Sample]:
    """``count`` held-out samples (one query per scene), deterministic."""
    return [make_samples(HELDOUT_SEED_START + offset + i, 1, heldout_wording=heldout_wording, kinds=kinds)[0]
            for i in range(count)]


def _overlap(pred: np.ndarray, target: np.ndarray) -> tuple[int, int]:
    """Intersection and union pixel counts."""
    return int((pred & target).sum()), int((pred | target).sum())


def summarise(records: list[dict]) -> dict:
    """Aggregate per-query records into the reported metrics."""
    present = [r for r in records if r["count"] > 0]
    absent = [r for r in records if r["count"] == 0]
    plural = [r for r in present if r["kind"] == "plural"]
    out: dict = {"queries": len(records)}
    if present:
        ious = np.array([r["inter"] / max(r["union"], 1) for r in present])
        out["mIoU"] = float(ious.mean())
        out["oIoU"] = float(sum(r["inter"] for r in present) / max(1, sum(r["union"] for r in present)))
        out["oracle_mIoU"] = float(np.mean([r["oracle_iou"] for r in present]))
        for t in PRECISION_THRESHOLDS:
            out[f"Pr@{t}"] = float((ious > t).mean())
        by_kind = defaultdict(list)
        for r, iou in zip(present, ious, strict=True):
            by_kind[r["kind"]].append(iou)
        out["mIoU_by_kind"] = {k: round(float(np.mean(v)), 4) for k, v in sorted(by_kind.items())}
    if absent:
        out["empty_mask_rate"] = float(np.mean([r["empty"] for r in absent]))
        out["absent_queries"] = len(absent)
    if plural:
        out["counting_accuracy"] = float(np.mean([r["pred_count"] == r["count"] for r in plural]))
        out["counting_accuracy_gt_mask"] = float(np.mean([r["gt_mask_count"] == r["count"] for r in plural]))
        out["plural_queries"] = len(plural)
    return out


@torch.no_grad()
def evaluate_samples(model: Segmenter, texts: TextCache, samples: list[Sample]) -> dict:
    """Metrics of ``model`` on ``samples``; the candidate with the highest score is the answer."""
    model.eval()
    device = model.pixel_mean.device
    records = []
    for sample in samples:
        image = torch.from_numpy(sample.image).to(device).permute(2, 0, 1).float() / 255
        features = model.encode_image(image)
        text = texts([sample.expression])
        out = model.decode([features], text.tokens, text.mask, torch.from_numpy(sample.prompts)[None].to(device))
        maps, scores, _ = candidate_maps(features, out.logits[0, :features.tokens.shape[0]])
        candidates = (maps > 0.5).cpu().numpy()
        pred = candidates[int(np.argmax(scores))]
        inter, union = _overlap(pred, sample.mask)
        record = {"kind": sample.kind, "count": sample.count, "inter": inter, "union": union,
                  "oracle_iou": max(iou(c, sample.mask) for c in candidates),
                  "empty": bool(pred.sum() < min_area(pred.shape))}
        if sample.kind == "plural":
            record["pred_count"] = len(detect(pred.astype(np.float32)))
            record["gt_mask_count"] = len(detect(sample.mask.astype(np.float32)))
        records.append(record)
    return summarise(records)


def evaluate_heldout(model: Segmenter, texts: TextCache, total: int = 1500) -> dict:
    """Metrics on each held-out set (sizes split by EVAL_SETS shares, plus OUT_OF_STYLE_SHARE of ``total``
    queries in each out-of-style set) and the evaluation wall time."""
    started = time.time()
    results = {}
    for name, (share, heldout_wording, kinds, offset) in EVAL_SETS.items():
        samples = heldout_samples(max(1, int(total * share)), heldout_wording, kinds, offset)
        results[name] = evaluate_samples(model, texts, samples)
    for style in SCENE_STYLES:
        samples = out_of_style_samples(int(total * OUT_OF_STYLE_SHARE), style=style)
        results[OUT_OF_STYLE_SETS[style]] = evaluate_samples(model, texts, samples)
    results["eval_seconds"] = round(time.time() - started, 1)
    return results
