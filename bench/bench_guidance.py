"""Guidance panel speed, measured side by side on the embedded Fashion-MNIST DiT (CPU by default).

1. Per-head SoftPAG sampling vs diffusers' own layer-level PAG processor (PAGCFGIdentitySelfAttnProcessor2_0) on
   the same model, steps, batch and layers; the runs are interleaved and the medians compared. Perturbing every head
   of a layer with u = 1 is layer-level PAG, so both must also give the same images.
2. One HeadHunter round over all heads with M = 4 seeds.

    python -m bench.bench_guidance [--threads 1] [--repeats 5] [--write]   # --write: bench/RESULTS_guidance.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers.models.attention_processor import AttnProcessor2_0, PAGCFGIdentitySelfAttnProcessor2_0

from backends.guidance.adapters import ASSETS, EmbeddedDiT
from backends.guidance.headhunter import SearchSettings, head_hunter
from backends.guidance.sampler import guided_sample
from backends.guidance.softpag import install_softpag, strengths_for

RESULTS = Path(__file__).with_name("RESULTS_guidance.md")


def use_diffusers_pag(model: EmbeddedDiT, layers: list[int]) -> None:
    """diffusers' layer-level PAG on ``layers``, its plain processor elsewhere (as its PAG pipelines set them)."""
    for index, block in enumerate(model.transformer.transformer_blocks):
        block.attn1.set_processor(PAGCFGIdentitySelfAttnProcessor2_0() if index in layers else AttnProcessor2_0())


def interleaved_medians(runs: dict[str, Callable[[], torch.Tensor]], repeats: int) -> dict[str, float]:
    """Median wall time of each run, calling them in turn ``repeats`` times (after one warm-up round)."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for round_index in range(repeats + 1):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            if round_index:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def bench_pag(model: EmbeddedDiT, steps: int, count: int, repeats: int, layers: list[int]) -> dict:
    """SoftPAG (all heads of ``layers`` at u = 1; and 2 heads at u = 0.5) vs diffusers' layer PAG, CFG on."""
    seeds = list(range(count))
    every_head = strengths_for([[(layer, h) for layer in layers for h in range(model.heads)]], 1.0, model.layers,
                               model.heads)
    two_soft_heads = strengths_for([[(layers[0], 0), (layers[-1], 1)]], 0.5, model.layers, model.heads)

    def sample(strengths: torch.Tensor) -> torch.Tensor:
        return guided_sample(model, "Sneaker", seeds, steps, cfg_scale=3.0, pag_scale=3.0, strengths=strengths)

    def diffusers_pag() -> torch.Tensor:
        use_diffusers_pag(model, layers)
        try:
            return sample(every_head)  # the strengths only make the sampler add the perturbed branch
        finally:
            install_softpag(model.transformer)

    same = torch.allclose(sample(every_head), diffusers_pag(), atol=1e-4)
    medians = interleaved_medians(
        {"diffusers layer PAG": diffusers_pag, "SoftPAG, all heads of the layers, u=1": lambda: sample(every_head),
         "SoftPAG, 2 heads, u=0.5": lambda: sample(two_soft_heads)},
        repeats,
    )
    reference = medians["diffusers layer PAG"]
    return {"layers": layers, "steps": steps, "batch": count, "same_images_as_diffusers": same,
            "seconds": {name: round(value, 3) for name, value in medians.items()},
            "ratio_to_diffusers": {name: round(value / reference, 3) for name, value in medians.items()}}


def bench_search(model: EmbeddedDiT, steps: int) -> dict:
    """Wall time of one HeadHunter round over every head with M = 4 seeds (no CFG, confidence objective)."""
    settings = SearchSettings(condition="Sneaker", objective="confidence", seeds=4, rounds=1, top_k=3, steps=steps)
    start = time.perf_counter()
    result = head_hunter(model, settings)
    return {"heads_scored": model.layers * model.heads, "seeds": 4, "steps": steps,
            "seconds": round(time.perf_counter() - start, 1), "chosen": result["heads"],
            "baseline_score": result["baseline_score"], "best_score": result["rounds"][0]["best_score"]}


def markdown(pag: dict, search: dict, threads: int) -> str:
    """The results as the markdown section for BENCHMARKS.md."""
    lines = [
        "## Guidance: per-head SoftPAG and HeadHunter (embedded Fashion-MNIST DiT, 6 layers × 6 heads)", "",
        f"CPU, {threads} thread(s), float32; `python -m bench.bench_guidance --threads {threads}`. Runs interleaved, "
        "medians. CFG 3 + PAG 3, so every step is one batched forward of [unconditional, conditional, perturbed].", "",
        f"Sampling {pag['batch']} images × {pag['steps']} steps, perturbed layers {pag['layers']}:", "",
        "| variant | seconds | ratio to diffusers' layer PAG |", "|---|---|---|",
    ]
    for name, seconds in pag["seconds"].items():
        lines.append(f"| {name} | {seconds} | {pag['ratio_to_diffusers'][name]} |")
    lines += [
        "", f"SoftPAG with every head of the layers at u = 1 gives the same images as diffusers' layer PAG: "
        f"{pag['same_images_as_diffusers']}.", "",
        f"One HeadHunter round over all {search['heads_scored']} heads, M = {search['seeds']} seeds, "
        f"{search['steps']} steps, objective classifier confidence: **{search['seconds']} s** (bar: ≤ 120 s); "
        f"chose {search['chosen']} (confidence {search['baseline_score']} → best single head {search['best_score']}).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Run both benchmarks and print (and optionally write) the results."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--write", action="store_true", help=f"write the markdown section to {RESULTS.name}")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = EmbeddedDiT.load(ASSETS, "cpu", torch.float32)
    pag = bench_pag(model, args.steps, args.batch, args.repeats, layers=[2, 3])
    search = bench_search(model, args.steps)
    print(json.dumps({"pag": pag, "search": search}, indent=1))
    text = markdown(pag, search, args.threads)
    print(text)
    if args.write:
        RESULTS.write_text(text)


if __name__ == "__main__":
    main()
