"""The head atlas as every panel shows it: small multiples (one layers × heads grid per task on one shared colour
scale, with a legend), the most task-specific heads, and the section that holds them ("Which heads matter here?").

An atlas is the JSON of a ``<panel>_head_effects`` endpoint (see ``backends.core.heads.atlas_result``).
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr
import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw

from backends.core.heads import harm

#: cell size, room for layer labels, title height, gap between grids, legend height (pixels)
CELL_W, CELL_H, LABEL_W, TITLE_H, GAP, LEGEND_H = 30, 22, 22, 30, 16, 44
ATLAS_CMAP = colormaps["RdBu_r"]
MISSING = (225, 225, 225)
SPECIFIC_HEADS = 8
#: a head counts as task-specific only if it moves some task by at least this share of that task's largest effect
MIN_EFFECT_SHARE = 0.25
#: the colour scale ends at this percentile of |relative effect| (larger effects saturate)
SCALE_PERCENTILE = 99.0

ABLATION_TEXT = """**What ablation measures.** Switching one head off and re-measuring the task tells how much the
model, *as it is*, relies on that head for it. **Mean ablation** replaces the head's output by its average, so only what
the head says about this particular input is removed; **zero ablation** removes the output entirely, which also
removes the head's constant contribution and can overstate its role. **What it does not measure:** effects are
single-head and not additive — two heads can back each other up, so a head with no effect alone may still matter,
and switching two heads off can do more (or less) than the sum. Small effects on a small probe set are noise.
**Task specificity** is 1 − the normalised entropy of a head's |effect| over the tasks (each task first scaled by its
largest effect): 1 = the head matters for one task only, 0 = for all alike."""


def harm_relative(atlas: dict, task: str) -> np.ndarray:
    """:func:`backends.core.heads.harm` of the relative effects in %, as an array (NaN where the stack has no head)."""
    return np.array([[np.nan if value is None else value for value in row] for row in harm(atlas, task, "relative")],
                    dtype=float)


def _geometry(atlas: dict) -> tuple[int, int, int]:
    """(width of one grid incl. its layer labels, height of the grids incl. titles, total width)."""
    grid_w = LABEL_W + atlas["heads"] * CELL_W
    grid_h = TITLE_H + atlas["layers"] * CELL_H
    return grid_w, grid_h, len(atlas["tasks"]) * (grid_w + GAP) - GAP


def _colour_range(atlas: dict) -> float:
    """The shared colour scale's half-width in %: a high percentile of every task's |relative effect| (so one huge
    effect does not wash out the rest)."""
    values = np.concatenate([np.abs(harm_relative(atlas, task)).ravel() for task in atlas["tasks"]])
    values = values[np.isfinite(values)]
    limit = float(np.percentile(values, SCALE_PERCENTILE)) if values.size else 0.0
    return limit if limit > 0 else 1.0


def atlas_image(atlas: dict) -> Image.Image:
    """Small multiples: one layers × heads grid per task, coloured by the relative effect on one shared scale
    (red: the task gets worse with the head off, blue: better; grey: no such head), with a colour-bar legend."""
    grid_w, grid_h, width = _geometry(atlas)
    limit = _colour_range(atlas)
    image = Image.new("RGB", (max(width, 420), grid_h + LEGEND_H), "white")
    draw = ImageDraw.Draw(image)
    for index, task in enumerate(atlas["tasks"]):
        left = index * (grid_w + GAP)
        values = harm_relative(atlas, task)
        colours = (ATLAS_CMAP(np.clip(0.5 + np.nan_to_num(values) / (2 * limit), 0, 1))[..., :3] * 255).astype(np.uint8)
        colours[np.isnan(values)] = MISSING
        cells = colours.repeat(CELL_H, axis=0).repeat(CELL_W, axis=1)
        image.paste(Image.fromarray(cells), (left + LABEL_W, TITLE_H))
        draw.text((left + LABEL_W, 2), task, fill="black")
        for head in range(atlas["heads"]):
            draw.text((left + LABEL_W + head * CELL_W + CELL_W // 2 - 3, TITLE_H - 12), str(head), fill="dimgray")
        for layer in range(atlas["layers"]):
            draw.text((left + 2, TITLE_H + layer * CELL_H + 4), str(layer), fill="dimgray")
    bar_left, bar_w, bar_top = LABEL_W, min(max(width, 420) - 2 * LABEL_W, 360), grid_h + 8
    ramp = (ATLAS_CMAP(np.linspace(0, 1, bar_w))[:, :3] * 255).astype(np.uint8)
    image.paste(Image.fromarray(np.repeat(ramp[None], 10, axis=0)), (bar_left, bar_top))
    draw.text((bar_left, bar_top + 13), f"≤ -{limit:.1f} %", fill="black")
    draw.text((bar_left + bar_w // 2 - 3, bar_top + 13), "0", fill="black")
    draw.text((bar_left + bar_w - 130, bar_top + 13), f"≥ +{limit:.1f} % (needs the head)", fill="black")
    draw.text((bar_left, bar_top + 27), "how much worse each task gets with the head off, in % of its score",
              fill="dimgray")
    return image


def atlas_cell(atlas: dict, x: float, y: float) -> tuple[str, str] | None:
    """(task, "layer.head") under pixel (x, y) of :func:`atlas_image`, or None outside every head's cell."""
    grid_w, _, _ = _geometry(atlas)
    index, within = int(x // (grid_w + GAP)), x % (grid_w + GAP) - LABEL_W
    layer, head = int((y - TITLE_H) // CELL_H), int(within // CELL_W)
    if index >= len(atlas["tasks"]) or within < 0 or y < TITLE_H or not (0 <= layer < atlas["layers"]):
        return None
    if not 0 <= head < atlas["heads"] or atlas["effects"][atlas["tasks"][index]][layer][head] is None:
        return None
    return atlas["tasks"][index], f"{layer}.{head}"


def most_specific(atlas: dict, count: int = SPECIFIC_HEADS) -> list[tuple[str, float, str]]:
    """The ``count`` most task-specific heads that matter (see :data:`MIN_EFFECT_SHARE`): ("layer.head",
    specificity, the task it matters most for)."""
    shares = {task: np.abs(np.nan_to_num(harm_relative(atlas, task))) for task in atlas["tasks"]}
    shares = {task: grid / (grid.max() or 1.0) for task, grid in shares.items()}
    found = []
    for layer, row in enumerate(atlas["specificity"]):
        for head, value in enumerate(row):
            task = max(atlas["tasks"], key=lambda name: shares[name][layer, head])
            if value is not None and shares[task][layer, head] >= MIN_EFFECT_SHARE:
                found.append((f"{layer}.{head}", value, task))
    found.sort(key=lambda cell: -cell[1])
    return found[:count]


def specific_heads_markdown(atlas: dict) -> str:
    """The most task-specific heads (with the task they matter for) and each task's top heads."""
    lines = ["**Most task-specific heads**", "", "| head | specificity | matters most for | effect with it off |",
             "|---|---|---|---|"]
    for name, value, task in most_specific(atlas):
        layer, head = (int(part) for part in name.split("."))
        effect, relative = atlas["effects"][task][layer][head], atlas["relative"][task][layer][head]
        lines.append(f"| {name} | {value:.2f} | {task} | {effect:+.4f} {atlas['metric'][task]} ({relative:+.1f} %) |")
    lines += ["", "**Top heads per task** (the task gets worst with them off): "
              + "; ".join(f"{task}: {', '.join(heads)}" for task, heads in atlas["top"].items()),
              "", f"Computed in {atlas['seconds']:.0f} s{' (cached)' if atlas.get('cached') else ''}."]
    return "\n".join(lines)


def cell_summary(atlas: dict, task: str, head: str) -> str:
    """What the atlas says about ``head`` for ``task``: effect, relative effect, specificity."""
    layer, index = (int(part) for part in head.split("."))
    return (f"**Head {head}** — atlas: {task} {atlas['effects'][task][layer][index]:+.4f} {atlas['metric'][task]} "
            f"({atlas['relative'][task][layer][index]:+.1f} %), specificity {atlas['specificity'][layer][index]:.2f}.")


@dataclass
class AtlasSection:
    """The components of one panel's "Which heads matter here?" section."""

    state: gr.State
    compute: gr.Button
    image: gr.Image
    specific: gr.Markdown
    clicked: gr.Markdown
    before: gr.Image | None = None  # the user's result, and the same with the clicked head off
    after: gr.Image | None = None

    @property
    def outputs(self) -> list:
        """What fetching an atlas fills (state, image, specific heads) and clears (the clicked head)."""
        return [self.state, self.image, self.specific, self.clicked]


def atlas_section(elem_id: str, what: str, teaching: str = ABLATION_TEXT, result: str = "") -> AtlasSection:
    """The section's header, teaching text, compute button, small multiples and lists (inside the caller's layout).

    ``what`` says in one sentence what the panel's atlas measures; given ``result`` (e.g. "Your restoration"), the
    section also holds the before / after images of a clicked head.
    """
    gr.Markdown(f"{what} Click a cell to re-run your current input with that head off (before / after).")
    with gr.Accordion("What ablation measures, and what it does not", open=False):
        gr.Markdown(teaching)
    compute = gr.Button("Show the head atlas (computed once per model, then cached)", elem_id=f"{elem_id}-compute")
    image = gr.Image(show_label=False, type="pil", interactive=False, elem_id=f"{elem_id}-grid")
    specific = gr.Markdown(elem_id=f"{elem_id}-specific")
    clicked = gr.Markdown(elem_id=f"{elem_id}-clicked")
    section = AtlasSection(gr.State(None), compute, image, specific, clicked)
    if result:
        with gr.Row():
            section.before = gr.Image(type="pil", label=result, interactive=False, format="png",
                                      elem_id=f"{elem_id}-before")
            section.after = gr.Image(type="pil", label="… with the clicked head off", interactive=False,
                                     format="png", elem_id=f"{elem_id}-after")
    return section


def clicked_head(atlas: dict | None, event: gr.SelectData, user_input: object) -> tuple[str, str] | None:
    """(task, "layer.head") of the clicked atlas cell (None off the cells or before an atlas is shown); a
    ``gr.Error`` when there is no ``user_input`` to switch the head off on."""
    cell = atlas_cell(atlas, *event.index) if atlas else None
    if cell is not None and user_input is None:
        raise gr.Error("Upload an image or pick an example first: the head is switched off on your input.")
    return cell


def show_atlas(atlas: dict) -> tuple:
    """The section's outputs for a fetched atlas."""
    return atlas, atlas_image(atlas), specific_heads_markdown(atlas), ""
