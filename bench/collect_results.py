"""Assemble BENCHMARKS.md from the sections the bench scripts write (bench/RESULTS_*.md).

    python -m bench.collect_results
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ORDER = (
    "frontend", "heads", "heads_context", "heads_needles", "heads_scores", "guidance", "guidance_quality",
    "guidance_atlas", "head_effects", "segmentation", "segmentation_prompts", "restoration", "load", "ray",
)
HEADER = """# HeadLab benchmarks

Every number here was measured by a script in `bench/` (each section names its command), with the compared
variants run side by side in one run on the same machine: the 2-core CPU of HeadLab's development machines unless a
section says otherwise. Absolute seconds depend on the machine's load (noted per section); ratios come from
interleaved runs. Quality numbers of the embedded models come from their held-out evaluations (never trained on).
This file is assembled by `python -m bench.collect_results` from `bench/RESULTS_*.md`.
"""


def main() -> None:
    """Write BENCHMARKS.md."""
    sections = [ROOT / "bench" / f"RESULTS_{name}.md" for name in ORDER]
    body = "\n\n".join(path.read_text().strip() for path in sections if path.exists())
    (ROOT / "BENCHMARKS.md").write_text(f"{HEADER}\n{body}\n")


if __name__ == "__main__":
    main()
