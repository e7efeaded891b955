"""Load test on loopback: N concurrent gradio_client clients call all four panels' API endpoints for T seconds.

Starts the app as a user would (``python app.py``) on a free port, warms every endpoint once, then runs the clients
and reports per endpoint: requests, failures, p50/p95 latency; and the app's RSS after warm-up, at its peak and after
the run (a leak shows as RSS after ≫ RSS after warm-up). Bounded in time; sends traffic to 127.0.0.1 only.

    .venv/bin/python -m bench.bench_load --clients 20 --seconds 60
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


def main() -> None:
    """Run the load test and print its table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=60)
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
        warm = Client(url, verbose=False)
        for name, call_args in calls.items():
            warm.predict(*call_args, api_name=f"/{name}")
        watched = psutil.Process(app.pid)
        rss_warm = rss_mb(watched)

        latencies: dict[str, list[float]] = defaultdict(list)
        failures: dict[str, list[str]] = defaultdict(list)
        peak = [rss_warm]
        deadline = time.monotonic() + args.seconds
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

        threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(args.clients)]
        threads.append(threading.Thread(target=watch_memory))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        rss_after = rss_mb(watched)

        print(f"{args.clients} clients for {args.seconds:.0f} s on 127.0.0.1 (this machine: {os.cpu_count()} cores)")
        print(f"{'endpoint':18} {'ok':>5} {'failed':>6} {'p50 s':>7} {'p95 s':>7}")
        for name in calls:
            times = sorted(latencies[name])
            p50 = statistics.median(times) if times else float("nan")
            p95 = times[min(len(times) - 1, int(0.95 * len(times)))] if times else float("nan")
            print(f"{name:18} {len(times):5d} {len(failures[name]):6d} {p50:7.2f} {p95:7.2f}")
        total_failed = sum(len(f) for f in failures.values())
        print(f"failed requests: {total_failed}")
        for name, errors in failures.items():
            print(f"  {name}: {errors[:3]}")
        print(f"RSS after warm-up {rss_warm:.0f} MB, peak {peak[0]:.0f} MB, after run {rss_after:.0f} MB "
              f"(after/warm = {rss_after / rss_warm:.3f})")
    finally:
        app.kill()
        app.wait()


if __name__ == "__main__":
    main()
