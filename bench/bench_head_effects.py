"""Every panel's head atlas (``<panel>_head_effects``) on its embedded model: cold time (wall and CPU), then from
the memory and the disk cache, with the shipped atlases ignored.

Each panel runs in a fresh service with an empty cache folder; loading the model is not part of the time. The CPU
time is what the computation costs with the given torch threads on free cores (the wall time also counts whatever
else the machine was doing).

    python -m bench.bench_head_effects [--threads 2] [--panels heads,segmentation] [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from backends.core.registry import service_class

RESULTS = Path(__file__).with_name("RESULTS_head_effects.md")
PANELS = ("heads", "guidance", "segmentation", "restoration")
BAR_SECONDS = 60


def bench_panel(panel: str) -> dict:
    """Cold, memory-cached and disk-cached atlas times of ``panel``'s embedded model."""
    with tempfile.TemporaryDirectory() as folder:
        os.environ["HEADLAB_CACHE_DIR"] = folder
        service = service_class(panel)(device="cpu")
        service.effects_cache.shipped = None
        service.model("")
        endpoint = f"{panel}_head_effects"
        start, cpu_start = time.perf_counter(), time.process_time()
        atlas = service.call(endpoint, "", "")
        cold, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        start = time.perf_counter()
        service.call(endpoint, "", "")
        memory = time.perf_counter() - start
        fresh = service_class(panel)(device="cpu")
        fresh.effects_cache.shipped = None
        fresh.model("")
        start = time.perf_counter()
        from_disk = fresh.call(endpoint, "", "")
        disk = time.perf_counter() - start
    heads = sum(1 for row in atlas["specificity"] for value in row if value is not None)
    return {"model": atlas["model"], "heads": heads, "tasks": atlas["tasks"], "cold": round(cold, 1),
            "cpu_seconds": round(cpu, 1), "memory_cache": round(memory, 4), "disk_cache": round(disk, 3),
            "disk_cached": from_disk["cached"], "top": {task: atlas["top"][task][:3] for task in atlas["tasks"]}}


def markdown(results: dict[str, dict], threads: int, load: tuple[float, float]) -> str:
    """The results as the markdown section for BENCHMARKS.md."""
    lines = [
        "## Head atlases of the four embedded models", "",
        f"CPU ({os.cpu_count()} cores, 1-minute load average {load[0]:.1f} at the start, {load[1]:.1f} at the end), "
        f"{threads} torch thread(s); `python -m bench.bench_head_effects --threads {threads}`. Fresh service and "
        f"cache per panel, shipped atlases ignored; bar: ≤ {BAR_SECONDS} s per model.", "",
        "| panel | model | heads × tasks | cold wall (s) | cold CPU (s) | memory cache (s) | disk cache (s) | "
        "top heads per task |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for panel, found in results.items():
        top = "; ".join(f"{task} {', '.join(heads)}" for task, heads in found["top"].items())
        lines.append(f"| {panel} | {found['model']} | {found['heads']} × {len(found['tasks'])} | {found['cold']} | "
                     f"{found['cpu_seconds']} | {found['memory_cache']} | {found['disk_cache']} | {top} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Run the chosen panels and print (and optionally write) the results."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--panels", default=",".join(PANELS))
    parser.add_argument("--write", action="store_true", help=f"write the markdown section to {RESULTS.name}")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    results = {panel: bench_panel(panel) for panel in args.panels.split(",")}
    print(json.dumps(results, indent=1))
    text = markdown(results, args.threads, (load_before, os.getloadavg()[0]))
    print(text)
    if args.write:
        RESULTS.write_text(text)


if __name__ == "__main__":
    main()
