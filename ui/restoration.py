"""The Restoration tab: an image and a free-text instruction → the restored image, next to a classical baseline.

Talks to the restoration backend only through its client (``understand``, ``restore_compare``). What the
instruction was understood as is shown while typing, before restoring; an empty instruction gets a suggestion.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gradio as gr

from backends.core.client import Client
from backends.core.config import PanelConfig
from ui.common import call_backend, explanation, model_choices, queue_settings

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "assets" / "restoration" / "examples"

INTRO = """### Restoration: tell one network what to fix
Upload a photo (or pick an example), type what is wrong with it — *"please remove the rain"*, *"it's too foggy"*,
*"the picture is grainy"* — and restore. Before restoring, the panel shows which degradation (**noise**, **haze**,
**rain** or **none**) your sentence was understood as. Give the clean original as *reference* to get PSNR/SSIM."""

EXPLANATION = """
**The embedded model** follows TextPromptIR ("Textual Prompt Guided Image Restoration"): one U-Net of Restormer
blocks restores noise, haze and rain, and *the sentence decides which*. The instruction goes through the frozen
sentence encoder all-MiniLM-L6-v2 (mean-pooled 384-d embedding) and a small MLP to a prompt vector. Every block of
the U-Net injects it twice, before its attention and before its feed-forward branch: the prompt vector is projected
to the block's channels, gated per channel by ECA attention of the image features (so the image decides which
channels the text may steer), and turned into a scale and a shift of the normalised features.

**MDTA** (multi-Dconv head transposed attention) attends *across channels* instead of pixels: queries and keys are
L2-normalised over all pixels and each head builds a C×C attention map, so the cost grows linearly with image size.
**GDFN** is a gated feed-forward network: GELU(x₁)·x₂ after a depthwise 3×3 convolution.

**Understanding** is a separate small classifier on the same sentence embedding (noise / haze / rain / none), trained
on template sentences and tested on paraphrases it never saw. With an empty instruction the panel guesses from
simple image measurements (noise level, dark channel, thin bright streaks) and suggests a sentence.

**Steering by the nearest training instruction.** The U-Net was trained on about 290 instructions per task, and its
answer to a sentence embedding far from all of them is unreliable: "Defog this photo please", understood as haze with
full confidence, once left the haze in. So the network is steered by the training instruction of the understood task
whose embedding is closest to yours (shown under the understanding); TextPromptIR gets the same robustness by
fine-tuning its BERT encoder as a degradation classifier.

**Training** (by HeadLab, seeded): natural sample photos shipped in scikit-image, scikit-learn and matplotlib and in
the Debian packages opencv-doc and mate-backgrounds (whole images held out for the examples and the evaluation),
random crops degraded on the fly with Gaussian noise
(σ = 15, 25, 50), haze from the atmospheric scattering model I = J·t + A·(1 − t), t = exp(−β·depth) with a depth
proxy, and synthetic rain streaks; L1 loss, AdamW, cosine schedule.

**Classical baselines**, shown side by side: non-local means for noise (σ estimated from the image), the dark
channel prior for haze, and a guided-filter low-pass with bright streaks clipped for rain.

**A wrong instruction** (e.g. "remove the haze" on a rainy photo) makes the model remove the wrong thing, or little —
try the fifth example. **Large images** are restored in overlapping 512-px tiles blended with smooth weights, so no
seams show and memory stays bounded; images above 2048 px are downscaled first.

