"""Segmentation panel benchmark: query speed on CPU (first vs cached repeat) and held-out quality.

    python bench/bench_segmentation.py [--queries 20] [--eval-samples 600] [--threads 2] [--write]

Speed: each round takes a new 256×256 held-out scene and times, side by side through the service, (a) the first
query on it with an expression never seen before (image features and text encoded), (b) a repeat with another new
expression (image features from the cache, text encoded), (c) a repeat with the first expression and a click on an
item (image features and text encoding from the caches: the panel's click loop) and (d) the same query again with
another threshold (the answer cache: the panel's threshold/candidate loop). Medians and ratios are printed.
Quality: the held-out sets of ``backends.segmentation.evaluate`` (generator held-out scenes and wordings, prompts,
out-of-style scenes) with the weights in assets/.
``--write`` stores the markdown section in bench/RESULTS_segmentation.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backends.segmentation.data import HELDOUT_SEED_START, make_samples  # noqa: E402
from backends.segmentation.evaluate import TEXT_KINDS, evaluate_heldout  # noqa: E402
from backends.segmentation.service import SegmentationService  # noqa: E402


def _timed(service: SegmentationService, *args) -> float:
    started = time.perf_counter()
    service.call("segment", *args)
    return time.perf_counter() - started


def speed(service: SegmentationService, rounds: int) -> dict:
    """Median seconds of first, new-expression repeat and new-click repeat queries on 256×256 images."""
    warm = Image.fromarray(make_samples(HELDOUT_SEED_START + 5_000_000)[0].image).resize((256, 256))
    service.call("segment", warm, "the bag", "", "", "")  # load the model outside the timings
    first, new_text, new_click, same = [], [], [], []
    for i in range(rounds):
        scene = make_samples(HELDOUT_SEED_START + 5_000_001 + i, queries=2, size=256, kinds=TEXT_KINDS)
        image = Image.fromarray(scene[0].image)
        expression, other = f"{scene[0].expression} (round {i})", f"{scene[1].expression} (round {i}, again)"
        ys, xs = np.nonzero(scene[0].items[0].mask)
        click = f"[[{xs[len(xs) // 2]}, {ys[len(ys) // 2]}, 1]]"  # on an item, as in the panel's click loop
        first.append(_timed(service, image, expression, "", "", ""))
        new_text.append(_timed(service, image, other, "", "", ""))
        new_click.append(_timed(service, image, expression, click, "", ""))
        started = time.perf_counter()
        service.call("segment_view", image, expression, click, "", "", 0.3, -1)
        same.append(time.perf_counter() - started)
    med = {name: statistics.median(v) for name, v in
           (("first", first), ("repeat_new_expression", new_text), ("repeat_new_click", new_click),
            ("repeat_new_threshold", same))}
    return {**{f"{k}_ms": round(v * 1000, 1) for k, v in med.items()}, "load_average": os.getloadavg()[0],
            "ratio_new_expression": round(med["repeat_new_expression"] / med["first"], 3),
            "ratio_new_click": round(med["repeat_new_click"] / med["first"], 3),
            "ratio_new_threshold": round(med["repeat_new_threshold"] / med["first"], 3), "rounds": rounds}


def markdown(timings: dict, quality: dict, meta: dict, threads: int, frozen: int) -> str:
    """The results section for BENCHMARKS.md."""
    runs = meta.get("runs", [])
    trained = " + ".join(f"{r['device']} {r['wall_seconds']:.0f} s" for r in runs)
    last = runs[-1] if runs else {}
    lines = [
        "## Referring segmentation",
        "",
        f"Embedded segmenter ({(meta.get('parameters', 0) - frozen) / 1e6:.2f} M trained parameters, a frozen "
        f"{frozen / 1e6:.2f} M Fashion-MNIST classifier and frozen MiniLM), "
        f"{meta.get('steps', '?')} steps of {last.get('scenes_per_step', '?')} scenes × "
        f"{last.get('queries_per_scene', '?')} queries, {meta.get('queries_seen', 0):,} training queries ({trained}).",
        "",
        f"**Speed** (CPU, {threads} thread{'s' if threads != 1 else ''}, 256×256 image, median of "
        f"{timings['rounds']} rounds, through the service; machine load average {timings['load_average']:.1f} on "
        f"{os.cpu_count()} cores during the run):",
        "",
        "| query | ms | ratio to first | target |",
        "|---|---|---|---|",
        f"| new image, new expression | {timings['first_ms']} | 1 | ≤ 150 ms |",
        f"| cached image, new expression (MiniLM runs) | {timings['repeat_new_expression_ms']} | "
        f"{timings['ratio_new_expression']} | – |",
        f"| cached image and expression, new click | {timings['repeat_new_click_ms']} | "
        f"{timings['ratio_new_click']} | ≤ 1/3 |",
        f"| same query, new threshold (answer cache; with overlay and RLE) | {timings['repeat_new_threshold_ms']} | "
        f"{timings['ratio_new_threshold']} | ≤ 1/3 |",
        "",
        "**Quality** on held-out generated scenes (seeds ≥ 2·10⁹, Fashion-MNIST test items) and on out-of-style "
        "scenes drawn by the hand-coded rules of `backends/segmentation/outofstyle.py` (cartoon, engraved and collage "
        "styles, never trained on); the candidate with the highest score — the probability of its set of objects — "
        "is the answer; Pr@t = share of queries with IoU > t:",
        "",
        "| set | queries | mIoU | oIoU | Pr@0.5 | Pr@0.7 | Pr@0.9 | oracle mIoU | counting acc. | empty-mask rate |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in ("heldout_scenes", "heldout_wordings", "prompts", "out_of_style", "out_of_style_engraved",
                 "out_of_style_collage"):
        m = quality[name]
        cells = [m.get("mIoU"), m.get("oIoU"), m.get("Pr@0.5"), m.get("Pr@0.7"), m.get("Pr@0.9"),
                 m.get("oracle_mIoU"), m.get("counting_accuracy"), m.get("empty_mask_rate")]
        text = " | ".join("–" if v is None else f"{v:.3f}" for v in cells)
        lines.append(f"| {name} | {m['queries']} | {text} |")
    by_kind = quality["heldout_scenes"].get("mIoU_by_kind", {})
    lines += ["", "mIoU by query kind (held-out scenes): " + ", ".join(f"{k} {v:.2f}" for k, v in by_kind.items()),
              "", "Reproduce: `python bench/bench_segmentation.py --write`."]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Run the benchmark and print (and optionally write) the results."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--eval-samples", type=int, default=600)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    service = SegmentationService(device="cpu")
    timings = speed(service, args.queries)
    print(json.dumps(timings, indent=1))
    embedded = service.model("")
    quality = evaluate_heldout(embedded.model, embedded.texts, args.eval_samples)
    print(json.dumps(quality, indent=1))
    frozen = sum(p.numel() for p in embedded.model.parameters() if not p.requires_grad)
    section = markdown(timings, quality, embedded.meta, args.threads, frozen)
    print(section)
    if args.write:
        (ROOT / "bench" / "RESULTS_segmentation.md").write_text(section)


if __name__ == "__main__":
    main()
