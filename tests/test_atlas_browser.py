"""The head atlas in headless Chromium: the Heads panel's "Which heads matter here?" tab (small multiples, a click
re-runs the user's text with that head off) and the Atlas tab (the four models side by side, links to the panels)."""

from __future__ import annotations

import pytest

from ui import atlas_view

ARTIFACTS_NAME = "atlas"


def click_cell(page, selector: str, task_index: int, layer: int, head: int, heads: int) -> None:
    """Click head ``layer.head`` of the ``task_index``-th grid of the atlas image at ``selector``."""
    image = page.locator(f"{selector} img")
    box = image.bounding_box()
    width = page.evaluate(f"() => document.querySelector('{selector} img').naturalWidth")
    scale = box["width"] / width
    grid_w = atlas_view.LABEL_W + heads * atlas_view.CELL_W
    x = task_index * (grid_w + atlas_view.GAP) + atlas_view.LABEL_W + (head + 0.5) * atlas_view.CELL_W
    y = atlas_view.TITLE_H + (layer + 0.5) * atlas_view.CELL_H
    image.click(position={"x": x * scale, "y": y * scale})


def test_heads_atlas_tab_reruns_the_text_with_the_clicked_head_off(page):
    """The Heads atlas shows four task grids; clicking induction's head 16.0 compares the continuation with it off."""
    expect = pytest.importorskip("playwright.sync_api").expect
    page.get_by_role("tab", name="Heads", exact=True).click()
    page.get_by_role("tab", name="Which heads matter here?").click()
    page.locator("#heads-atlas-compute").click()
    page.locator("#heads-atlas-grid img").wait_for(timeout=300_000)
    expect(page.locator("#heads-atlas-specific")).to_contain_text("Most task-specific heads")
    expect(page.locator("#heads-atlas-specific")).to_contain_text("induction: 16.0")
    click_cell(page, "#heads-atlas-grid", 0, 16, 0, 9)
    expect(page.locator("#heads-atlas-clicked")).to_contain_text("Head 16.0", timeout=180_000)
    expect(page.locator("#heads-atlas-clicked")).to_contain_text("On your text")
    assert page.locator("#heads-atlas-after textarea").input_value()
    page.screenshot(path="artifacts/atlas-heads-panel.png", full_page=True)


def test_atlas_tab_shows_the_models_side_by_side_and_links_into_the_panels(page):
    """Loading the atlases fills one card per panel and the specificity distributions; a link opens its panel."""
    expect = pytest.importorskip("playwright.sync_api").expect
    page.get_by_role("tab", name="Atlas", exact=True).click()
    page.locator("#atlas-load").click()
    page.locator("#atlas-specificity img").wait_for(timeout=600_000)
    for panel in ("heads", "guidance", "segmentation", "restoration"):
        expect(page.locator(f"#atlas-card-{panel}")).to_contain_text("| task | top heads |")
    expect(page.locator("#atlas-dissociations")).to_contain_text("Double dissociations")
    page.screenshot(path="artifacts/atlas-tab.png", full_page=True)
    page.locator("#atlas-open-guidance").click()
    expect(page.get_by_role("tab", name="Guidance")).to_have_attribute("aria-selected", "true")
