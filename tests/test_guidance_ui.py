"""The Guidance tab: it builds without loading a model, and a browser can sample, use presets and run HeadHunter."""

from __future__ import annotations

import json
import re

import gradio as gr
import pytest

from backends.core.client import LocalClient
from backends.core.config import PanelConfig
from backends.core.service import ServiceError
from backends.guidance.service import GuidanceService
from ui import atlas_view, guidance

CONFIG = PanelConfig("guidance", models=("fashion-dit",))


def test_tab_builds_without_loading_a_model():
    service = GuidanceService(device="cpu")
    with gr.Blocks() as demo:
        guidance.build(LocalClient("guidance", service), CONFIG)
    ids = {block.elem_id for block in demo.blocks.values()}
    assert {"guidance-heads", "guidance-baseline", "guidance-guided", "guidance-scores", "guidance-atlas-grid",
            "guidance-before", "guidance-after", "guidance-cancel"} <= ids
    assert service.info()["loaded_models"] == []


LAYOUT = {"layers": 6, "heads": 6, "stack": "fashion-dit self-attention"}


def test_a_head_set_file_is_read_with_the_shared_parser():
    assert guidance.read_head_set({"model": "fashion-dit", "heads": "3.4,L2H2,0.2", "u": 0.5}, LAYOUT) == (
        ["0.2", "2.2", "3.4"], 0.5)
    assert guidance.read_head_set({"heads": "none"}, LAYOUT) == ([], 1.0)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ([1, 2], "JSON object like"),
        ("3.4", "JSON object like"),
        ({"u": 1}, "JSON object like"),
        ({"heads": "9.9", "model": "facebook/DiT-XL-2-256"}, "layers 0–5.*the file is for 'facebook/DiT-XL-2-256'"),
        ({"heads": "2.7"}, "heads 0–5"),
        ({"heads": "two"}, "not a head"),
        ({"heads": "2.1", "u": 3}, "u must be a number between 0 and 1"),
        ({"heads": "2.1", "u": "high"}, "u must be"),
        ({"heads": "2.1", "u": True}, "u must be"),
    ],
)
def test_every_malformed_head_set_gives_a_readable_message(record, message):
    with pytest.raises((ValueError, ServiceError), match=message):
        guidance.read_head_set(record, LAYOUT)


def test_a_head_set_cannot_load_before_the_grid():
    with pytest.raises(ValueError, match="not loaded yet"):
        guidance.read_head_set({"heads": "1.1"}, {})


def test_the_readme_snippet_applies_the_head_set(tmp_path, monkeypatch):
    record = {"model": "fashion-dit", "heads": "0.2,2.2,3.4", "u": 1.0}
    (tmp_path / "head_set.json").write_text(json.dumps(record))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(guidance.apply_snippet(record).replace("steps=20", "steps=2"), namespace)
    assert tuple(namespace["images"].shape) == (4, 1, 28, 28)
    assert "DiffusionPipeline.from_pretrained('facebook/DiT-XL-2-256'" in guidance.apply_snippet(
        {"model": "facebook/DiT-XL-2-256", "heads": "1.2", "u": 1.0})


def test_score_table_pairs_baseline_and_guided_per_seed():
    baseline = {"objective": {"name": "confidence", "values": [0.1, 0.2], "mean": 0.15}, "seconds": 1.0}
    guided = {"objective": {"name": "confidence", "values": [0.3, 0.4], "mean": 0.35}, "seconds": 2.0,
              "seeds": [5, 6], "heads": "2.1", "u": 1.0, "pag_scale": 3.0, "cfg_scale": 1.0, "steps": 20}
    table = guidance._score_table(baseline, guided)
    assert "| 5 | 0.1000 | 0.3000 |" in table and "**0.1500**" in table and "**0.3500**" in table


def _checked(page) -> int:
    return page.locator("#guidance-heads input:checked").count()


