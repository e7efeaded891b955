"""The Restoration tab builds against the real service, and its texts read the service's answers."""

from __future__ import annotations

import gradio as gr
from PIL import Image

from backends.core.client import LocalClient
from backends.core.config import load_config
from ui import restoration


def test_the_tab_builds_with_examples_from_heldout_images():
    config = load_config().panels["restoration"]
    with gr.Blocks():
        restoration.build(LocalClient("restoration"), config)
    examples = restoration._examples()
    assert len(examples) >= 5
    for image_path, prompt, reference_path in examples:
        with Image.open(image_path) as image, Image.open(reference_path) as reference:
            assert image.size == reference.size
        assert isinstance(prompt, str)


def test_texts_show_understanding_suggestion_and_metrics():
    client = LocalClient("restoration")
    image_path, prompt, reference_path = restoration._examples()[0]
    with Image.open(image_path) as image, Image.open(reference_path) as reference:
        understood = restoration.understanding_text(client.call("understand", image, prompt, ""))
        suggested = restoration.understanding_text(client.call("understand", image, "", ""))
        _, _, _, summary = client.call("restore_compare", image, prompt, "", reference)
    assert understood.startswith("**Understood as:")
    assert "Try:" in suggested
    table = restoration.metrics_table(summary)
    assert "PSNR" in table and summary["baseline"]["name"] in table
