"""Figures and exports: model-view geometry (click → head), heatmaps, SVG/CSV/JSON, the offline bertviz page."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import torch

from backends.heads import bertviz_view, render


def centre_pixel(layout: dict, layer: int, head: int) -> tuple[int, int]:
    """(x, y) of a head's thumbnail centre, read from the layout the UI gets."""
    row, column = (layer, head) if layout["rows_are"] == "layer" else (head, layer)
    half = layout["thumb"] // 2
    return layout["columns"][column] + half, layout["rows"][row] + half


@pytest.mark.parametrize(("n_layers", "n_heads", "per_group"), [(30, 9, 3), (6, 12, 1)])
def test_model_view_layout_points_at_each_heads_thumbnail(n_layers, n_heads, per_group):
    """Each head gets a distinct flat thumbnail; the PNG pixel at its layout centre has that thumbnail's colour."""
    size = 10
    levels = torch.linspace(0.05, 1.0, n_layers * n_heads).reshape(n_layers, n_heads, 1, 1)
    thumbnails = levels.expand(n_layers, n_heads, size, size).clone()
    thumbnails[..., 0, 0] = 1.0  # each thumbnail's own peak, so scaling maps the flat level to sqrt(level)
    figure, layout = render.model_view_figure(thumbnails, per_group, "test")
    image = np.asarray(render.figure_png(figure))
    mosaic = render.model_view_mosaic(thumbnails, layout)
    geometry = layout.as_dict()
    assert geometry["rows_are"] == "head", "layers are the columns for every model"
    grid_width, grid_height = layout.grid_size()
    assert image.shape[:2] == (
        render.MARGIN_TOP + grid_height + render.MARGIN_BOTTOM,
        render.MARGIN_LEFT + grid_width + render.MARGIN_RIGHT,
    )
    for layer, head in [(0, 0), (n_layers - 1, n_heads - 1), (n_layers // 2, n_heads // 3)]:
        x, y = centre_pixel(geometry, layer, head)
        expected = mosaic[y - render.MARGIN_TOP, x - render.MARGIN_LEFT]
        np.testing.assert_allclose(image[y, x], expected, atol=2)
    assert len({tuple(image[centre_pixel(geometry, 0, h)[::-1]]) for h in range(n_heads)}) == n_heads


def test_gqa_groups_are_further_apart():
    layout = render.ModelViewLayout(thumb=10, n_layers=2, n_heads=6, heads_per_group=3)
    starts = layout.head_offsets()
    steps = np.diff(starts)
    assert steps[2] - steps[1] == render.GROUP_GAP - render.GAP and steps[0] == steps[1] == 10 + render.GAP


def test_heatmap_png_and_svg_with_token_labels():
    tokens = ["The", " cat", " sat", "\n"]
    attention = np.tril(np.ones((4, 4)))
    attention /= attention.sum(-1, keepdims=True)
    labels = [f"{index} {render.display_token(token)}" for index, token in enumerate(tokens)]
    figure = render.heatmap_figure(attention, labels, labels, "L0H0", hide_first=True, causal=True)
    png = render.figure_png(figure)
    assert png.mode == "RGB" and png.width > 200
    svg = render.figure_svg(figure)
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg and "·cat" in svg and "↵" in svg


def test_matrix_csv_and_json_round_trip():
    labels = ["0 a", "1 b,c", "2 d"]
    keys = ["0–1", "2–2", "3–3"]  # a pooled block's label is its token range
    attention = np.array([[1.0, 0, 0], [0.25, 0.75, 0], [0.1, 0.2, 0.7]])
    rows = list(csv.reader(io.StringIO(render.matrix_csv(attention, labels, keys))))
    assert rows[0] == ["query \\ key", *keys] and [row[0] for row in rows[1:]] == labels
    np.testing.assert_allclose(np.array([row[1:] for row in rows[1:]], dtype=float), attention)
    data = json.loads(render.matrix_json(attention, labels, keys, {"model": "m", "layer": 1, "head": 2}))
    assert data["rows"] == labels and data["columns"] == keys and data["layer"] == 1
    np.testing.assert_allclose(data["attention"], attention)


def test_bertviz_page_is_self_contained():
    layers = [torch.softmax(torch.randn(2, 5, 5), -1) for _ in range(3)]
    for view in bertviz_view.VIEWS:
        page = bertviz_view.bertviz_document(view, layers, ["a", "b", "c", "d", "e"])
        assert "cdnjs" not in page.split("require.config")[0]  # the only CDN mention left is bertviz's unused config
        assert "define('d3'" in page and "RequireJS 2.3.6" in page and "d3js.org v5.7.0" in page
    assert bertviz_view.fits_bertviz(30, 9, 40) and not bertviz_view.fits_bertviz(30, 9, 200)


@pytest.mark.browser
def test_bertviz_page_draws_offline_in_chromium():
    """The page renders its attention lines in headless Chromium with the network blocked."""
    sync_api = pytest.importorskip("playwright.sync_api")
    from pathlib import Path

    if not Path("/usr/bin/chromium").exists():
        pytest.skip("Debian chromium is not installed (make test installs it)")
    layers = [torch.softmax(torch.randn(2, 4, 4), -1) for _ in range(2)]
    page_html = bertviz_view.bertviz_document("head", layers, ["w", "x", "y", "z"])
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        page = browser.new_page()
        page.route("**/*", lambda route: route.abort())  # nothing may come from the network
        page.set_content(page_html)
        page.wait_for_function("document.querySelectorAll('#vis line, #vis path, #vis rect').length > 0", timeout=20000)
        browser.close()
