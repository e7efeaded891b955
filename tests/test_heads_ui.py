"""The Heads tab: it builds, its click mapping agrees with the backend's layout, and a browser can drive it."""

from __future__ import annotations

import gradio as gr
import pytest
import torch

from backends.core.client import LocalClient
from backends.core.config import PanelConfig
from backends.heads import render
from backends.heads.service import HeadsService
from ui import heads

CONFIG = PanelConfig("heads", models=("smollm2", "minilm"))


def test_tab_builds_without_loading_a_model():
    service = HeadsService()
    with gr.Blocks() as demo:
        heads.build(LocalClient("heads", service), CONFIG)
    ids = {block.elem_id for block in demo.blocks.values()}
    assert {"heads-model-view", "heads-heatmap"} <= ids
    assert service.info()["loaded_models"] == []


@pytest.mark.parametrize(("n_layers", "n_heads", "per_group"), [(30, 9, 3), (6, 12, 1)])
def test_click_mapping_uses_the_backend_layout(n_layers, n_heads, per_group):
    _, layout = render.model_view_figure(torch.rand(n_layers, n_heads, 8, 8), per_group, "t")
    geometry = layout.as_dict()
    for layer, head in [(0, 0), (n_layers - 1, n_heads - 1), (2, 5)]:
        row, column = (layer, head) if geometry["rows_are"] == "layer" else (head, layer)
        point = [geometry["columns"][column] + 3, geometry["rows"][row] + 3]
        assert heads._head_at(geometry, point) == (layer, head)
    assert heads._head_at(geometry, [0, 0]) is None  # the margin is no head


def test_summary_names_gqa_groups_and_truncation():
    info = {
        "model": "smollm2",
        "n_layers": 30,
        "n_heads": 9,
        "n_kv_heads": 3,
        "is_causal": True,
        "n_tokens": 8192,
        "n_input_tokens": 40001,
        "seconds": 1.0,
        "kv_groups": [[0, 1, 2], [3, 4, 5], [6, 7, 8]],
        "truncated": True,
        "notice": "only the first 8,192 tokens were used.",
        "bertviz_available": False,
    }
    text = heads._summary(info)
    assert "KV head 1: query heads 3, 4, 5" in text and "only the first 8,192 tokens" in text
    assert "8,192 of the text's 40,001 tokens used" in text


def test_the_picked_head_is_outlined_and_layers_are_always_columns():
    for n_layers, n_heads in [(30, 9), (6, 12)]:
        figure, layout = render.model_view_figure(torch.rand(n_layers, n_heads, 8, 8), 1, "t")
        geometry = layout.as_dict()
        assert geometry["rows_are"] == "head" and len(geometry["columns"]) == n_layers
    image = render.figure_png(figure)
    marked = heads.highlighted(image, geometry, layer=4, head=7)
    left, top = geometry["columns"][4], geometry["rows"][7]
    assert marked.getpixel((left - 1, top + 3)) == (0, 229, 255) and image.getpixel((left - 1, top + 3)) != (
        0,
        229,
        255,
    )
    assert heads.highlighted(None, geometry, 0, 0) is None


@pytest.mark.browser
def test_heads_tab_in_chromium(page):
    """Analyze in the real app: the model view and heatmap appear, a click picks a head, bad input shows an error."""
    page.get_by_role("tab", name="Heads", exact=True).click()
    text = page.get_by_label("Text", exact=True).first
    text.fill("The cat sat on the mat. The cat sat on the mat.")
    page.get_by_role("button", name="Analyze").click()
    page.locator("#heads-heatmap img").wait_for(timeout=120_000)
    assert page.get_by_text("30 layers × 9 heads").first.is_visible()
    model_view = page.locator("#heads-model-view img")
    assert model_view.evaluate("img => img.naturalWidth") > 500
    before = page.locator("#heads-heatmap img").get_attribute("src")
    box = model_view.bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.62, box["y"] + box["height"] * 0.45)
    page.wait_for_function(
        "before => document.querySelector('#heads-heatmap img').getAttribute('src') !== before", arg=before
    )
    assert page.get_by_text("KV head").first.is_visible()
    text.fill("")
    page.get_by_role("button", name="Analyze").click()
    page.get_by_text("it is empty").first.wait_for(timeout=30_000)
