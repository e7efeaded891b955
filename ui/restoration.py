"""The Restoration tab: an image and a free-text instruction → the restored image, next to a classical baseline.

Talks to the restoration backend only through its client (``understand``, ``restore_compare``,
``restoration_region``, ``compare_cbm3d`` with ``restoration_progress``/``restoration_cancel``). What the instruction
was understood as is shown while typing, before restoring; an empty or unclear instruction gets a suggestion. One
region (a box, words the segmentation panel resolves, or a mask image) can be restored alone.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import gradio as gr

from backends.core.client import Client
from backends.core.config import PanelConfig
from backends.core.service import ServiceError
from ui.atlas_view import atlas_section, cell_summary, clicked_head, show_atlas
from ui.common import call_backend, explanation, model_choices, queue_settings

POLL_SECONDS = 0.5
#: the default that tells Gradio to hand a handler its progress tracker
PROGRESS = gr.Progress()

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "assets" / "restoration" / "examples"

INTRO = """### Restoration: tell one network what to fix
Upload a photo (or pick an example), type what is wrong with it — *"please remove the rain"*, *"it's too foggy"*,
*"the picture is grainy"* — and restore. Before restoring, the panel shows which degradation (**noise**, **haze**,
**rain** or **none**) your sentence was understood as. Give the clean original as *reference* to get PSNR/SSIM, and
a *region* (a box, words such as *"the bag"*, or a mask) to restore only there."""

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
channel prior for haze, and a guided-filter low-pass with bright streaks clipped for rain. The strongest classical
denoiser, **CBM3D** (block matching and 3-D collaborative filtering in an opponent colour space), runs on request
("Compare with CBM3D"): it takes about 16 s for a 512² image on one CPU core, the network about 1 s.

**One region**: a box `[x0, y0, x1, y1]`, a few words (resolved by the segmentation panel's model, e.g. *the bag*)
or a mask image (white = restore) limits the restoration to that region; the restored region is blended into the
untouched input with a Gaussian-feathered edge, and PSNR/SSIM are reported inside and outside it.

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


ATLAS_WHAT = ("Each grid: how much the PSNR of one degradation (noise, haze, rain) drops when one channel-attention "
              "head of the restorer alone is zero-ablated, on fixed held-out crops (rows: the restorer's attention "
              "layers from encoder to refinement, columns: heads; grey: a narrow layer has no such head).")


def understanding_text(answer: dict) -> str:
    """Markdown for the understood degradation (or the suggestion for an empty instruction)."""
    if not answer.get("prompt"):
        return (f"**No instruction yet.** Try: *{answer['suggestion']}* — {answer['reason']}.")
    others = " · ".join(f"{task} {p:.0%}" for task, p in answer["probabilities"].items())
    notes = "".join(f"\n\n⚠️ {note}" for note in answer.get("notes", []))
    steering = (f"\n\nSteers the network as the training instruction *“{answer['steered_by']}”*"
                if answer.get("steered_by") else "")
    return f"**Understood as: {answer['degradation']}** ({answer['confidence']:.0%}) — {others}{steering}{notes}"


def _cell(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def metrics_table(summary: dict) -> str:
    """Markdown table of PSNR/SSIM and time for input, model and baseline (inside/outside the region too)."""
    baseline = summary["baseline"]
    rows = [("Input", summary, "input_", None),
            (f"Model ({summary['model']})", summary, "", summary["seconds"]),
            (f"Baseline: {baseline['name']}", baseline, "", baseline["seconds"])]
    parts = [("", "PSNR (dB) / SSIM")]
    if summary.get("region"):
        parts += [("region_", "in region"), ("outside_", "outside")]
    lines = [f"| | {' | '.join(title for _, title in parts)} | time (s) |", "|---" * (2 + len(parts)) + "|"]
    for name, source, prefix, seconds in rows:
        cells = " | ".join(f"{_cell(source.get(f'{prefix}{part}psnr'), 2)} / "
                           f"{_cell(source.get(f'{prefix}{part}ssim'), 3)}" for part, _ in parts)
        lines.append(f"| {name} | {cells} | {_cell(seconds, 2)} |")
    if summary.get("psnr") is None:
        lines.append("\nGive the clean reference image to see PSNR/SSIM.")
    region = summary.get("region")
    where = (f", region from the {region['source']} ({region['area']:.0%} of the image, feather "
             f"{region['feather_px']:g} px)" if region else "")
    notes = "".join(f"\n\n⚠️ {note}" for note in summary.get("notes", []))
    return "\n".join(lines) + f"\n\n**{summary['degradation']}** ({summary['confidence']:.0%}), " \
        f"{summary['tiles']} tile(s){where}{notes}"


def cbm3d_text(summary: dict) -> str:
    """Markdown for a CBM3D comparison: σ used, time and PSNR/SSIM (inside/outside the region too)."""
    scores = [f"{label} {summary[f'{key}psnr']:.2f} dB / SSIM {summary[f'{key}ssim']:.3f}"
              for key, label in (("", "PSNR"), ("region_", "in region"), ("outside_", "outside"))
              if f"{key}psnr" in summary]
    region = f" in the region from the {summary['region']['source']}" if summary.get("region") else ""
    notes = "".join(f"\n\n⚠️ {note}" for note in summary.get("notes", []))
    return (f"**CBM3D**{region}: σ {summary['sigma']:.1f} estimated from the image, {summary['seconds']:.1f} s"
            + (" — " + " · ".join(scores) if scores else " — give the clean reference to see PSNR/SSIM") + notes)


def _cbm3d_with_progress(client: Client, progress: gr.Progress, job: str, *args: Any) -> tuple:
    """Run ``compare_cbm3d`` in a worker thread while showing its elapsed time against the expected time."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(call_backend, client, "compare_cbm3d", *args, job)
        progress(0.0, desc="CBM3D: starting")
        while not future.done():
            try:
                state = client.call("restoration_progress", job)
            except ServiceError:
                state = {}
            if state.get("running") and state.get("expected_seconds"):
                elapsed, expected = state["elapsed_seconds"], state["expected_seconds"]
                progress(min(0.99, elapsed / expected), desc=f"CBM3D: {elapsed:.0f} s of about {expected:.0f} s")
            time.sleep(POLL_SECONDS)
        return future.result()


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
                use_suggestion = gr.Button("Use the suggestion", size="sm", interactive=False,
                                           elem_id="restoration-use-suggestion")
                run = gr.Button("Restore", variant="primary")
            model = model_choices(config)
            with gr.Accordion("Restore one region (optional)", open=False):
                region = gr.Textbox(label="Region", elem_id="restoration-region",
                                    placeholder="a box [x0, y0, x1, y1] in pixels, or what to restore, e.g. the bag",
                                    info="Words are resolved by the segmentation panel's model; press Enter to "
                                         "show the region.")
                region_mask = gr.Image(type="pil", image_mode=None, label="…or a mask image (white = restore)",
                                       sources=["upload"])
                show_region = gr.Button("Show the region", size="sm")
                region_view = gr.Image(type="pil", label="Region to restore", interactive=False, format="png",
                                       elem_id="restoration-region-view")
            with gr.Accordion("Clean reference (optional, for PSNR/SSIM)", open=False):
                reference = gr.Image(type="pil", image_mode=None, label="Clean reference", sources=["upload"])
            gr.Examples(_examples(), [image, prompt, reference],
                        label="Examples (held-out photos; the 5th has a wrong instruction, the 6th none)")
        with gr.Column(scale=1):
            comparison = gr.ImageSlider(type="pil", label="Before / after (drag the handle)", interactive=False,
                                        elem_id="restoration-comparison")
            baseline = gr.Image(type="pil", label="Fast classical baseline", interactive=False, format="png",
                                elem_id="restoration-baseline")
            metrics = gr.Markdown(elem_id="restoration-metrics")
            with gr.Row():
                compare = gr.Button("Compare with CBM3D", size="sm")
                cancel = gr.Button("Cancel", size="sm", variant="stop")
            cbm3d = gr.Image(type="pil", label="CBM3D (strongest classical denoiser, slow)", interactive=False,
                             format="png", elem_id="restoration-cbm3d")
            cbm3d_metrics = gr.Markdown(elem_id="restoration-cbm3d-metrics")
            details = gr.JSON(label="API answer", elem_id="restoration-details")
    with gr.Accordion("Which heads matter here? The head atlas", open=False, elem_id="restoration-atlas"):
        atlas = atlas_section("restoration-atlas", ATLAS_WHAT, result="Your restoration")
        before, after = atlas.before, atlas.after
    explanation("How it works", EXPLANATION)

    def understand(img, text, model_id) -> tuple:
        try:
            answer = client.call("understand", img, text or "", model_id or "")
        except ServiceError as error:  # shown here, not as a toast on every keystroke; Restore raises it once
            return f"⚠️ {error}", "", gr.update(interactive=False)
        proposed = answer.get("suggestion") or ""
        return understanding_text(answer), proposed, gr.update(interactive=bool(proposed))

    for trigger in (prompt.change, image.change):
        trigger(understand, [image, prompt, model], [understood, suggestion, use_suggestion],
                trigger_mode="always_last", show_progress="hidden", **queue)

    use_suggestion.click(lambda text: text or gr.skip(), suggestion, prompt, queue=False)
    # every result, the head atlas's before / after included, follows its inputs
    results = [comparison, baseline, metrics, details, cbm3d, cbm3d_metrics, before, after, atlas.clicked]
    for changed in (image.change, prompt.change, reference.change, region.change, region_mask.change):
        changed(lambda: (None, None, "", None, None, "", None, None, ""), None, results, queue=False,
                show_progress="hidden")
    for changed in (image.change, region.change, region_mask.change):
        changed(lambda: None, None, region_view, queue=False, show_progress="hidden")

    def restore(img, text, model_id, ref, where, mask) -> tuple:
        shown, restored, classical, summary = call_backend(client, "restore_compare", img, text or "",
                                                           model_id or "", ref, where or "", mask)
        return (shown, restored), classical, metrics_table(summary), summary

    for trigger in (run.click, prompt.submit):
        trigger(restore, [image, prompt, model, reference, region, region_mask], [comparison, baseline, metrics,
                                                                                  details], **queue)

    def draw_region(img, where, mask) -> Any:
        if img is None or (not (where or "").strip() and mask is None):
            return None
        overlay, _ = call_backend(client, "restoration_region", img, where or "", mask)
        return overlay

    for trigger in (show_region.click, region.submit, region_mask.upload):
        trigger(draw_region, [image, region, region_mask], region_view, **queue)

    def run_cbm3d(img, ref, where, mask, request: gr.Request, progress: gr.Progress = PROGRESS) -> tuple:
        denoised, summary = _cbm3d_with_progress(client, progress, request.session_hash, img, ref, where or "", mask)
        return denoised, cbm3d_text(summary)

    def cancel_cbm3d(request: gr.Request) -> None:
        if call_backend(client, "restoration_cancel", request.session_hash)["cancelled"]:
            gr.Info("Cancelling CBM3D…")

    # CBM3D gets its own queue, so that a slow comparison does not hold up restorations
    compare.click(run_cbm3d, [image, reference, region, region_mask], [cbm3d, cbm3d_metrics],
                  concurrency_id=f"{config.name}-cbm3d", concurrency_limit=1)
    cancel.click(cancel_cbm3d, None, None, queue=False)

    def fetch_atlas(model_id: str) -> tuple:
        return show_atlas(call_backend(client, "restoration_head_effects", model_id or "", ""))

    def pick_cell(found: dict | None, img, text, model_id, ref, where, mask, event: gr.SelectData) -> tuple:
        cell = clicked_head(found, event, img)
        if cell is None:
            return gr.skip(), gr.skip(), gr.skip()
        task, head = cell
        args = (img, text or "", model_id or "", ref, where or "", mask)
        restored_before, summary_before = call_backend(client, "restore", *args, "")
        restored_after, summary_after = call_backend(client, "restore", *args, head)
        scores = ""
        if summary_before.get("psnr") is not None:
            scores = (f" PSNR against your reference: {summary_before['psnr']:.2f} → {summary_after['psnr']:.2f} dB "
                      f"with {head} off.")
        return restored_before, restored_after, f"{cell_summary(found, task, head)}{scores}"

    model.change(lambda: (None, None, "", "", None, None), None, [*atlas.outputs, before, after], queue=False)
    atlas.compute.click(fetch_atlas, model, atlas.outputs, **queue)
    atlas.image.select(pick_cell, [atlas.state, image, prompt, model, reference, region, region_mask],
                       [before, after, atlas.clicked], **queue)