**Hub model** `marcosv/InstructIR` (InstructIR, NAFNet-based, 7 degradations) loads by its id when the hub is
reachable; its own degradation head gives the understood degradation.
"""


def _examples() -> list[list[Any]]:
    listing = EXAMPLES_DIR / "examples.json"
    if not listing.exists():
        return []
    return [[str(EXAMPLES_DIR / e["input"]), e["prompt"], str(EXAMPLES_DIR / e["reference"])]
            for e in json.loads(listing.read_text())]


def understanding_text(answer: dict) -> str:
    """Markdown for the understood degradation (or the suggestion for an empty instruction)."""
    if not answer.get("prompt"):
        return (f"**No instruction yet.** Try: *{answer['suggestion']}* — {answer['reason']}.")
    others = " · ".join(f"{task} {p:.0%}" for task, p in answer["probabilities"].items())
    notes = "".join(f"\n\n⚠️ {note}" for note in answer.get("notes", []))
    steering = (f"\n\nSteers the network as the training instruction *“{answer['steered_by']}”*"
                if answer.get("steered_by") else "")
    return f"**Understood as: {answer['degradation']}** ({answer['confidence']:.0%}) — {others}{steering}{notes}"


def metrics_table(summary: dict) -> str:
    """Markdown table of PSNR/SSIM and time for input, model and baseline."""
    baseline = summary["baseline"]
    rows = [("Input", summary.get("input_psnr"), summary.get("input_ssim"), None),
            (f"Model ({summary['model']})", summary.get("psnr"), summary.get("ssim"), summary["seconds"]),
            (f"Baseline: {baseline['name']}", baseline.get("psnr"), baseline.get("ssim"), baseline["seconds"])]

    def cell(value: float | None, digits: int) -> str:
        return "—" if value is None else f"{value:.{digits}f}"

    lines = ["| | PSNR (dB) | SSIM | time (s) |", "|---|---|---|---|"]
    lines += [f"| {name} | {cell(psnr, 2)} | {cell(ssim, 3)} | {cell(seconds, 2)} |"
              for name, psnr, ssim, seconds in rows]
    if summary.get("psnr") is None:
        lines.append("\nGive the clean reference image to see PSNR/SSIM.")
    notes = "".join(f"\n\n⚠️ {note}" for note in summary.get("notes", []))
    return "\n".join(lines) + f"\n\n**{summary['degradation']}** ({summary['confidence']:.0%}), " \
        f"{summary['tiles']} tile(s){notes}"


def build(client: Client, config: PanelConfig) -> None:
    """Build the tab's components and wire them to the backend."""
    queue = queue_settings(config)
    gr.Markdown(INTRO)
    suggestion = gr.State("")
    with gr.Row():
        with gr.Column(scale=1):
            image = gr.Image(type="pil", image_mode=None, label="Degraded image", sources=["upload", "clipboard"])
            prompt = gr.Textbox(label="Instruction", placeholder="e.g. please remove the rain streaks")
            understood = gr.Markdown("**No instruction yet.**", elem_id="restoration-understood")
            with gr.Row():
                use_suggestion = gr.Button("Use the suggestion", size="sm")
                run = gr.Button("Restore", variant="primary")
            model = model_choices(config)
            with gr.Accordion("Clean reference (optional, for PSNR/SSIM)", open=False):
                reference = gr.Image(type="pil", image_mode=None, label="Clean reference", sources=["upload"])
            gr.Examples(_examples(), [image, prompt, reference],
                        label="Examples (held-out photos; the 5th has a wrong instruction, the 6th none)")
        with gr.Column(scale=1):
            comparison = gr.ImageSlider(type="pil", label="Before / after (drag the handle)", interactive=False,
                                        elem_id="restoration-comparison")
            baseline = gr.Image(type="pil", label="Classical baseline", interactive=False, format="png",
                                elem_id="restoration-baseline")
            metrics = gr.Markdown(elem_id="restoration-metrics")
            details = gr.JSON(label="API answer", elem_id="restoration-details")
    explanation("How it works", EXPLANATION)

    def understand(img, text, model_id) -> tuple[str, str]:
        answer = call_backend(client, "understand", img, text or "", model_id or "")
        return understanding_text(answer), answer.get("suggestion", "")

    for trigger in (prompt.change, image.change):
        trigger(understand, [image, prompt, model], [understood, suggestion], trigger_mode="always_last",
                show_progress="hidden", **queue)

    use_suggestion.click(lambda text: text or gr.skip(), suggestion, prompt, queue=False)
    image.upload(lambda: (None, None, "", None), None, [comparison, baseline, metrics, details], queue=False)

    def restore(img, text, model_id, ref) -> tuple:
        shown, restored, classical, summary = call_backend(client, "restore_compare", img, text or "",
                                                           model_id or "", ref)
        return (shown, restored), classical, metrics_table(summary), summary

    for trigger in (run.click, prompt.submit):
        trigger(restore, [image, prompt, model, reference], [comparison, baseline, metrics, details], **queue)
