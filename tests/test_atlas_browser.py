"""The head atlas in headless Chromium: the Heads panel's "Which heads matter here?" tab (small multiples, a click
re-runs the user's text with that head off) and the Atlas tab (the four models side by side, links to the panels)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ui import atlas_view

ROOT = Path(__file__).resolve().parents[1]



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
        expect(page.locator(f"#atlas-card-{panel}")).to_contain_text("top heads")
        expect(page.locator(f"#atlas-card-{panel}")).to_contain_text("Median specificity")
    expect(page.locator("#atlas-card-heads")).to_contain_text("16.0")
    expect(page.locator("#atlas-dissociations")).to_contain_text("Double dissociations")
    page.screenshot(path="artifacts/atlas-tab.png", full_page=True)
    page.locator("#atlas-open-guidance").click()
    expect(page.get_by_role("tab", name="Guidance")).to_have_attribute("aria-selected", "true")


def test_segmentation_atlas_switches_a_head_off_on_the_users_scene(page):
    """Upload a scene and an expression; clicking size's top head (0.2) shows the mask with it off, and the IoU."""
    expect = pytest.importorskip("playwright.sync_api").expect
    page.get_by_role("tab", name="Referring segmentation").click()
    panel = page.get_by_role("tabpanel").filter(has=page.locator("#segmentation-answer"))
    panel.locator("input[type=file]").set_input_files(str(ROOT / "assets" / "segmentation" / "examples" /
                                                          "scene_3.png"))
    page.locator("#segmentation-result img").wait_for(timeout=30_000)
    panel.get_by_label("Expression").fill("the largest item")
    page.get_by_text("Which heads matter here? The head atlas").click()
    page.locator("#segmentation-atlas-compute").click()
    page.locator("#segmentation-atlas-grid img").wait_for(timeout=120_000)
    click_cell(page, "#segmentation-atlas-grid", 3, 0, 2, 4)  # size, layer 0, head 2
    expect(page.locator("#segmentation-atlas-clicked")).to_contain_text("Head 0.2", timeout=120_000)
    expect(page.locator("#segmentation-atlas-clicked")).to_contain_text("overlaps the original by IoU")
    assert page.locator("#segmentation-atlas-before img").count() == 1
    assert page.locator("#segmentation-atlas-after img").count() == 1
    page.screenshot(path="artifacts/atlas-segmentation-panel.png", full_page=True)
    panel.get_by_label("Expression").fill("the smallest item")  # a changed input clears the comparison
    expect(page.locator("#segmentation-atlas-after img")).to_have_count(0)


def test_restoration_atlas_switches_a_head_off_on_the_users_photo(page):
    """Pick the rainy example; clicking rain's top head (0.0) shows the restoration with it off and the PSNR drop."""
    expect = pytest.importorskip("playwright.sync_api").expect
    page.get_by_role("tab", name="Restoration").click()
    panel = page.get_by_role("tabpanel").filter(has=page.locator("#restoration-metrics"))
    panel.get_by_role("gridcell").filter(has=page.locator("img[src$='flower_rain.png']")).click()
    panel.get_by_label("Instruction").fill("remove the rain")
    page.get_by_text("Which heads matter here? The head atlas").click()
    page.locator("#restoration-atlas-compute").click()
    page.locator("#restoration-atlas-grid img").wait_for(timeout=120_000)
    click_cell(page, "#restoration-atlas-grid", 2, 0, 0, 8)  # rain, layer 0, head 0
    expect(page.locator("#restoration-atlas-clicked")).to_contain_text("Head 0.0", timeout=180_000)
    assert page.locator("#restoration-atlas-after img").count() == 1
    page.screenshot(path="artifacts/atlas-restoration-panel.png", full_page=True)
