"""The Referring-segmentation tab builds against the real service, and its texts read the service's answers."""

from __future__ import annotations

import gradio as gr
import numpy as np
from PIL import Image
from skimage import data as skdata

from backends.core.client import LocalClient
from backends.core.config import load_config
from ui import segmentation


def test_the_tab_builds_with_its_examples():
    config = load_config().panels["segmentation"]
    with gr.Blocks():
        segmentation.build(LocalClient("segmentation"), config)
    examples = segmentation._examples()
    assert len(examples) == 6 and any(row[3] for row in examples) and any(row[2] for row in examples)


def test_an_empty_answer_says_so_and_a_photo_gets_the_domain_note():
    client = LocalClient("segmentation")
    blank = Image.new("RGB", (64, 64), (90, 90, 90))
    _, _, empty = client.call("segment_view", blank, "the bag", "", "", "", 0.5, -1)
    text = segmentation._answer_text(empty)
    assert "Present:** no — the mask is empty" in text and "(score" not in text
    assert "unlike the embedded model" in segmentation._domain_text(empty)
    _, _, photo = client.call("segment_view", Image.fromarray(skdata.coffee()), "", "", "[150, 20, 450, 270]", "",
                              0.5, -1)
    text = segmentation._answer_text(photo)
    assert "**Present:** yes" in text and "answered by **grabcut** (classical fallback)" in text


def test_the_first_box_corner_gets_a_marker():
    picture = Image.new("RGB", (200, 100), (10, 20, 30))
    marked = np.asarray(segmentation.mark_corner(picture, 50, 40))
    assert tuple(marked[40, 50]) == (255, 220, 0) and tuple(marked[5, 150]) == (10, 20, 30)
    assert np.asarray(picture).max() == 30  # the shown picture itself is left alone
