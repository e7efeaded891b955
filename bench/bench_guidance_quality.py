"""Guidance quality of the embedded DiT with and without per-head SoftPAG, at CFG 1 and 3.

For each setting: samples per class (Euler), classified by the panel's Fashion-MNIST classifier — accuracy against
the conditioning class, mean confidence — and the Fréchet distance (classifier features) to the test set, beside the
Fréchet distance of as many real training images (the floor at this sample size).

    python -m bench.bench_guidance_quality [--per-class 50] [--heads 3.4,2.2,0.2] [--u 1] [--pag 3] [--write]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from backends.core.heads import parse_heads
from backends.guidance.adapters import ASSETS, EmbeddedDiT
from backends.guidance.data import load_split, to_model_range
from backends.guidance.evaluate import evaluate_dit
from backends.guidance.softpag import strengths_for

RESULTS = Path(__file__).with_name("RESULTS_guidance_quality.md")


def main() -> None:
    """Evaluate baseline and SoftPAG-guided sampling and print (or write) a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--heads", default="3.4,2.2,0.2", help="the heads HeadHunter chose in bench_guidance")
    parser.add_argument("--u", type=float, default=1.0)
    parser.add_argument("--pag", type=float, default=3.0)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = EmbeddedDiT.load(ASSETS, "cpu", torch.float32)
    test_images, _ = load_split("test", "cpu")
    _, test_features = model.classifier.classify(to_model_range(test_images))
    train_images, _ = load_split("train", "cpu")
    reference = train_images[torch.randperm(len(train_images), generator=torch.Generator().manual_seed(0))]
    heads = parse_heads(args.heads, model.layers, model.heads)
    settings = {
        "no PAG": {},
        f"SoftPAG on {args.heads} (u={args.u}, scale {args.pag})": {
            "pag_scale": args.pag, "strengths": strengths_for([heads], args.u, model.layers, model.heads),
        },
    }
    rows = []
    for name, extra in settings.items():
        result = evaluate_dit(model, test_features, reference, args.per_class, steps=args.steps, **extra)
        for scale, metrics in result["by_cfg_scale"].items():
            rows.append(f"| {name} | {scale} | {metrics['accuracy']:.3f} | {metrics['confidence']:.3f} | "
                        f"{metrics['fd_test']:.2f} | {metrics['seconds']:.0f} |")
    table = "\n".join([
        "## Guidance: sample quality with and without per-head SoftPAG (embedded DiT)",
        "",
        f"{result['samples_per_scale']} samples per row ({args.per_class} per class), {args.steps} Euler steps, CPU. "
        f"Fréchet distance of {result['samples_per_scale']} real training images to the test set (the floor): "
        f"{result['fd_real_reference']:.2f}. Training-time evaluation (1,000 samples per scale, GPU) is in "
        "assets/guidance/guidance.json.",
        "",
        "| guidance | CFG | class accuracy | confidence | Fréchet distance to test | seconds |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        "Reproduce: `python -m bench.bench_guidance_quality --write`.",
    ])
    print(table)
    if args.write:
        RESULTS.write_text(table + "\n")


if __name__ == "__main__":
    main()
