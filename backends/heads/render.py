"""Figures and exports of the Heads panel: the model view, heatmaps with token labels, PNG/SVG, JSON/CSV.

Figures are drawn with matplotlib's object API (no global state, safe across threads) and leave here as PIL images
(PNG) or SVG text. The model view is one compact image: every head's map shrunk to a thumbnail, layers as rows,
heads as columns, a wider gap between groups of query heads that share a key/value head (GQA).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from PIL import Image

CMAP = "magma"
GAP = 2  # pixels between thumbnails
GROUP_GAP = 6  # pixels between key/value groups (GQA)
DPI = 100
MARGIN_LEFT, MARGIN_TOP, MARGIN_RIGHT, MARGIN_BOTTOM = 44, 40, 12, 64  # model-view margins in pixels
LABELLED_TOKENS = 80  # heatmaps label every token up to this length, then every n-th


@dataclass(frozen=True)
class ModelViewLayout:
    """Where each head's thumbnail sits in the model-view image (pixels, origin top-left), for click → head.

    Layers are always the columns (left to right) and heads the rows, whatever the model's shape. Query heads that
    share a key/value head sit closer together.
    """

    thumb: int
    n_layers: int
    n_heads: int
    heads_per_group: int

    def layer_offsets(self) -> list[int]:
        """Start of each layer's thumbnails along the layer axis, from the grid's edge."""
        return [layer * (self.thumb + GAP) for layer in range(self.n_layers)]

    def head_offsets(self) -> list[int]:
        """Start of each head's thumbnails along the head axis: a wider gap between key/value groups."""
        return [
            head * (self.thumb + GAP) + (head // self.heads_per_group) * (GROUP_GAP - GAP)
            for head in range(self.n_heads)
        ]

    def grid_size(self) -> tuple[int, int]:
        """(width, height) of the thumbnail grid."""
        return self.layer_offsets()[-1] + self.thumb, self.head_offsets()[-1] + self.thumb

    def as_dict(self) -> dict:
        """JSON form for the UI: the image-pixel start of each row and column, what rows are ("layer" or "head") and
        the thumbnail side; a click at (x, y) is on row r when ``rows[r] <= y < rows[r] + thumb``, likewise columns."""
        return {
            "rows": [MARGIN_TOP + offset for offset in self.head_offsets()],
            "columns": [MARGIN_LEFT + offset for offset in self.layer_offsets()],
            "rows_are": "head",
            "thumb": self.thumb,
            "heads_per_group": self.heads_per_group,
        }


def model_view_mosaic(thumbnails: torch.Tensor, layout: ModelViewLayout) -> np.ndarray:
    """RGB mosaic of ``[L, H, s, s]`` thumbnails, each scaled to its own maximum (square-root contrast)."""
    peak = thumbnails.amax(dim=(-1, -2), keepdim=True).clamp_min(1e-9)
    scaled = (thumbnails / peak).sqrt().numpy()
    colours = (colormaps[CMAP](scaled)[..., :3] * 255).astype(np.uint8)  # [L, H, s, s, 3]
    width, height = layout.grid_size()
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    size = layout.thumb
    for layer, layer_start in enumerate(layout.layer_offsets()):
        for head, head_start in enumerate(layout.head_offsets()):
            canvas[head_start : head_start + size, layer_start : layer_start + size] = colours[layer, head]
    return canvas


def model_view_figure(thumbnails: torch.Tensor, heads_per_group: int, title: str) -> tuple[Figure, ModelViewLayout]:
    """The model view: a labelled grid of every head's thumbnail, drawn at one figure pixel per mosaic pixel."""
    n_layers, n_heads, thumb = thumbnails.shape[:3]
    layout = ModelViewLayout(thumb, n_layers, n_heads, heads_per_group)
    grid_width, grid_height = layout.grid_size()
    width = MARGIN_LEFT + grid_width + MARGIN_RIGHT
    height = MARGIN_TOP + grid_height + MARGIN_BOTTOM
    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    axes = figure.add_axes((MARGIN_LEFT / width, MARGIN_BOTTOM / height, grid_width / width, grid_height / height))
    axes.imshow(
        model_view_mosaic(thumbnails, layout),
        interpolation="nearest",
        aspect="auto",
        extent=(0, grid_width, grid_height, 0),
    )
    head_label = "head" + (f" (groups of {heads_per_group} share a KV head)" if heads_per_group > 1 else "")
    axes.set_yticks(*_axis_ticks(layout.head_offsets(), thumb), fontsize=7)
    axes.set_xticks(*_axis_ticks(layout.layer_offsets(), thumb), fontsize=7)
    axes.set_ylabel(head_label, fontsize=8)
    axes.set_xlabel("layer", fontsize=8)
    axes.tick_params(length=0, pad=2)
    for side in axes.spines.values():
        side.set_visible(False)
    _contrast_legend(figure, width, height)
    figure.suptitle(title, fontsize=8, y=1 - 8 / height, va="top")
    return figure, layout


def _contrast_legend(figure: Figure, width: int, height: int) -> None:
    """A colour bar under the grid: colour against the weight as a share of that head's own maximum (√ contrast)."""
    legend_width = min(220, width - MARGIN_LEFT - MARGIN_RIGHT - 24)
    left = 1 - (MARGIN_RIGHT + 24 + legend_width) / width
    bar = figure.add_axes((left, 16 / height, legend_width / width, 7 / height))
    bar.imshow(np.linspace(0, 1, 256)[None, :], cmap=CMAP, aspect="auto", extent=(0, 1, 0, 1))
    bar.set_yticks([])
    bar.set_xticks([0, 0.5, 1], ["0", "¼ of max", "max"], fontsize=6)
    bar.tick_params(length=2, pad=1)
    bar.set_title("weight (√ scale, per head)", fontsize=6, pad=2)


def _axis_ticks(offsets: list[int], thumb: int) -> tuple[list[float], list[str]]:
    """Tick positions (thumbnail centres) and labels, at most about 16 of them."""
    step = max(1, len(offsets) // 16)
    chosen = range(0, len(offsets), step)
    return [offsets[index] + thumb / 2 for index in chosen], [str(index) for index in chosen]


def heatmap_figure(
    attention: np.ndarray, rows: list[str], columns: list[str], title: str, hide_first: bool, causal: bool
) -> Figure:
    """A map (rows = queries, columns = keys) with a label per row and column; the first column greyed out if
    hidden, the part above the diagonal masked out for an exact causal map."""
    n_rows, n_columns = attention.shape
    values = np.ma.masked_array(attention, mask=np.zeros_like(attention, dtype=bool))
    if causal:
        values.mask |= np.triu(np.ones_like(attention, dtype=bool), k=1)
    if hide_first and n_columns > 1:
        values.mask[:, 0] = True
    longest = max(n_rows, n_columns)
    labelled = longest <= LABELLED_TOKENS
    side = 3.2 + (0.13 * longest if labelled else 5.5)
    figure = Figure(figsize=(min(side, 14) + 1.2, min(side, 14)), dpi=DPI)
    axes = figure.add_subplot()
    cmap = colormaps[CMAP].with_extremes(bad="#d9d9d9")
    peak = max(float(values.max() or 0), 1e-9)
    image = axes.imshow(values, cmap=cmap, interpolation="nearest", vmin=0, vmax=peak, aspect="auto")
    figure.colorbar(image, ax=axes, fraction=0.04, pad=0.02, label="attention weight")
    font = 8 if longest <= 40 else 6
    column_ticks, column_names = _tick_labels(columns)
    row_ticks, row_names = _tick_labels(rows)
    axes.set_xticks(column_ticks, column_names, rotation=90, fontsize=font)
    axes.set_yticks(row_ticks, row_names, fontsize=font)
    axes.set_xlabel("key (attended to)")
    axes.set_ylabel("query (attending)")
    axes.set_title(title, fontsize=9)
    figure.tight_layout()
    return figure


def figure_png(figure: Figure) -> Image.Image:
    """Render a figure to a PIL image (RGB)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    buffer.seek(0)
    with Image.open(buffer) as image:
        return image.convert("RGB")


def figure_svg(figure: Figure) -> str:
    """Render a figure as SVG text (maps are embedded rasters, labels stay text)."""
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", dpi=DPI)
    return buffer.getvalue()


def matrix_json(attention: np.ndarray, rows: list[str], columns: list[str], meta: dict) -> str:
    """A map's matrix with its row (query) and column (key) labels as JSON (``meta`` says which map and window)."""
    payload = {**meta, "rows": rows, "columns": columns, "attention": np.round(attention, 6).tolist()}
    return json.dumps(payload, ensure_ascii=False)


def matrix_csv(attention: np.ndarray, rows: list[str], columns: list[str]) -> str:
    """A map's matrix as CSV: a header of key labels, then one row per query label."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["query \\ key", *columns])
    for label, row in zip(rows, attention, strict=True):
        writer.writerow([label, *(f"{value:.6g}" for value in row)])
    return buffer.getvalue()


def display_token(token: str) -> str:
    """A token made visible in a label: spaces as '·', line breaks as '↵', empty as '∅'."""
    shown = token.replace("\n", "↵").replace("\t", "⇥").replace(" ", "·")
    return shown[:14] or "∅"


def _tick_labels(labels: list[str]) -> tuple[list[int], list[str]]:
    """Every label up to ``LABELLED_TOKENS`` of them, else about 40 evenly spaced ones."""
    step = 1 if len(labels) <= LABELLED_TOKENS else -(-len(labels) // 40)
    positions = list(range(0, len(labels), step))
    return positions, [labels[index] for index in positions]
