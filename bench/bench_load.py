"""Load test on loopback: N concurrent gradio_client clients call all four panels' API endpoints for T seconds.

Starts the app as a user would (``python app.py``) on a free port, runs the same load for a warm-up period (caches
fill, the allocator settles) and takes the app's RSS, then runs the clients again and reports per endpoint: requests,
failures, p50/p95 latency; and the app's RSS after warm-up, at its peak and after the run (a leak shows as RSS after
≫ RSS after warm-up). Bounded in time; sends traffic to 127.0.0.1 only.

    .venv/bin/python -m bench.bench_load --clients 20 --seconds 60 [--write]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import psutil
from gradio_client import Client, handle_file
from PIL import Image

from tests.conftest import ROOT, free_port, wait_for_port

RESULTS = Path(__file__).with_name("RESULTS_load.md")


def requests_for(image_path: str) -> dict[str, tuple]:
    """One cheap, realistic call per panel (embedded models)."""
    return {
        "heads_analyze": ("", "When Mary and John went to the store, John gave a drink to"),
        "guidance_sample": ("", "Sneaker", 2, 0, 4, 1.0, 2.0, "1.0", 1.0),
        "segment": (handle_file(image_path), "the shirt", "", "", ""),
        "restore": (handle_file(image_path), "remove the noise", "", None),
    }


def rss_mb(process: psutil.Process) -> float:
    """Resident memory of the app and its children, in MB."""
    total = process.memory_info().rss
    for child in process.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += child.memory_info().rss
    return total / 2**20


def markdown_report(
    args: argparse.Namespace, latencies: dict[str, list[float]], failures: dict[str, list[str]],
    rss_warm: float, peak: float, rss_after: float,
) -> str:
    """The load test's results as a markdown section."""
    lines = [
        "## Load: 20 concurrent API clients across the four panels (bench/bench_load.py)",
        "",
        f"{args.clients} `gradio_client` clients for {args.seconds:.0f} s against `python app.py` on 127.0.0.1, each "
        f"cycling through the four panels' main endpoints on the embedded models, after a {args.warmup_seconds:.0f} s "
        f"warm-up under the same load; {os.cpu_count()} CPU cores. Queues: one per panel (`concurrency_id`), sizes "
        "from spaces.yml (heads 2, guidance 1, segmentation 2, restoration 1).",
        "",
        "| endpoint | requests | failed | p50 s | p95 s |",
        "|---|---|---|---|---|",
    ]
    for name in sorted(latencies.keys() | failures.keys()):
        times = sorted(latencies[name])
        p50 = statistics.median(times) if times else float("nan")
        p95 = times[min(len(times) - 1, int(0.95 * len(times)))] if times else float("nan")
        lines.append(f"| {name} | {len(times) + len(failures[name])} | {len(failures[name])} | {p50:.2f} | {p95:.2f} |")
    total_failed = sum(len(errors) for errors in failures.values())
    lines += [
        "",
        f"Failed requests: **{total_failed}**" + "".join(f"; {n}: {e[:2]}" for n, e in failures.items() if e) + ".",
        f"App RSS: after warm-up {rss_warm:.0f} MB, peak {peak:.0f} MB, after the run {rss_after:.0f} MB "
        f"(after / warm-up = **{rss_after / rss_warm:.3f}**, bound ≤ 1.10).",
        "",
        "Reproduce: `python -m bench.bench_load --write`.",
    ]
    return "\n".join(lines)


def run_clients(
    url: str, calls: dict[str, tuple], clients: int, seconds: float, watched: psutil.Process
) -> tuple[dict[str, list[float]], dict[str, list[str]], float]:
    """``clients`` threads, each with its own gradio_client, cycle through ``calls`` for ``seconds``.

    Returns the latencies and failures per endpoint and the peak RSS of ``watched`` meanwhile.
    """
    latencies: dict[str, list[float]] = defaultdict(list)
    failures: dict[str, list[str]] = defaultdict(list)
    peak = [rss_mb(watched)]
    deadline = time.monotonic() + seconds
    lock = threading.Lock()

    def client_loop(index: int) -> None:
        client = Client(url, verbose=False)
        names = list(calls)
        turn = index
        while time.monotonic() < deadline:
            name = names[turn % len(names)]
            turn += 1
            start = time.perf_counter()
            try:
                client.predict(*calls[name], api_name=f"/{name}")
                with lock:
                    latencies[name].append(time.perf_counter() - start)
            except Exception as error:  # counted, reported
                with lock:
                    failures[name].append(f"{type(error).__name__}: {error}"[:200])

    def watch_memory() -> None:
        while time.monotonic() < deadline + 5:
            peak[0] = max(peak[0], rss_mb(watched))
            time.sleep(0.5)

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(clients)]
    threads.append(threading.Thread(target=watch_memory))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, failures, peak[0]


def main() -> None:
    """Run the load test and print its table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--warmup-seconds", type=float, default=20, help="the same load, before RSS is taken")
    parser.add_argument("--write", action="store_true", help="write bench/RESULTS_load.md")
    args = parser.parse_args()

    port = free_port()
    log = Path(tempfile.mkdtemp()) / "app.log"
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "HF_HUB_OFFLINE": "1"}
    app = subprocess.Popen(
        [sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT
    )
    try:
        wait_for_port(port, app, timeout=300)
        url = f"http://127.0.0.1:{port}/"
        image_path = str(Path(tempfile.mkdtemp()) / "scene.png")
        Image.fromarray((np.random.default_rng(0).random((128, 128, 3)) * 255).astype(np.uint8)).save(image_path)
        calls = requests_for(image_path)
        watched = psutil.Process(app.pid)
        run_clients(url, calls, args.clients, args.warmup_seconds, watched)  # fill caches, reach steady state
        rss_warm = rss_mb(watched)
        latencies, failures, peak = run_clients(url, calls, args.clients, args.seconds, watched)

        rss_after = rss_mb(watched)

        report = markdown_report(args, latencies, failures, rss_warm, peak, rss_after)
        print(report)
        if args.write:
            RESULTS.write_text(report + "\n")
    finally:
        app.kill()
        app.wait()


if __name__ == "__main__":
    main()
