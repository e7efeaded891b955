"""Segmentation from clicks and a box: the embedded model against the classical GrabCut fallback, side by side.

    python bench/bench_segmentation_prompts.py [--scenes 60] [--threads 1] [--write]

Each held-out query (clicks or a box, no text) is answered, at 256×256, by (a) the embedded model alone, (b)
GrabCut alone and (c) the panel's answer (the embedded model, or GrabCut when the image is out of domain or no item
lies under the prompts), every answer passed through the same prompt rules (mask inside the box, exclude clicks
outside). Sets: the generator's held-out scenes (seeds ≥ 2·10⁹, Fashion-MNIST test items) and the out-of-style
scenes of ``backends.segmentation.outofstyle``. Reported: mIoU of the best-scored candidate at threshold 0.5 and the
median seconds per query. ``--write`` stores the markdown section in bench/RESULTS_segmentation_prompts.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backends.segmentation.classical import ClassicalSegmenter  # noqa: E402
from backends.segmentation.data import BOX_BOTTOM_RIGHT, BOX_TOP_LEFT, PAD, Sample  # noqa: E402
from backends.segmentation.embedded import EmbeddedSegmenter  # noqa: E402
from backends.segmentation.evaluate import heldout_samples  # noqa: E402
from backends.segmentation.outofstyle import out_of_style_samples  # noqa: E402
from backends.segmentation.prompts import honour_prompts  # noqa: E402
from backends.segmentation.query import Query  # noqa: E402

SIDE = 256
THRESHOLD = 0.5
PROMPT_KINDS = ("points", "box")


def to_query(sample: Sample) -> tuple[Query, np.ndarray]:
    """The sample at SIDE×SIDE as a prompt-only query (pixel coordinates) and its ground-truth mask there."""
    image = Image.fromarray(sample.image).resize((SIDE, SIDE), Image.BILINEAR)
    truth = np.asarray(Image.fromarray(sample.mask.astype(np.uint8) * 255).resize((SIDE, SIDE), Image.NEAREST)) > 0
    rows = [(float(x) * SIDE, float(y) * SIDE, int(label)) for x, y, label in sample.prompts if label != PAD]
    corners = {label: (x, y) for x, y, label in rows if label in (BOX_TOP_LEFT, BOX_BOTTOM_RIGHT)}
    box = (*corners[BOX_TOP_LEFT], *corners[BOX_BOTTOM_RIGHT]) if corners else None
    return Query(image, "", [r for r in rows if r[2] in (0, 1)], box), truth


def answer_iou(predict, query: Query, truth: np.ndarray) -> tuple[float, float, str]:
    """IoU of the best candidate (prompt rules applied), seconds taken and who answered."""
    started = time.perf_counter()
    prediction = predict(query)
    seconds = time.perf_counter() - started
    best = int(np.argmax(prediction.scores))
    probability, _ = honour_prompts(prediction.probabilities[best], query, THRESHOLD)
    mask = probability > THRESHOLD
    union = (mask | truth).sum()
    return float((mask & truth).sum() / union) if union else 1.0, seconds, prediction.extras.get("answered_by", "")


def run_set(samples: list[Sample], embedded: EmbeddedSegmenter, classical: ClassicalSegmenter) -> dict:
    """mIoU and median seconds per method (and per prompt kind) on ``samples``."""
    methods = {"embedded": lambda q: embedded.predict(q, fallback=False), "grabcut": classical.predict,
               "panel": embedded.predict}
    results: dict = {}
    for name, predict in methods.items():
        per_kind: dict[str, list[float]] = {kind: [] for kind in PROMPT_KINDS}
        seconds, fallbacks = [], 0
        for sample in samples:
            query, truth = to_query(sample)
            iou, took, answered_by = answer_iou(predict, query, truth)
            per_kind[sample.kind].append(iou)
            seconds.append(took)
            fallbacks += answered_by == classical.name
        every = [v for values in per_kind.values() for v in values]
        results[name] = {"mIoU": round(float(np.mean(every)), 4),
                         **{f"mIoU_{k}": round(float(np.mean(v)), 4) for k, v in per_kind.items() if v},
                         "median_ms": round(statistics.median(seconds) * 1000, 1), "grabcut_share":
                         round(fallbacks / len(samples), 3), "queries": len(samples)}
    return results


def markdown(results: dict, threads: int) -> str:
    """The results section for BENCHMARKS.md."""
    lines = ["## Referring segmentation from clicks and a box: embedded model vs GrabCut", "",
             f"Prompt-only held-out queries at {SIDE}×{SIDE} (CPU, {threads} thread{'s' * (threads != 1)}); the "
             "best-scored candidate at threshold 0.5 after the prompt rules; *panel* = what the app answers (the "
             "embedded model, or GrabCut when the image is out of domain or no item lies under the prompts).", "",
             "| set | method | queries | mIoU | mIoU clicks | mIoU box | GrabCut answered | median ms |",
             "|---|---|---|---|---|---|---|---|"]
    for set_name, methods in results.items():
        for name, m in methods.items():
            kinds = " | ".join(f"{m[f'mIoU_{k}']:.3f}" if f"mIoU_{k}" in m else "–" for k in PROMPT_KINDS)
            lines.append(f"| {set_name} | {name} | {m['queries']} | {m['mIoU']:.3f} | {kinds} | "
                         f"{m['grabcut_share']:.0%} | {m['median_ms']} |")
    lines += ["", "Reproduce: `python bench/bench_segmentation_prompts.py --write`."]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Run both sets and print (and optionally write) the results."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=60, help="queries per set")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    embedded, classical = EmbeddedSegmenter.load(), ClassicalSegmenter()
    sets = {"generator held-out": heldout_samples(args.scenes, kinds=PROMPT_KINDS, offset=40_000_000),
            "out-of-style": out_of_style_samples(args.scenes, kinds=PROMPT_KINDS)}
    results = {name: run_set(samples, embedded, classical) for name, samples in sets.items()}
    print(json.dumps(results, indent=1))
    section = markdown(results, args.threads)
    print(section)
    if args.write:
        (ROOT / "bench" / "RESULTS_segmentation_prompts.md").write_text(section)


if __name__ == "__main__":
    main()
