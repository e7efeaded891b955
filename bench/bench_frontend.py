"""The front end alone: boot time and memory of ``python app.py`` with every panel remote vs every panel local.

With every panel remote (``HEADLAB_<PANEL>_BACKEND``) the app is the CPU-basic front end of panels served elsewhere:
it must import no torch, transformers or diffusers. Both variants are started alternately, ``--rounds`` times each,
on free loopback ports; boot time runs from process start until the port answers and the API's routes are listed,
RSS is read right after boot and again once every panel's health call was answered (the all-local app then holds
its four services and torch; models still load on first use). Remote backends point at a closed port (nothing is
served), as a front end boots before its backends answer.

    .venv/bin/python -m bench.bench_frontend [--rounds 3] [--write]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil
from gradio_client import Client
from gradio_client.exceptions import AppError

from backends.core.registry import APIS
from tests.conftest import ROOT, free_port, wait_for_port

RESULTS = Path(__file__).with_name("RESULTS_frontend.md")



def boot(remote: bool) -> dict:
    """Start the app, wait until its API answers, and measure it; the app is stopped afterwards."""
    port, closed = free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GRADIO_SERVER_PORT": str(port)}
    if remote:
        env.update({f"HEADLAB_{panel.upper()}_BACKEND": f"http://127.0.0.1:{closed}" for panel in APIS})
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, process)
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        routes = client.view_api(return_format="dict", print_info=False)
        seconds = time.perf_counter() - started
        booted_mb = psutil.Process(process.pid).memory_info().rss / 2**20
        for panel in APIS:  # what the panel headers ask first: builds local services, or finds remote ones down
            with contextlib.suppress(AppError):
                client.predict(api_name=f"/{panel}_info")
        maps = Path(f"/proc/{process.pid}/maps").read_text()
        return {"seconds": seconds, "rss_mb": booted_mb, "ready_s": time.perf_counter() - started,
                "ready_mb": psutil.Process(process.pid).memory_info().rss / 2**20,
                "routes": len(routes["named_endpoints"]), "torch_loaded": "libtorch" in maps}
    finally:
        process.kill()
        process.wait()


def main() -> None:
    """Run both variants alternately and print (or write) the comparison."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write", action="store_true", help=f"write {RESULTS.name}")
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {"remote": [], "local": []}
    for _ in range(args.rounds):
        for variant in runs:
            runs[variant].append(boot(variant == "remote"))
    lines = [
        "## Front end: every panel remote vs every panel local (bench/bench_frontend.py)",
        "",
        f"`python app.py` started {args.rounds}× per variant, alternately, on this machine (load average "
        f"{os.getloadavg()[0]:.1f} at the end). Boot = process start until the API lists its routes; ready = after "
        "every panel's health call; medians.",
        "",
        "| variant | routes | torch loaded when ready | boot s | RSS at boot MB | ready s | RSS when ready MB |",
        "|---|---|---|---|---|---|---|",
    ]
    median = {variant: {key: statistics.median(r[key] for r in found) for key in ("seconds", "rss_mb", "ready_s",
                                                                                   "ready_mb")}
              for variant, found in runs.items()}
    for variant, found in runs.items():
        m = median[variant]
        lines.append(
            f"| every panel {variant} | {found[0]['routes']} | {'yes' if found[0]['torch_loaded'] else 'no'} | "
            f"{m['seconds']:.2f} | {m['rss_mb']:.0f} | {m['ready_s']:.2f} | {m['ready_mb']:.0f} |"
        )
    remote, local = median["remote"], median["local"]
    share = remote["ready_mb"] / local["ready_mb"]
    lines += ["", f"When ready, the remote front end holds **{share:.2f}×** the memory "
              f"of the all-local app and gets there **{local['ready_s'] / remote['ready_s']:.1f}×** faster; both boot "
              "alike, since services are built on first use.", "",
              "Reproduce: `python -m bench.bench_frontend --write`."]
    report = "\n".join(lines)
    print(report)
    if args.write:
        RESULTS.write_text(report + "\n")


if __name__ == "__main__":
    main()
