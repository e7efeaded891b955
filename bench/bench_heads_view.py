"""Heads panel speed and size, measured side by side in one run on the embedded SmolLM2 (CPU by default).

1. Bytes sent to the browser for the full model view at 256 tokens: HeadLab's model view (PNG as Gradio encodes it,
   plus its layout JSON) vs bertviz's ``model_view(html_action='return')`` for the same model and text.
   Target: ours ≤ 1/100 of bertviz.
2. ``heads_analyze`` at 1024 tokens (model loaded, text not seen before). Target: ≤ 10 s.
3. SmolLM2 load: cold (GGUF dequantized, safetensors cache written to a fresh folder) vs warm (from that cache).

    python -m bench.bench_heads_view [--threads N] [--repeats 3] [--write]   # --write: bench/RESULTS_heads.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from gradio.processing_utils import encode_pil_to_bytes

from backends.heads.attention import CaptureLayers, run_with_attention
from backends.heads.models import LanguageModel, load_language_model
from backends.heads.service import HeadsService

RESULTS = Path(__file__).with_name("RESULTS_heads.md")
PASSAGE = (
    "Attention heads are the small units inside a transformer that decide, for every token, which earlier tokens "
    "to read from. Some heads look at the previous token, some copy what followed an earlier copy of the current "
    "token, and many park their attention on the first token when they have nothing better to do. "
)


def text_of(lm: LanguageModel, n_tokens: int, variant: int = 0) -> str:
    """A natural-looking text of exactly ``n_tokens`` SmolLM2 tokens (``variant`` makes it unique)."""
    source = f"Draft {variant}. " + PASSAGE * (n_tokens // 30 + 2)
    ids = lm.tokenizer(source)["input_ids"][:n_tokens]
    return lm.tokenizer.decode(ids)


def timed(run):
    """(result, wall seconds) of ``run()``."""
    start = time.perf_counter()
    result = run()
    return result, time.perf_counter() - start


def cpu_timed(run):
    """(result, wall seconds, CPU seconds of this process) of ``run()``: on a shared machine the CPU time is what
    the work costs, the wall time what it took while other jobs competed for the cores."""
    cpu = time.process_time()
    result, wall = timed(run)
    return result, wall, time.process_time() - cpu


def bench_load() -> dict:
    """Cold and warm SmolLM2 loads into a fresh cache folder."""
    previous = os.environ.get("HEADLAB_CACHE_DIR")
    with tempfile.TemporaryDirectory() as folder:
        os.environ["HEADLAB_CACHE_DIR"] = folder
        try:
            _, cold = timed(lambda: load_language_model("smollm2"))
            _, warm = timed(lambda: load_language_model("smollm2"))
        finally:
            if previous is None:
                del os.environ["HEADLAB_CACHE_DIR"]
            else:
                os.environ["HEADLAB_CACHE_DIR"] = previous
    return {"cold_s": cold, "warm_s": warm}


def bench_bytes(service: HeadsService, lm: LanguageModel, n_tokens: int) -> dict:
    """Model-view bytes and time, ours vs bertviz, for one text of ``n_tokens`` tokens."""
    from bertviz import model_view

    text = text_of(lm, n_tokens)

    def ours() -> tuple[int, int]:
        info = service.heads_analyze("", text)
        image, layout = service.heads_model_view("", text, 0)
        return len(encode_pil_to_bytes(image, "png")) + len(json.dumps(layout)), info["n_tokens"]

    (our_bytes, tokens), our_seconds = timed(ours)

    def theirs() -> int:
        capture = CaptureLayers()
        run = run_with_attention(lm, text, [capture])
        attention = [capture.maps[layer][None] for layer in range(lm.n_layers)]
        page = model_view(attention=attention, tokens=run.tokenized.tokens, html_action="return").data
        return len(page.encode("utf-8"))

    bertviz_bytes, bertviz_seconds = timed(theirs)
    return {
        "tokens": tokens,
        "ours_bytes": our_bytes,
        "ours_s": our_seconds,
        "bertviz_bytes": bertviz_bytes,
        "bertviz_s": bertviz_seconds,
        "ratio": our_bytes / bertviz_bytes,
    }


def bench_analyze(service: HeadsService, lm: LanguageModel, n_tokens: int, repeats: int) -> dict:
    """``heads_analyze`` wall time on ``repeats`` texts of ``n_tokens`` tokens not analysed before."""
    seconds, cpu_seconds, tokens = [], [], 0
    for variant in range(1, repeats + 1):
        text = text_of(lm, n_tokens, variant)
        result, wall, cpu = cpu_timed(lambda text=text: service.heads_analyze("", text))
        seconds.append(wall)
        cpu_seconds.append(cpu)
        tokens = result["n_tokens"]
    return {
        "tokens": tokens,
        "median_s": statistics.median(seconds),
        "min_s": min(seconds),
        "median_cpu_s": statistics.median(cpu_seconds),
        "all_s": seconds,
    }


def markdown(load: dict, size: dict, analyze: dict, threads: int) -> str:
    """The results as the markdown section of RESULTS_heads.md."""
    load_average = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    mib = 1024 * 1024
    rows = [
        (
            f"bytes to the browser, full model view, {size['tokens']} tokens",
            f"{size['ours_bytes'] / 1024:.0f} KiB (PNG + layout JSON)",
            f"bertviz model_view: {size['bertviz_bytes'] / mib:.1f} MiB",
            f"1/{1 / size['ratio']:.0f} (target ≤ 1/100)",
        ),
        (
            "time for that view (forward pass + figure)",
            f"{size['ours_s']:.1f} s",
            f"bertviz: {size['bertviz_s']:.1f} s",
            "",
        ),
        (
            f"`heads_analyze` at {analyze['tokens']} tokens, wall time",
            f"median {analyze['median_s']:.1f} s (min {analyze['min_s']:.1f} s)",
            "",
            "target ≤ 10 s",
        ),
        (f"`heads_analyze` at {analyze['tokens']} tokens, CPU time", f"median {analyze['median_cpu_s']:.1f} s", "", ""),
        ("SmolLM2 load, cold (GGUF dequantized + cache written)", f"{load['cold_s']:.1f} s", "", ""),
        (
            "SmolLM2 load, warm (safetensors cache)",
            f"{load['warm_s']:.1f} s",
            "",
            f"{load['cold_s'] / load['warm_s']:.0f}×",
        ),
    ]
    table = "\n".join(f"| {' | '.join(row)} |" for row in rows)
    verdict = (
        f"`heads_analyze` at {analyze['tokens']} tokens met the 10 s target in wall time."
        if analyze["median_s"] <= 10
        else f"`heads_analyze` at {analyze['tokens']} tokens missed the 10 s wall-time target at this load; its CPU "
        f"time was {analyze['median_cpu_s']:.1f} s, so it fits when a core is free for it."
    )
    return f"""## Heads panel (bench/bench_heads_view.py)

Measured {time.strftime("%Y-%m-%d")} on {platform.machine()}, {os.cpu_count()} cores, torch threads {threads}, CPU
float32; load average at the end {load_average}. The machine is shared with other jobs: wall times grow with the
load, CPU times (this process's) show what the work itself costs.

| what | HeadLab | reference | ratio / target |
| --- | --- | --- | --- |
{table}

{verdict}

Reproduce: `python -m bench.bench_heads_view --write`.
"""


def main() -> None:
    """Run the three measurements and print (and optionally write) the results."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--view-tokens", type=int, default=256)
    parser.add_argument("--analyze-tokens", type=int, default=1024)
    parser.add_argument("--write", action="store_true", help=f"write the markdown to {RESULTS}")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load = bench_load()
    print("load:", json.dumps(load))
    service = HeadsService()
    lm = service.model("")
    size = bench_bytes(service, lm, args.view_tokens)
    print("model view:", json.dumps(size))
    analyze = bench_analyze(service, lm, args.analyze_tokens, args.repeats)
    print("analyze:", json.dumps(analyze))
    report = markdown(load, size, analyze, torch.get_num_threads())
    print(report)
    if args.write:
        RESULTS.write_text(report)


if __name__ == "__main__":
    main()
