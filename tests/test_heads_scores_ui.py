"""The lab's UI helpers on real backend results: grids, clicks → heads, explanations, the generation stepper."""

from __future__ import annotations

import gradio as gr
import numpy as np
import pytest

from backends.core.client import LocalClient
from backends.core.config import PanelConfig
from ui.heads_lab import (
    CELL_HEIGHT,
    CELL_WIDTH,
    CMAP,
    LEFT,
    LEGEND_HEIGHT,
    LEGEND_WIDTH,
    SCORE_LABELS,
    TEXT_INPUT,
    TOP,
    ablation_markdown,
    build_heads_lab,
    cell_at,
    grid_image,
    kl_highlights,
    parse_selection,
    ranked,
    score_explanation,
    score_values,
    step_view,
    toggle_head,
)

TEXT = "Alice met Bob at the station. Later, Alice gave Bob a small red book, and Bob thanked Alice."


@pytest.fixture(scope="module")
def client():
    """An in-process client of the Heads service."""
    return LocalClient("heads")


def test_lab_builds_inside_a_blocks(client):
    with gr.Blocks() as demo:
        build_heads_lab(client, PanelConfig("heads", models=("smollm2", "minilm")))
    assert demo.fns, "the lab wires its events"


def test_grid_clicks_map_back_to_heads():
    values = [[layer * 10 + head for head in range(9)] for layer in range(30)]
    image = grid_image(values, {(4, 2)})
    for layer, head in [(0, 0), (4, 2), (29, 8)]:
        x, y = LEFT + head * CELL_WIDTH + CELL_WIDTH // 2, TOP + layer * CELL_HEIGHT + CELL_HEIGHT // 2
        assert x < image.width and y < image.height
        assert cell_at(x, y, 30, 9) == (layer, head)
    assert cell_at(2, 2, 30, 9) is None, "the label margin is not a head"
    assert toggle_head("1.2, 3.4", 3, 4) == "1.2"
    assert toggle_head("1.2", 3, 4) == "1.2, 3.4"
    assert parse_selection("1.2, 3.*", (6, 4)) == {(1, 2), (3, 0), (3, 1), (3, 2), (3, 3)}
    assert parse_selection("1.2, x 5.6", (6, 4)) == set()  # malformed while typing: nothing marked yet
    assert ranked(values, 2) == [[1, "29.8", 298], [2, "29.7", 297]]


def test_scores_views(client):
    found = client.call("heads_scores", "", TEXT)
    assert set(SCORE_LABELS) == set(found["scores"])
    for key in SCORE_LABELS:
        text = score_explanation(found, key, TEXT_INPUT)
        assert found["explanations"][key]["formula"] in text
    assert score_values(found, "induction", TEXT_INPUT) == found["text_templates"]["induction"]
    assert score_values(found, "retrieval", TEXT_INPUT) == found["scores"]["retrieval"]


def test_ablation_and_generation_views(client):
    report = client.call("heads_ablate", "", TEXT, "18.6", "zero")
    assert "18.6" in ablation_markdown(report)
    assert len(kl_highlights(report)) == report["n_tokens"]
    generated = client.call("heads_generate", "", TEXT, 3)
    image, highlighted, caption = step_view(generated, 2, 18, 6)
    assert image.size == grid_image([[0.0] * 9] * 30).size
    assert len(highlighted) == generated["steps"][1]["position"]
    assert "18.6" in caption


def test_grids_carry_a_colour_bar_with_their_values():
    values = [[layer * 10 + head for head in range(9)] for layer in range(30)]
    image, bare = grid_image(values), grid_image(values, legend=False)
    assert image.height == bare.height + LEGEND_HEIGHT
    top = TOP + 30 * CELL_HEIGHT + 6 + 5
    low, high = (np.array(CMAP(0.0)[:3]) * 255).round(), (np.array(CMAP(1.0)[:3]) * 255).round()
    assert np.abs(np.array(image.getpixel((LEFT, top))) - low).max() <= 2
    assert np.abs(np.array(image.getpixel((LEFT + LEGEND_WIDTH - 1, top))) - high).max() <= 2


def test_generation_stepper_keeps_line_breaks():
    tokens = ["def", " f", "():", "\n", "   ", " return", " 1"]
    step = {"position": 6, "token": " 1", "top_positions": [[[3, 0]]], "top_weights": [[[0.7, 0.2]]]}
    _, highlighted, _ = step_view({"tokens": tokens, "steps": [step]}, 1, 0, 0)
    assert highlighted[3] == ("↵\n", 0.7) and highlighted[0] == ("def", 0.2)
