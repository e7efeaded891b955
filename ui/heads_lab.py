"""The Heads panel's lab: head-type scores, the head-ablation lab and the generation stepper.

Talks to the backend only through the client (``heads_scores``, ``heads_ablate``, ``heads_generate``); draws its
layer × head grids itself from the returned JSON as plain images, so a click maps straight to a (layer, head).
"""

from __future__ import annotations

from typing import Any

import gradio as gr
import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw

from backends.core.client import Client
from backends.core.config import PanelConfig
from backends.core.heads import parse_heads
from backends.core.service import ServiceError
from ui.atlas_view import atlas_cell, atlas_section, cell_summary, show_atlas
from ui.common import call_backend, model_choices, queue_settings

#: the scores of ``heads_scores`` (API contract) with their labels, in display order
SCORE_LABELS = {
    "previous_token": "previous token",
    "duplicate": "duplicate token",
    "induction": "induction",
    "retrieval": "retrieval (needles)",
    "successor": "successor",
    "sink": "attention sink",
    "waad": "local (WAAD)",
    "fai": "global (FAI)",
}
TEMPLATE_KEYS = ("previous_token", "duplicate", "induction")
PROBE_INPUT, TEXT_INPUT = "probe (repeated random tokens)", "your text"
MODES = {
    "zero": "zero: the head's output is 0",
    "uniform": "uniform: the head attends evenly to every visible token (Ships)",
    "mean": "mean: the head's output is its average over the text",
}
DEFAULT_SHAPE = (30, 9)
CELL_WIDTH, CELL_HEIGHT = 30, 16
LEFT, TOP = 30, 16  # room for layer / head labels
CMAP = colormaps["magma"]
LEGEND_WIDTH, LEGEND_HEIGHT = 160, 22  # the colour bar under a grid
SELECTED_OUTLINE = (0, 200, 255)
DEFAULT_TEXT = (
    "Alice met Bob at the station. Later, Alice gave Bob a small red book, and Bob thanked Alice for the book. "
    "The station was quiet; the train to the coast left at noon."
)
ATLAS_WHAT = ("Each grid: how much the loss on one task's target tokens rises when one head alone is mean-ablated, "
              "on fixed probe texts — induction (copying a repeated run of random tokens), retrieval (a pass key "
              "in filler), successor (days, months, numbers) and factual recall (capitals).")
LAB_INTRO = """Which heads do what, and what breaks without them? **Scores** name head types on documented probe
inputs (and on your text); the **ablation lab** switches chosen heads off; the **generation stepper** shows where
every head looks while the model writes. Click a cell of any grid to pick that head."""


