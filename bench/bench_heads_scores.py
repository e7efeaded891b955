"""Head-type scores, ablation and generation: speed measured side by side on the embedded SmolLM2 (CPU by default).

1. ``heads_analyze`` + ``heads_scores`` on a new 256-token text (probe-based scores already cached) vs one plain
   forward pass that returns every layer's attention (``output_attentions=True``). Target: ≤ 1.5×.
2. The text-based score reducer's own cost: one hooked pass with the panel's other reducers, with and without it.
3. Probe-based scores (repeated random tokens, needle prompts, successor OV circuits): first call vs cached call.
4. ``heads_ablate`` (two greedy continuations of 20 tokens + AttentionInfluence) and ``heads_generate`` (12 tokens).

Runs are interleaved (baseline, candidate, baseline, …) and the medians compared, so other jobs on a shared machine
slow both sides alike; CPU seconds of this process are reported beside wall seconds.

    python -m bench.bench_heads_scores [--threads N] [--repeats 5] [--device cpu] [--write]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from backends.heads.attention import HeadStats, PooledMaps, run_with_attention, tokenize
from backends.heads.scores import TextScores
from backends.heads.service import HeadsService
from bench.bench_heads_view import cpu_timed, text_of

RESULTS = Path(__file__).with_name("RESULTS_heads_scores.md")
TARGET_RATIO = 1.5


def median_pairs(pairs: list[tuple[float, float]]) -> tuple[float, float]:
    """Medians of (wall, cpu) pairs."""
    return statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)


def bench_ratio(service: HeadsService, n_tokens: int, repeats: int) -> dict:
    """Analysis + scores on a new text vs one forward pass with attentions, interleaved."""
    lm = service.model("")
    baseline, candidate = [], []
    for repeat in range(repeats + 1):
        text = text_of(lm, n_tokens, variant=repeat)
        ids = tokenize(lm, text).input_ids.to(lm.device)[None]

        def forward(ids=ids):
            with torch.inference_mode():
                return lm.model(ids, output_attentions=True, use_cache=False)

        def analyse_and_score(text=text):
            service.call("heads_analyze", "", text)
            return service.call("heads_scores", "", text)

        _, base_wall, base_cpu = cpu_timed(forward)
        _, wall, cpu = cpu_timed(analyse_and_score)
        if repeat:  # the first round warms up (and fills the probe cache)
            baseline.append((base_wall, base_cpu))
            candidate.append((wall, cpu))
    (base_wall, base_cpu), (wall, cpu) = median_pairs(baseline), median_pairs(candidate)
    return {
        "forward_s": base_wall,
        "forward_cpu_s": base_cpu,
        "scored_s": wall,
        "scored_cpu_s": cpu,
        "ratio": wall / base_wall,
        "ratio_cpu": cpu / base_cpu,
    }


def bench_reducer(service: HeadsService, n_tokens: int, repeats: int) -> dict:
    """One pass with the analysis reducers, without and with TextScores, interleaved."""
    lm = service.model("")
    ids = tokenize(lm, text_of(lm, n_tokens, variant=99)).input_ids

    def others() -> list:
        return [HeadStats(lm.n_layers, lm.n_heads, lm.is_causal), PooledMaps(lm.n_layers, lm.n_heads)]

    without, with_scores = [], []
    for _ in range(repeats):
        without.append(cpu_timed(lambda: run_with_attention(lm, ids, others()))[1:])
        with_scores.append(
            cpu_timed(lambda: run_with_attention(lm, ids, [*others(), TextScores(lm.n_layers, lm.n_heads)]))[1:]
        )
    (plain, plain_cpu), (scored, scored_cpu) = median_pairs(without), median_pairs(with_scores)
    return {
        "without_s": plain,
        "with_s": scored,
        "overhead": scored / plain - 1,
        "overhead_cpu": scored_cpu / plain_cpu - 1,
    }


def bench_probes_and_lab(device: str) -> dict:
    """First (uncached) and cached probe-based scores on a fresh service, then the ablation lab and the stepper."""
    HeadsService._probe_scores.clear()
    service = HeadsService(device=device)
    lm = service.model("")
    text = text_of(lm, 64, variant=7)
    service.call("heads_analyze", "", text)
    _, first, first_cpu = cpu_timed(lambda: service.call("heads_scores", "", text))
    _, cached, _ = cpu_timed(lambda: service.call("heads_scores", "", text))
    _, ablate, _ = cpu_timed(lambda: service.call("heads_ablate", "", text, "17.3, 18.6", "uniform"))
    _, generate, _ = cpu_timed(lambda: service.call("heads_generate", "", text, 12))
    return {
        "probes_first_s": first,
        "probes_first_cpu_s": first_cpu,
        "probes_cached_s": cached,
        "ablate_s": ablate,
        "generate_s": generate,
    }


def report(ratio: dict, reducer: dict, lab: dict, n_tokens: int, threads: int, service: HeadsService) -> str:
    """The markdown section for BENCHMARKS.md."""
    verdict = "meets" if ratio["ratio"] <= TARGET_RATIO else "misses"
    rows = [
        (
            f"one forward pass with attentions, {n_tokens} tokens",
            f"{ratio['forward_s']:.3f} s (CPU {ratio['forward_cpu_s']:.3f} s)",
        ),
        (
            f"`heads_analyze` + `heads_scores`, new {n_tokens}-token text",
            f"{ratio['scored_s']:.3f} s (CPU {ratio['scored_cpu_s']:.3f} s)",
        ),
        (
            f"**ratio** (target ≤ {TARGET_RATIO}×)",
            f"**{ratio['ratio']:.2f}×** wall, {ratio['ratio_cpu']:.2f}× CPU: {verdict} the target",
        ),
        (
            "TextScores reducer's share of the hooked pass",
            f"{reducer['overhead']:+.1%} wall, {reducer['overhead_cpu']:+.1%} CPU",
        ),
        ("probe-based scores, first call per model (needles, random tokens, OV)", f"{lab['probes_first_s']:.2f} s"),
        (
            "`heads_scores` once the probes are cached (64 tokens, analysis cached)",
            f"{lab['probes_cached_s'] * 1000:.0f} ms",
        ),
        ("`heads_ablate`: 2 heads, uniform, 2 × 20 greedy tokens + AttentionInfluence", f"{lab['ablate_s']:.2f} s"),
        ("`heads_generate`: 12 tokens with every head's top-3 positions per step", f"{lab['generate_s']:.2f} s"),
    ]
    table = "\n".join(f"| {label} | {value} |" for label, value in rows)
    return f"""## Heads panel: head-type scores, ablation lab, generation stepper

