"""Heads panel at full context: ``heads_analyze`` against a bare SDPA forward pass, side by side in one run.

1. For each length (1,024 and 8,192 SmolLM2 tokens by default): the stock transformers model with
   ``attn_implementation="sdpa"`` runs its backbone on the tokens (the bare forward pass), and HeadLab's
   ``heads_analyze`` analyses a text of the same length (statistics, text-based scores and every head's pooled map in
   one pass), alternately, ``--repeats`` times. Target at 8k: analyze ≤ 2× the bare pass.
2. Peak resident memory of a fresh process that analyses 8,192 tokens, draws the model view, a pooled heatmap and a
   zoomed window. Target: ≤ 4 GB.
3. The same 1,024-token analysis with the code of ``--baseline`` (a git commit, run from an exported copy in a child
   process). Target: no slower than that.

    python -m bench.bench_heads_context [--threads 1] [--repeats 2] [--baseline 0f6e4c1] [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from backends.heads.models import LanguageModel, smollm2_weights

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).with_name("RESULTS_heads_context.md")
SOURCES = ("README.md", "BENCHMARKS.md", *sorted(str(path.relative_to(ROOT)) for path in (ROOT / "bench").glob("*.md")))


def text_of(lm: LanguageModel, n_tokens: int, variant: int) -> str:
    """A text of ``n_tokens`` SmolLM2 tokens made of this repository's documentation (``variant`` makes it unique)."""
    source = f"Draft {variant}. " + " ".join((ROOT / name).read_text() for name in SOURCES)
    while len(lm.tokenizer(source)["input_ids"]) < n_tokens:
        source += " " + source
    return lm.tokenizer.decode(lm.tokenizer(source)["input_ids"][: n_tokens - 1])


def timed(run) -> float:
    """Wall seconds of ``run()``."""
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def bench_lengths(lengths: list[int], repeats: int) -> list[dict]:
    """Bare SDPA forward vs heads_analyze at each length, alternating."""
    from backends.heads.service import HeadsService

    service = HeadsService("cpu")
    lm = service.model("smollm2")
    bare = AutoModelForCausalLM.from_pretrained(smollm2_weights(), attn_implementation="sdpa").eval()
    rows = []
    for length in lengths:
        texts = [text_of(lm, length, variant) for variant in range(repeats)]
        sdpa_seconds, analyze_seconds = [], []
        for text in texts:
            ids = lm.tokenizer(text, return_tensors="pt")["input_ids"]
            with torch.inference_mode():
                sdpa_seconds.append(timed(lambda ids=ids: bare.model(ids, use_cache=False)))
            found = {}
            analyze_seconds.append(
                timed(lambda text=text, found=found: found.update(service.call("heads_analyze", "", text)))
            )
        sdpa, analyze = statistics.median(sdpa_seconds), statistics.median(analyze_seconds)
        rows.append(
            {
                "tokens": found["n_tokens"],
                "sdpa_s": round(sdpa, 2),
                "analyze_s": round(analyze, 2),
                "ratio": round(analyze / sdpa, 2),
                "sdpa_runs": [round(value, 2) for value in sdpa_seconds],
                "analyze_runs": [round(value, 2) for value in analyze_seconds],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def peak_memory(n_tokens: int) -> dict:
    """In this (fresh) process: analyse, draw the model view, a pooled heatmap and a zoom; peak RSS in GB."""
    from backends.heads.service import HeadsService

    service = HeadsService("cpu")
    text = text_of(service.model("smollm2"), n_tokens, 99)
    seconds = {}
    seconds["analyze"] = timed(lambda: service.call("heads_analyze", "", text))
    seconds["model_view"] = timed(lambda: service.call("heads_model_view", "", text, 0))
    seconds["pooled_map"] = timed(lambda: service.call("heads_map", "", text, "head", 18, 6, 0))
    seconds["zoom_map"] = timed(lambda: service.call("heads_map", "", text, "head", 18, 6, 0, 4000, 4200, 0, 200))
    return {
        "tokens": n_tokens,
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
        "seconds": {name: round(value, 2) for name, value in seconds.items()},
    }


def baseline_analyze(commit: str, n_tokens: int, threads: int) -> dict:
    """heads_analyze at ``n_tokens`` with the code of ``commit``, exported to a temporary folder (child process)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "backends"], check=True, capture_output=True)
    with tempfile.TemporaryDirectory() as folder:
        with tarfile.open(fileobj=BytesIO(archive.stdout)) as tar:
            tar.extractall(folder, filter="data")
        code = (
            "import json, time, torch\n"
            f"torch.set_num_threads({threads})\n"
            "from backends.heads.service import HeadsService\n"
            "service = HeadsService('cpu')\n"
            "lm = service.model('smollm2')\n"
            "from bench.bench_heads_context import text_of\n"
            f"text = text_of(lm, {n_tokens}, 7)\n"
            "start = time.perf_counter(); found = service.call('heads_analyze', '', text)\n"
            "print(json.dumps({'tokens': found['n_tokens'], 'analyze_s': round(time.perf_counter() - start, 2)}))\n"
        )
        environment = {**os.environ, "PYTHONPATH": f"{folder}{os.pathsep}{ROOT}"}
        found = subprocess.run(
            [sys.executable, "-c", code], check=True, capture_output=True, text=True, env=environment
        )
    return {"commit": commit, **json.loads(found.stdout.strip().splitlines()[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 8192])
    parser.add_argument(
        "--baseline", default="0f6e4c1", help="git commit whose 1k analysis is the baseline ('' = skip)"
    )
    parser.add_argument("--memory-child", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--write", action="store_true", help=f"write {RESULTS.name}")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_child:
        print(json.dumps(peak_memory(args.memory_child)))
        return
    memory_run = subprocess.run(
        [sys.executable, "-m", "bench.bench_heads_context", "--threads", str(args.threads), "--memory-child", "8192"],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    memory = json.loads(memory_run.stdout.strip().splitlines()[-1])
    print(json.dumps(memory), flush=True)
    baseline = baseline_analyze(args.baseline, 1024, args.threads) if args.baseline else None
    print(json.dumps(baseline), flush=True)
    rows = bench_lengths(args.lengths, args.repeats)
    report = [
        f"## Heads at full context ({platform.processor() or platform.machine()}, {args.threads} thread(s), "
        f"load average {os.getloadavg()[0]:.1f} at the end)",
        "",
        "| tokens | bare SDPA forward (s) | heads_analyze (s) | ratio (target ≤ 2 at 8k) |",
        "|---:|---:|---:|---:|",
        *(f"| {row['tokens']:,} | {row['sdpa_s']} | {row['analyze_s']} | {row['ratio']} |" for row in rows),
        "",
        f"Peak RSS of a fresh process analysing {memory['tokens']:,} tokens (+ model view, pooled heatmap, zoom): "
        f"**{memory['peak_rss_gb']} GB** (target ≤ 4 GB); seconds {memory['seconds']}.",
    ]
    if baseline:
        report.append(
            f"\n1,024 tokens with the code of {baseline['commit']}: {baseline['analyze_s']} s "
            f"(this code: {next((row['analyze_s'] for row in rows if row['tokens'] <= 1024), 'n/a')} s)."
        )
    print("\n".join(report))
    if args.write:
        RESULTS.write_text("\n".join(report) + "\n")


if __name__ == "__main__":
    main()
