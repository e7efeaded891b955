"""The Guidance tab: it builds without loading a model, and a browser can sample, use presets and run HeadHunter."""

from __future__ import annotations

import re

import gradio as gr
import pytest

from backends.core.client import LocalClient
from backends.core.config import PanelConfig
from backends.guidance.service import GuidanceService
from ui import guidance

CONFIG = PanelConfig("guidance", models=("fashion-dit",))


def test_tab_builds_without_loading_a_model():
    service = GuidanceService(device="cpu")
    with gr.Blocks() as demo:
        guidance.build(LocalClient("guidance", service), CONFIG)
    ids = {block.elem_id for block in demo.blocks.values()}
    assert {"guidance-heads", "guidance-baseline", "guidance-guided", "guidance-scores"} <= ids
    assert service.info()["loaded_models"] == []


def test_score_table_pairs_baseline_and_guided_per_seed():
    baseline = {"objective": {"name": "confidence", "values": [0.1, 0.2], "mean": 0.15}, "seconds": 1.0}
    guided = {"objective": {"name": "confidence", "values": [0.3, 0.4], "mean": 0.35}, "seconds": 2.0,
              "seeds": [5, 6], "heads": "2.1", "u": 1.0, "pag_scale": 3.0, "cfg_scale": 1.0, "steps": 20}
    table = guidance._score_table(baseline, guided)
    assert "| 5 | 0.1000 | 0.3000 |" in table and "**0.1500**" in table and "**0.3500**" in table


@pytest.mark.browser
def test_guidance_tab_in_chromium(page):
    """Pick heads, sample baseline vs guided, apply a preset, run a small HeadHunter search, see a clear error."""
    expect = pytest.importorskip("playwright.sync_api").expect
    page.get_by_role("tab", name="Guidance").click()
    grid = page.locator("#guidance-heads")
    grid.get_by_text("2.1", exact=True).wait_for(timeout=120_000)
    grid.get_by_text("2.1", exact=True).click()
    page.get_by_role("button", name="Sample baseline and guided").click()
    page.locator("#guidance-scores table").wait_for(timeout=120_000)
    assert page.locator("#guidance-baseline img").count() == 1 and page.locator("#guidance-guided img").count() == 1
    assert "heads 2.1" in page.locator("#guidance-scores").inner_text()

    page.get_by_role("radio", name="One layer").check()
    page.get_by_role("button", name="Apply preset").click()
    page.wait_for_function("() => document.querySelectorAll('#guidance-heads input:checked').length === 6")

    page.get_by_text("HeadHunter: search heads by an objective").click()
    for name, value in (("Seeds per head (M)", "1"), ("Steps", "3")):
        number = page.get_by_label(f"number input for {name}", exact=True)
        number.fill(value)
        number.press("Enter")
    page.get_by_role("button", name="Search heads", exact=True).click()
    found = page.get_by_label("Found heads")
    expect(found).to_have_value(re.compile(r"^\d+\.\d+,\d+\.\d+,\d+\.\d+$"), timeout=120_000)

    label = page.get_by_label("Class (or prompt for text models)")
    label.fill("Spaceship")
    label.press("Enter")
    page.get_by_role("button", name="Sample baseline and guided").click()
    page.get_by_text("unknown class").first.wait_for(timeout=60_000)