Measured {time.strftime("%Y-%m-%d")} on {service.device} ({platform.processor() or platform.machine()}, torch
threads = {threads}, 1-minute load average {os.getloadavg()[0]:.1f}), embedded SmolLM2-135M
({str(service.dtype).removeprefix("torch.")}), medians of interleaved runs
(`python -m bench.bench_heads_scores --write`). The analysis pass runs the backbone only (no LM head), hence a
ratio below 1 against the full forward pass.

| measurement | value |
|---|---|
{table}

Scores run as a reducer inside the analysis pass: each layer's `[heads, T, T]` map is reduced by one matrix product
with seven precomputed `[T·T]` masks (three templates, their row masks, the WAAD distance weights) plus a column sum
for FAI, then dropped, so no more than one layer's attention is held at a time. Probe-based scores depend on the
model only and are cached per model.
"""


def main() -> None:
    """Run the benchmark and print (or, with --write, also save) the markdown section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    service = HeadsService(device=args.device)
    ratio = bench_ratio(service, args.tokens, args.repeats)
    reducer = bench_reducer(service, args.tokens, args.repeats)
    lab = bench_probes_and_lab(args.device)
    section = report(ratio, reducer, lab, args.tokens, args.threads, service)
    print(section)
    if args.write:
        RESULTS.write_text(section)


if __name__ == "__main__":
    main()
