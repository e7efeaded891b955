"""Guidance service: throughput of 2 concurrent sampling requests vs the same 2 in sequence, and the head atlas time.

1. Two different ``guidance_sample`` calls (different heads, u and heads_off) run one after the other, then at the
   same time in two threads; both orders are repeated and the medians compared. Heads travel with each call, so the
   service has no panel-wide lock and the concurrent pair may overlap. Each thread uses ``--threads`` torch threads.
2. ``guidance_head_effects`` on the embedded model from a cold start (fresh cache folder, no Fréchet reference
   features yet), then again from the memory cache and from the disk cache (a new service).

    python -m bench.bench_guidance_atlas [--threads 1] [--repeats 3] [--write]   # --write: RESULTS_guidance_atlas.md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch

from backends.guidance.service import GuidanceService

RESULTS = Path(__file__).with_name("RESULTS_guidance_atlas.md")
REQUESTS = (
    ("", "Sneaker", 8, 0, 20, 2.0, 3.0, "0.2,2.2,3.4", 1.0, ""),
    ("", "Bag", 8, 100, 20, 2.0, 3.0, "L1", 0.5, "3.2"),
)


def sequential(service: GuidanceService) -> float:
    """Seconds for the requests one after the other."""
    start = time.perf_counter()
    for request in REQUESTS:
        service.call("guidance_sample", *request)
    return time.perf_counter() - start


def concurrent(service: GuidanceService) -> float:
    """Seconds for the requests in parallel threads, all started together."""
    barrier = threading.Barrier(len(REQUESTS) + 1)

    def run(request: tuple) -> None:
        barrier.wait()
        service.call("guidance_sample", *request)

    threads = [threading.Thread(target=run, args=(request,)) for request in REQUESTS]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start


def bench_throughput(service: GuidanceService, repeats: int) -> dict:
    """Median seconds of the sequential and the concurrent pair (interleaved, after a warm-up of each)."""
    times: dict[str, list[float]] = {"sequential": [], "2 concurrent": []}
    for round_index in range(repeats + 1):
        for name, run in (("sequential", sequential), ("2 concurrent", concurrent)):
            seconds = run(service)
            if round_index:
                times[name].append(seconds)
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {"seconds": {name: round(value, 2) for name, value in medians.items()},
            "speed_up": round(medians["sequential"] / medians["2 concurrent"], 2)}


def bench_atlas() -> dict:
    """Cold, memory-cached and disk-cached ``guidance_head_effects`` times on the embedded model."""
    with tempfile.TemporaryDirectory() as folder:
        os.environ["HEADLAB_CACHE_DIR"] = folder
        service = GuidanceService(device="cpu")
        model = service.model("")  # loading the model is not part of the atlas
        start, cpu_start = time.perf_counter(), time.process_time()
        model.test_features()  # the Fréchet reference, computed once per process (HeadHunter shares it)
        reference = time.perf_counter() - start
        atlas = service.call("guidance_head_effects", "", "")
        cold, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        start = time.perf_counter()
        service.call("guidance_head_effects", "", "confidence")
        memory = time.perf_counter() - start
        fresh = GuidanceService(device="cpu")
        fresh.model("")
        start = time.perf_counter()
        from_disk = fresh.call("guidance_head_effects", "", "")
        disk = time.perf_counter() - start
    return {"cold": round(cold, 1), "cpu_seconds": round(cpu, 1), "reference_features": round(reference, 1),
            "sampling_and_scoring": atlas["seconds"], "memory_cache": round(memory, 4),
            "disk_cache": round(disk, 3), "disk_cached": from_disk["cached"], "probe": atlas["probe"]["samples"],
            "steps": atlas["probe"]["steps"], "head_sets": 1 + atlas["layers"] * atlas["heads"], "top": atlas["top"]}


def markdown(throughput: dict, atlas: dict, threads: int, cores: int, load: tuple[float, float]) -> str:
    """The results as the markdown section for BENCHMARKS.md."""
    seconds = throughput["seconds"]
    return "\n".join([
        "## Guidance: concurrent requests and the head atlas (embedded Fashion-MNIST DiT)", "",
        f"CPU ({cores} cores, shared: 1-minute load average {load[0]:.1f} at the start, {load[1]:.1f} at the end), "
        f"{threads} torch thread(s) per request; `python -m bench.bench_guidance_atlas --threads {threads}`. "
        "Medians, interleaved.", "",
        "Two different `guidance_sample` requests (8 samples × 20 steps, CFG 2 + PAG 3, different heads, u and "
        "heads_off):", "",
        "| order | seconds for both |", "|---|---|",
        f"| one after the other | {seconds['sequential']} |",
        f"| 2 concurrent | {seconds['2 concurrent']} |", "",
        f"Throughput with 2 concurrent requests: **{throughput['speed_up']}×** the sequential one "
        "(no panel-wide lock; each call carries its own heads).", "",
        f"`guidance_head_effects` (every objective, {atlas['head_sets']} head sets × {atlas['probe']} probe samples × "
        f"{atlas['steps']} steps): cold **{atlas['cold']} s** wall, **{atlas['cpu_seconds']} s of CPU time** (what "
        f"it takes with {threads} free core(s); bar: ≤ 60 s): {atlas['reference_features']} s for the "
        f"Fréchet reference features of the test set, then {atlas['sampling_and_scoring']} s of sampling and "
        "scoring; "
        f"memory cache {atlas['memory_cache']} s, disk cache {atlas['disk_cache']} s. Top heads per objective "
        f"(largest drop when switched off): "
        + "; ".join(f"{name} {', '.join(heads[:3])}" for name, heads in atlas["top"].items()) + ".",
    ]) + "\n"


def main() -> None:
    """Run both benchmarks and print (and optionally write) the results."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", action="store_true", help=f"write the markdown section to {RESULTS.name}")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    atlas = bench_atlas()
    service = GuidanceService(device="cpu")
    throughput = bench_throughput(service, args.repeats)
    print(json.dumps({"throughput": throughput, "atlas": atlas}, indent=1))
    text = markdown(throughput, atlas, args.threads, os.cpu_count() or 1, (load_before, os.getloadavg()[0]))
    print(text)
    if args.write:
        RESULTS.write_text(text)


if __name__ == "__main__":
    main()