# -- grids ---------------------------------------------------------------------------------------------------------
def grid_image(
    values: list[list[float]],
    selected: set[tuple[int, int]] = frozenset(),
    value_range: tuple[float, float] | None = None,
    legend: bool = True,
) -> Image.Image:
    """A layer × head grid (layers as rows) coloured by ``values`` over ``value_range`` (default: their min–max),
    selected heads outlined, axes labelled, with a colour bar giving the values (unless ``legend`` is False)."""
    grid = np.nan_to_num(np.asarray(values, dtype=float))
    n_layers, n_heads = grid.shape
    low, high = value_range or (grid.min(), grid.max())
    normalised = np.clip((grid - low) / (high - low), 0, 1) if high > low else np.zeros_like(grid)
    colours = (CMAP(normalised)[..., :3] * 255).astype(np.uint8)
    cells = colours.repeat(CELL_HEIGHT, axis=0).repeat(CELL_WIDTH, axis=1)
    legend_height = LEGEND_HEIGHT if legend else 0
    width = max(LEFT + n_heads * CELL_WIDTH, LEFT + LEGEND_WIDTH + 60)
    image = Image.new("RGB", (width, TOP + n_layers * CELL_HEIGHT + legend_height), "white")
    image.paste(Image.fromarray(cells), (LEFT, TOP))
    draw = ImageDraw.Draw(image)
    for head in range(n_heads):
        draw.text((LEFT + head * CELL_WIDTH + CELL_WIDTH // 2 - 3, 2), str(head), fill="black")
    for layer in range(n_layers):
        draw.text((4, TOP + layer * CELL_HEIGHT + 2), str(layer), fill="black")
    for layer, head in selected:
        if layer < n_layers and head < n_heads:
            x, y = LEFT + head * CELL_WIDTH, TOP + layer * CELL_HEIGHT
            draw.rectangle((x, y, x + CELL_WIDTH - 1, y + CELL_HEIGHT - 1), outline=SELECTED_OUTLINE, width=2)
    if legend:
        _legend(image, draw, TOP + n_layers * CELL_HEIGHT + 6, float(low), float(high))
    return image


def _legend(image: Image.Image, draw: ImageDraw.ImageDraw, top: int, low: float, high: float) -> None:
    """A colour bar under the grid, labelled with the values its ends stand for."""
    ramp = (CMAP(np.linspace(0, 1, LEGEND_WIDTH))[:, :3] * 255).astype(np.uint8)
    image.paste(Image.fromarray(np.repeat(ramp[None], 10, axis=0)), (LEFT, top))
    draw.text((4, top), f"{low:.3g}", fill="black")
    draw.text((LEFT + LEGEND_WIDTH + 4, top), f"{high:.3g}", fill="black")


def grid_view(caption: str, value: Image.Image | None = None) -> gr.Image:
    """A caption and a clickable, non-editable grid image (no overlaid label hiding the head numbers)."""
    gr.Markdown(caption)
    return gr.Image(value, show_label=False, type="pil", interactive=False)


def selection_image(chosen: str, shape: tuple[int, int]) -> Image.Image:
    """The ablation grid: every head of a ``shape`` = (layers, heads) model, the chosen ones bright and outlined."""
    marked = parse_selection(chosen, shape)
    n_layers, n_heads = shape
    values = [[1.0 if (layer, head) in marked else 0.45 for head in range(n_heads)] for layer in range(n_layers)]
    return grid_image(values, marked, value_range=(0.0, 1.0), legend=False)


def cell_at(x: float, y: float, n_layers: int, n_heads: int) -> tuple[int, int] | None:
    """The (layer, head) under pixel (x, y) of a :func:`grid_image`, or None outside the cells."""
    layer, head = int((y - TOP) // CELL_HEIGHT), int((x - LEFT) // CELL_WIDTH)
    return (layer, head) if 0 <= layer < n_layers and 0 <= head < n_heads and x >= LEFT and y >= TOP else None


def parse_selection(spec: str, shape: tuple[int, int]) -> set[tuple[int, int]]:
    """The heads a head list names in a ``shape`` = (layers, heads) model; none while the list is malformed
    (the backend's answer says what is wrong)."""
    try:
        return {tuple(head) for head in parse_heads(spec, *shape)}
    except ServiceError:
        return set()


def toggle_head(spec: str, layer: int, head: int) -> str:
    """``spec`` with ``layer.head`` added, or removed when it is already there."""
    items = [item for item in spec.replace(",", " ").replace(";", " ").split() if item]
    name = f"{layer}.{head}"
    return ", ".join([item for item in items if item != name] if name in items else [*items, name])


def ranked(values: list[list[float]], k: int = 10) -> list[list[Any]]:
    """The top ``k`` heads as table rows: rank, ``layer.head``, score."""
    cells = [(value, layer, head) for layer, row in enumerate(values) for head, value in enumerate(row)]
    cells.sort(key=lambda cell: -(cell[0] or 0))
    return [[rank + 1, f"{layer}.{head}", round(value or 0, 4)] for rank, (value, layer, head) in enumerate(cells[:k])]


# -- views of the backend's JSON ---------------------------------------------------------------------------------------
def score_values(result: dict, key: str, source: str) -> list[list[float]]:
    """The grid of score ``key``: the template scores come from the probe or from the user's text."""
    if key in TEMPLATE_KEYS and source == TEXT_INPUT:
        return result["text_templates"][key]
    return result["scores"][key]


def score_explanation(result: dict, key: str, source: str) -> str:
    """The score's paragraph: title, formula, paper, what it measures, and on which input it was computed."""
    info = result["explanations"][key]
    text = f"### {info['title']}\n`{info['formula']}`\n\n{info['text']}\n\n*Paper:* {info['paper']}"
    if key in TEMPLATE_KEYS:
        text += f"\n\n*Computed on:* {source}."
    if key in result.get("unavailable", {}):
        text += f"\n\n⚠️ Not available for this model: {result['unavailable'][key]}"
    if key == "fai":
        text += "\n\nThe anchor token of each head is listed in the JSON details (`fai_anchor`, a token position)."
    return text


def razor_markdown(result: dict) -> str:
    """RazorAttention's retrieval/streaming split per KV head."""
    razor = result["razor"]
    kept = ", ".join(razor["retrieval_kv_heads"]) or "none"
    return (
        "**RazorAttention** (echo = duplicate score, induction score; each the max over the "
        f"{razor['heads_per_kv_head']} query heads sharing a KV head). Retrieval KV heads (keep the full cache): "
        f"**{kept}**. Every other KV head is a streaming head: 4 sink tokens + a 256-token local window suffice."
    )


def ablation_markdown(report: dict) -> str:
    """The headline numbers of an ablation."""
    influence = report["attention_influence"]
    heads = ", ".join(report["heads"]) or "none"
    return (
        f"**Ablated ({report['mode']}):** {heads}\n\n"
        f"| | before | after |\n|---|---|---|\n"
        f"| loss on the text (nats/token) | {report['loss_before']:.4f} | {report['loss_after']:.4f} |\n\n"
        f"**KL(p ‖ p_ablated)** on the next token: {report['kl']:.5f} nats\n\n"
        f"**AttentionInfluence** of the text: {influence['relative_change']:+.2%} loss when the top "
        f"{len(influence['heads'])} retrieval heads ({', '.join(influence['heads'])}) attend uniformly "
        f"({influence['loss']:.4f} → {influence['loss_masked']:.4f})."
    )


def token_table(tops: list[dict]) -> list[list[Any]]:
    """Top next tokens as table rows."""
    return [[repr(item["token"]), item["prob"]] for item in tops]


def kl_highlights(report: dict) -> list[tuple[str, float]]:
    """Each token coloured by how much the ablation changed the prediction made there (KL, scaled to [0, 1])."""
    values = report["kl_per_position"]
    peak = max(values) or 1.0
    return [(token, round(value / peak, 3)) for token, value in zip(report["tokens"], values, strict=True)]


def step_view(result: dict, step_index: int, layer: int, head: int) -> tuple[Image.Image, list, str]:
    """Generation step ``step_index`` (1-based): the grid of top-1 weights, the chosen head's attention, a caption."""
    steps = result["steps"]
    step = steps[max(0, min(step_index, len(steps)) - 1)]
    top1 = [[weights[0] for weights in row] for row in step["top_weights"]]
    image = grid_image(top1, {(layer, head)})
    visible = result["tokens"][: step["position"]]
    weights = dict(zip(step["top_positions"][layer][head], step["top_weights"][layer][head], strict=True))
    # a line break is shown as ↵ and kept, so the text keeps its lines
    highlighted = [(token.replace("\n", "↵\n"), weights.get(position)) for position, token in enumerate(visible)]
    target = step["top_positions"][layer][head][0]
    caption = (
        f"Step {step_index}: the model writes **{step['token']!r}** (query = {visible[-1]!r}). "
        f"Head **{layer}.{head}** looks most at position {target} {visible[target]!r} "
        f"(weight {step['top_weights'][layer][head][0]:.3f}). The grid shows every head's largest weight."
    )
    return image, highlighted, caption


# -- the lab ---------------------------------------------------------------------------------------------------------
def build_heads_lab(
    client: Client, config: PanelConfig, model: gr.Dropdown | None = None, text: gr.Textbox | None = None
) -> None:
    """Build the lab inside the current Blocks context; reuse the panel's ``model``/``text`` inputs when given."""
    queue = queue_settings(config)
    gr.Markdown(LAB_INTRO)
    if model is None or text is None:
        with gr.Row():
            model = model_choices(config)
            text = gr.Textbox(DEFAULT_TEXT, label="Text", lines=3, scale=3)
    heads = gr.Textbox("", label="Heads to ablate", info="layer.head list, e.g. 18.6, 17.3 — or click grid cells")
    with gr.Tabs():
        with gr.Tab("Head-type scores"):
            _scores_tab(client, queue, model, text, heads)
        with gr.Tab("Ablation lab"):
            _ablation_tab(client, queue, model, text, heads)
        with gr.Tab("Generation stepper"):
            _generation_tab(client, queue, model, text)
        with gr.Tab("Which heads matter here?", elem_id="heads-atlas-tab"):
            _atlas_tab(client, queue, model, text)


def _scores_tab(client: Client, queue: dict, model: gr.Dropdown, text: gr.Textbox, heads: gr.Textbox) -> None:
    result = gr.State(None)
    with gr.Row():
        compute = gr.Button("Compute head-type scores", variant="primary")
        score = gr.Radio([(label, key) for key, label in SCORE_LABELS.items()], value="induction", label="Score")
        source = gr.Radio([PROBE_INPUT, TEXT_INPUT], value=PROBE_INPUT, label="Templates computed on")
    with gr.Row():
        with gr.Column():
            grid = grid_view("**Layer (rows) × head (columns)**: click a cell to pick that head for ablation")
        with gr.Column():
            top = gr.Dataframe(headers=["rank", "head", "score"], label="Top heads", interactive=False)
            clicked = gr.Markdown()
    explanation = gr.Markdown()
    with gr.Accordion("Streaming vs retrieval heads (RazorAttention, per KV head)", open=False):
        razor_text = gr.Markdown()
        razor_grid = grid_view("Induction score per KV head (layer × KV head)")
    with gr.Accordion("Probe inputs and details (JSON)", open=False):
        details = gr.JSON()

    def fetch(model_id: str, user_text: str) -> dict:
        return call_backend(client, "heads_scores", model_id or "", user_text)

    def show(found: dict | None, key: str, input_source: str, chosen: str):
        if not found:
            return None, [], "", "", None, None
        values = score_values(found, key, input_source)
        return (
            grid_image(values, parse_selection(chosen, (len(values), len(values[0])))),
            ranked(values),
            score_explanation(found, key, input_source),
            razor_markdown(found),
            grid_image(found["razor"]["induction"]),
            {"fai_anchor": found["fai_anchor"], **found["details"]},
        )

    def pick(found: dict | None, key: str, input_source: str, chosen: str, event: gr.SelectData):
        if not found:
            return chosen, ""
        cell = cell_at(event.index[0], event.index[1], found["n_layers"], found["n_heads"])
        if cell is None:
            return chosen, ""
        value = score_values(found, key, input_source)[cell[0]][cell[1]]
        return toggle_head(chosen, *cell), f"Head **{cell[0]}.{cell[1]}**: {key} = {value}"

    views = [grid, top, explanation, razor_text, razor_grid, details]
    for changed in (model.change, text.change):  # scores of another model or text never stay on screen
        changed(lambda: (None, None, [], "", "", None, None, ""), None, [result, *views, clicked], queue=False)
    compute.click(fetch, [model, text], result, **queue).then(show, [result, score, source, heads], views)
    for control in (score, source, heads):
        control.change(show, [result, score, source, heads], views)
    grid.select(pick, [result, score, source, heads], [heads, clicked])


def _ablation_tab(client: Client, queue: dict, model: gr.Dropdown, text: gr.Textbox, heads: gr.Textbox) -> None:
    with gr.Row():
        mode = gr.Radio([(label, key) for key, label in MODES.items()], value="uniform", label="Ablation")
        run = gr.Button("Ablate and compare", variant="primary")
    with gr.Row():
        with gr.Column():
            selection = grid_view("**Click heads to add or remove them**", selection_image("", DEFAULT_SHAPE))
        with gr.Column():
            summary = gr.Markdown()
            with gr.Row():
                top_before = gr.Dataframe(headers=["token", "p"], label="Top next tokens before", interactive=False)
                top_after = gr.Dataframe(headers=["token", "p"], label="… after", interactive=False)
            generation_before = gr.Textbox(label="Greedy continuation before", interactive=False)
            generation_after = gr.Textbox(label="Greedy continuation after", interactive=False)
    changed = gr.HighlightedText(label="Where the ablation changed the prediction (KL per position)")
    shape = gr.State(DEFAULT_SHAPE)  # the embedded SmolLM2's layers × heads until an ablation reports its model's

    def ablate(model_id: str, user_text: str, chosen: str, how: str):
        report = call_backend(client, "heads_ablate", model_id or "", user_text, chosen, how)
        return (
            ablation_markdown(report),
            token_table(report["top_before"]),
            token_table(report["top_after"]),
            report["generation_before"],
            report["generation_after"],
            kl_highlights(report),
            (report["n_layers"], report["n_heads"]),
        )

    def pick(chosen: str, size: tuple[int, int], event: gr.SelectData) -> str:
        cell = cell_at(event.index[0], event.index[1], *size)
        return toggle_head(chosen, *cell) if cell else chosen

    outputs = [summary, top_before, top_after, generation_before, generation_after, changed, shape]
    for edited in (model.change, text.change):  # an ablation of another model or text never stays on screen
        edited(lambda: ("", [], [], "", "", [], DEFAULT_SHAPE), None, outputs, queue=False)
    run.click(ablate, [model, text, heads, mode], outputs, **queue)
    for control in (heads, shape):
        control.change(selection_image, [heads, shape], selection)
    selection.select(pick, [heads, shape], heads)


def _atlas_tab(client: Client, queue: dict, model: gr.Dropdown, text: gr.Textbox) -> None:
    atlas = atlas_section("heads-atlas", ATLAS_WHAT)
    with gr.Row():
        before = gr.Textbox(label="Greedy continuation of your text", interactive=False, elem_id="heads-atlas-before")
        after = gr.Textbox(label="… with the clicked head off (mean-ablated)", interactive=False,
                           elem_id="heads-atlas-after")

    def fetch(model_id: str) -> tuple:
        return show_atlas(call_backend(client, "heads_head_effects", model_id or "", ""))

    def pick(found: dict | None, model_id: str, user_text: str, event: gr.SelectData) -> tuple:
        cell = atlas_cell(found, *event.index) if found else None
        if cell is None:
            return gr.skip(), gr.skip(), gr.skip()
        task, head = cell
        report = call_backend(client, "heads_ablate", model_id or "", user_text, head, "mean")
        summary = (f"{cell_summary(found, task, head)} On your text, the loss goes {report['loss_before']:.4f} → "
                   f"{report['loss_after']:.4f} nats/token and the next-token KL is {report['kl']:.5f} with {head} "
                   "off.")
        return report["generation_before"], report["generation_after"], summary

    model.change(lambda: (None, None, "", "", "", ""), None, [*atlas.outputs, before, after], queue=False)
    text.change(lambda: ("", "", ""), None, [before, after, atlas.clicked], queue=False)
    atlas.compute.click(fetch, model, atlas.outputs, **queue)
    atlas.image.select(pick, [atlas.state, model, text], [before, after, atlas.clicked], **queue)


def _generation_tab(client: Client, queue: dict, model: gr.Dropdown, text: gr.Textbox) -> None:
    result = gr.State(None)
    with gr.Row():
        n_tokens = gr.Slider(1, 64, value=12, step=1, label="Tokens to generate")
        generate = gr.Button("Generate", variant="primary")
    with gr.Row():
        step = gr.Slider(1, 64, value=1, step=1, label="Step")
        layer = gr.Number(18, label="Layer", precision=0, minimum=0)
        head = gr.Number(6, label="Head", precision=0, minimum=0)
    caption = gr.Markdown()
    with gr.Row():
        with gr.Column():
            grid = grid_view("Largest attention weight of every head at this step (click a head)")
        attended = gr.HighlightedText(label="Where the chosen head looks (its top positions)")

    def fetch(model_id: str, user_text: str, count: float):
        found = call_backend(client, "heads_generate", model_id or "", user_text, int(count))
        return found, gr.Slider(1, max(1, len(found["steps"])), value=1, step=1, label="Step")

    def show(found: dict | None, index: float, chosen_layer: float, chosen_head: float):
        if not found or not found["steps"]:
            return None, [], ""
        n_layers, n_heads = len(found["steps"][0]["top_weights"]), len(found["steps"][0]["top_weights"][0])
        if not (0 <= chosen_layer < n_layers and 0 <= chosen_head < n_heads):
            raise gr.Error(f"pick a layer 0–{n_layers - 1} and a head 0–{n_heads - 1}")
        return step_view(found, int(index), int(chosen_layer), int(chosen_head))

    def pick(found: dict | None, chosen_layer: float, chosen_head: float, event: gr.SelectData):
        if not found:
            return chosen_layer, chosen_head
        top = found["steps"][0]["top_weights"]
        cell = cell_at(event.index[0], event.index[1], len(top), len(top[0]))
        return cell if cell else (chosen_layer, chosen_head)

    views = [grid, attended, caption]
    for changed in (model.change, text.change):  # a generation from another model or text never stays on screen
        changed(lambda: (None, None, [], ""), None, [result, *views], queue=False)
    generate.click(fetch, [model, text, n_tokens], [result, step], **queue).then(
        show, [result, step, layer, head], views
    )
    for control in (step, layer, head):
        control.change(show, [result, step, layer, head], views)
    grid.select(pick, [result, layer, head], [layer, head])
