"""The long needle-in-a-haystack probe and the streaming-heads check on the embedded SmolLM2, written as a report.

Runs ``needles.needle_report`` with the default setup (needles at 2 depths of 1k/2k/4k/8k haystacks for the scores;
the held-out needle at 2 depths of 1k/2k haystacks for each kept set of KV heads) and writes the needle map, the
top retrieval heads and the accuracy / KV share of every split.

    nice python -m bench.bench_heads_needles [--threads 1] [--write]   # --write: bench/RESULTS_heads_needles.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from backends.heads.models import load_language_model
from backends.heads.needles import NeedleSetup, needle_report
from backends.heads.scores import probe_scores, top_heads

RESULTS = Path(__file__).with_name("RESULTS_heads_needles.md")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--write", action="store_true", help=f"write {RESULTS.name}")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_language_model("smollm2")
    report = needle_report(lm, probe_scores(lm)["razor"]["retrieval_kv_heads"], NeedleSetup())
    retrieval = torch.tensor(report["retrieval"])
    lines = [
        f"## Needle-in-a-haystack retrieval heads, SmolLM2-135M ({report['seconds']} s, {args.threads} thread(s))",
        "",
        "Needle map (rows = depth, columns = haystack length; ✓ = the answer holds the passkey):",
        "",
        "| depth | " + " | ".join(f"{length:,}" for length in report["lengths"]) + " |",
        "|---|" + "---:|" * len(report["lengths"]),
        *(
            f"| {depth} | " + " | ".join("✓" if hit else "✗" for hit in row) + " |"
            for depth, row in zip(report["depths"], report["needle_map"], strict=True)
        ),
        "",
        "Top retrieval heads (score over answered tests): "
        + ", ".join(f"{layer}.{head} ({retrieval[layer, head]:.2f})" for layer, head in top_heads(retrieval, 8))
        + f"; heads above 0.1: {int((retrieval > 0.1).sum())} of {retrieval.numel()}.",
        "",
        f"Streaming heads (sink {report['streaming']['sink']} + window {report['streaming']['window']}) on the "
        "held-out needle:",
        "",
        "| kept KV heads | needle accuracy | KV cache kept |",
        "|---|---:|---:|",
        *(
            f"| {name} | {split['accuracy']:.2f} | {split['kv_share']:.1%} |"
            for name, split in report["streaming"]["splits"].items()
        ),
    ]
    print("\n".join(lines))
    print(
        json.dumps(
            {name: [t["answer"] for t in split["tests"]] for name, split in report["streaming"]["splits"].items()}
        )
    )
    if args.write:
        RESULTS.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
