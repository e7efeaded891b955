"""The Atlas tab: the four embedded models' head atlases side by side — how task-specific their heads are, the top
heads of every task, and a way into each panel to check them.

Talks to every panel's service through its client (``<panel>_head_effects``).
"""

from __future__ import annotations

import io

import gradio as gr
import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from backends.core.client import Client
from backends.core.service import ServiceError
from ui.atlas_view import ABLATION_TEXT, harm_relative, most_specific
from ui.common import explanation

INTRO = """### One lab of heads: which heads of each model serve which task?
Every panel's model is small and fully ours, so each head can be switched off alone and the panel's own task
re-measured: **Heads** (SmolLM2: loss on induction, retrieval, successor and factual targets), **Guidance** (the
Fashion DiT: class confidence, sharpness, contrast…), **Referring segmentation** (the segmenter's fusion heads: mIoU
per query kind) and **Restoration** (the restorer's channel-attention heads: PSNR per degradation). Load the atlases
to compare how specialised the four models' heads are; open a panel to check a head on your own input."""
HISTOGRAM_BINS = np.linspace(0.0, 1.0, 11)
#: dissociating task pairs listed per model
SHOWN_PAIRS = 6
#: what each panel's atlas measures, one line each
MEASURES = {
    "heads": "Δ loss (nats/token) on each task's target tokens, one head mean-ablated",
    "guidance": "Δ objective of samples with one head switched to the identity (u = 1)",
    "segmentation": "Δ mIoU per query kind with one fusion head zero-ablated",
    "restoration": "Δ PSNR (dB) per degradation with one channel-attention head zero-ablated",
}


def specificity_figure(atlases: dict[str, dict]) -> Image.Image:
    """Small multiples: each model's distribution of head task-specificity (share of its heads per bin)."""
    figure = Figure(figsize=(2.6 * max(1, len(atlases)), 2.4), dpi=100)
    axes = figure.subplots(1, max(1, len(atlases)), sharey=True, squeeze=False)[0]
    for axis, (panel, atlas) in zip(axes, atlases.items(), strict=False):
        values = [value for row in atlas["specificity"] for value in row if value is not None]
        weights = np.full(len(values), 1.0 / max(1, len(values)))
        axis.hist(values, bins=HISTOGRAM_BINS, weights=weights, color="#c0392b", edgecolor="white")
        axis.set_title(f"{panel}: {len(values)} heads", fontsize=9)
        axis.set_xlabel("task specificity", fontsize=8)
        axis.axvline(float(np.median(values)) if values else 0.0, color="black", linestyle=":", linewidth=1)
        axis.tick_params(labelsize=7)
    axes[0].set_ylabel("share of heads", fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def model_markdown(panel: str, atlas: dict) -> str:
    """One model's card: what was measured, its stack, and per task the top heads with their effect."""
    layer_names = atlas.get("layer_names")
    lines = [f"#### {panel.capitalize()} · `{atlas['model']}`",
             f"{atlas['stack']}: {atlas['layers']} layers × up to {atlas['heads']} heads. "
             f"{MEASURES.get(panel, '')}.", "", "| task | top heads | worst effect |", "|---|---|---|"]
    for task in atlas["tasks"]:
        top = atlas["top"][task]
        if not top:
            lines.append(f"| {task} | no head hurts it alone | — |")
            continue
        layer, head = (int(part) for part in top[0].split("."))
        worst = atlas["effects"][task][layer][head]
        first = f"{top[0]} ({layer_names[layer]})" if layer_names else top[0]
        lines.append(f"| {task} | {', '.join([first, *top[1:3]])} | {worst:+.4f} {atlas['metric'][task]} |")
    specific = most_specific(atlas, 3)
    values = [value for row in atlas["specificity"] for value in row if value is not None]
    lines += ["", f"Median specificity {np.median(values):.2f}; most specific: "
              + ", ".join(f"{name} ({value:.2f}, {task})" for name, value, task in specific) + "."]
    return "\n".join(lines)


def dissociation_markdown(atlases: dict[str, dict]) -> str:
    """Per model, whether its two most different tasks doubly dissociate: each task's top head hurts that task
    more (in % of its score) than it hurts the other task."""
    lines = ["**Double dissociations** (top head of A hurts A more than B, and the top head of B hurts B more than A; "
             "relative effects):", ""]
    for panel, atlas in atlases.items():
        found = []
        tasks = atlas["tasks"]
        for index, first in enumerate(tasks):
            for second in tasks[index + 1:]:
                harm_a, harm_b = harm_relative(atlas, first), harm_relative(atlas, second)
                if not atlas["top"][first] or not atlas["top"][second]:
                    continue
                head_a = tuple(int(part) for part in atlas["top"][first][0].split("."))
                head_b = tuple(int(part) for part in atlas["top"][second][0].split("."))
                if head_a != head_b and harm_a[head_a] > harm_b[head_a] and harm_b[head_b] > harm_a[head_b]:
                    found.append(f"{first} / {second}")
        shown = ", ".join(found[:SHOWN_PAIRS]) + (f" and {len(found) - SHOWN_PAIRS} more pairs"
                                                  if len(found) > SHOWN_PAIRS else "")
        lines.append(f"- **{panel}**: " + (shown if found else "none among its tasks' top heads"))
    return "\n".join(lines)


def build(clients: dict[str, Client], tabs: gr.Tabs) -> None:
    """The Atlas tab's contents (called inside the tab by app.py); ``tabs`` is the app's panel tabs."""
    gr.Markdown(INTRO)
    explanation("What ablation measures, and what it does not", ABLATION_TEXT)
    load = gr.Button("Load the four head atlases", variant="primary", elem_id="atlas-load")
    status = gr.Markdown(elem_id="atlas-status")
    gr.Markdown("**Task specificity of every head, per model** (dotted: the median)")
    distributions = gr.Image(show_label=False, type="pil", interactive=False, elem_id="atlas-specificity")
    dissociations = gr.Markdown(elem_id="atlas-dissociations")
    cards, links = [], []
    with gr.Row():
        for panel in clients:
            with gr.Column(min_width=260):
                cards.append(gr.Markdown(elem_id=f"atlas-card-{panel}"))
                links.append((panel, gr.Button(f"Open the {panel} panel", size="sm", elem_id=f"atlas-open-{panel}")))

    def fetch() -> tuple:
        atlases, problems = {}, []
        for panel, client in clients.items():
            try:
                atlases[panel] = client.call(f"{panel}_head_effects", "", "")
            except ServiceError as error:
                problems.append(f"⚠️ **{panel}**: {error}")
        cards_text = [model_markdown(panel, atlases[panel]) if panel in atlases else "" for panel in clients]
        summary = "\n\n".join(problems) or f"Loaded {len(atlases)} atlases."
        figure = specificity_figure(atlases) if atlases else None
        return summary, figure, dissociation_markdown(atlases) if atlases else "", *cards_text

    load.click(fetch, None, [status, distributions, dissociations, *cards], concurrency_id="atlas")
    for panel, button in links:
        button.click(lambda name=panel: gr.Tabs(selected=name), None, tabs, queue=False)