@pytest.mark.browser
def test_guidance_tab_in_chromium(page, tmp_path):
    """Default heads, sample baseline vs guided, presets, HeadHunter (and cancelling it), head-set files, errors."""
    expect = pytest.importorskip("playwright.sync_api").expect
    page.get_by_role("tab", name="Guidance").click()
    grid = page.locator("#guidance-heads")
    grid.get_by_text("2.1", exact=True).wait_for(timeout=120_000)
    page.wait_for_function("() => document.querySelectorAll('#guidance-heads input:checked').length === 3")
    expect(page.locator("#guidance-heads-note")).to_contain_text("shipped HeadHunter head set")
    page.get_by_role("button", name="Sample baseline and guided").click()
    page.locator("#guidance-scores table").wait_for(timeout=120_000)
    assert page.locator("#guidance-baseline img").count() == 1 and page.locator("#guidance-guided img").count() == 1
    assert "heads 0.2,2.2,3.4" in page.locator("#guidance-scores").inner_text()  # the first sample shows an effect

    page.get_by_role("radio", name="One layer").check()
    page.get_by_role("button", name="Apply preset").click()
    page.wait_for_function("() => document.querySelectorAll('#guidance-heads input:checked').length === 6")

    page.get_by_text("HeadHunter: search heads by an objective").click()
    cancel = page.locator("#guidance-cancel")
    expect(cancel).to_be_disabled()
    for name, value in (("Seeds per head (M)", "1"), ("Steps", "3")):
        number = page.get_by_label(f"number input for {name}", exact=True)
        number.fill(value)
        number.press("Enter")
    page.get_by_role("button", name="Search heads", exact=True).click()
    found = page.get_by_label("Found heads")
    expect(found).to_have_value(re.compile(r"^\d+\.\d+,\d+\.\d+,\d+\.\d+$"), timeout=120_000)
    expect(cancel).to_be_disabled(timeout=10_000)

    page.get_by_label("number input for Rounds (R)", exact=True).fill("10")
    page.get_by_label("number input for Rounds (R)", exact=True).press("Enter")
    page.get_by_role("button", name="Search heads", exact=True).click()
    expect(cancel).to_be_enabled(timeout=10_000)
    cancel.click()
    expect(found).to_have_value(re.compile("cancelled"), timeout=120_000)
    expect(cancel).to_be_disabled(timeout=10_000)
    assert _checked(page) == 6  # cancelling kept the user's heads

    broken = tmp_path / "broken.json"
    broken.write_text('{"heads": "9.9", "u": 1}')
    page.get_by_test_id("Load head set-upload-button").set_input_files(str(broken))
    expect(page.locator("#guidance-heads-note")).to_contain_text("Not loaded", timeout=30_000)
    expect(page.locator("#guidance-heads-note")).to_contain_text("layers 0–5")
    assert _checked(page) == 6 and page.locator("#guidance-heads .error").count() == 0

    page.get_by_role("button", name="Save head set").click()
    expect(page.locator("#guidance-snippet")).to_contain_text("guided_sample", timeout=30_000)

    label = page.get_by_label("Class (or prompt for text models)")
    label.fill("Spaceship")
    label.press("Enter")
    page.get_by_role("button", name="Sample baseline and guided").click()
    page.get_by_text("unknown class").first.wait_for(timeout=60_000)


@pytest.mark.browser
def test_guidance_head_atlas_in_chromium(page):
    """The atlas as small multiples; a click re-runs the sample with that head off (before/after)."""
    expect = pytest.importorskip("playwright.sync_api").expect
    page.get_by_role("tab", name="Guidance").click()
    page.locator("#guidance-heads").get_by_text("2.1", exact=True).wait_for(timeout=120_000)
    page.get_by_text("Which heads matter here? The head atlas").click()
    page.locator("#guidance-atlas-compute").click()
    atlas = page.locator("#guidance-atlas-grid img")
    atlas.wait_for(timeout=600_000)  # computed once (about a minute on a free CPU), then cached
    expect(page.locator("#guidance-atlas-specific")).to_contain_text("Most task-specific heads")
    box = atlas.bounding_box()
    width = page.evaluate("() => document.querySelector('#guidance-atlas-grid img').naturalWidth")
    scale = box["width"] / width
    x = (atlas_view.LABEL_W + 2.5 * atlas_view.CELL_W) * scale  # first grid (confidence), layer 3, head 2
    y = (atlas_view.TITLE_H + 3.5 * atlas_view.CELL_H) * scale
    atlas.click(position={"x": x, "y": y})
    expect(page.locator("#guidance-atlas-clicked")).to_contain_text("Head 3.2", timeout=180_000)
    assert page.locator("#guidance-before img").count() == 1 and page.locator("#guidance-after img").count() == 1
