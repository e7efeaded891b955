"""The Restoration tab in headless Chromium: an example restored by a typed instruction, and bad input handled."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHOTS = Path("/tmp/shots")
PSNR_ROW = re.compile(r"^(Input|Model[^\t|]*)\s*[\t|]\s*([\d.]+)", re.MULTILINE)


def _open_tab(page):
    """Switch to the restoration tab; return its panel (the tab panel holding the metrics)."""
    page.get_by_role("tab", name="Restoration").click()
    return page.get_by_role("tabpanel").filter(has=page.locator("#restoration-metrics"))


def _restore_and_wait(page, panel) -> str:
    """Press Restore and wait for the metrics table and both result images; return the metrics text."""
    panel.get_by_role("button", name="Restore", exact=True).click()
    page.locator("#restoration-metrics table").wait_for(timeout=90_000)
    assert page.locator("#restoration-comparison img").count() == 2
    assert page.locator("#restoration-baseline img").count() == 1
    return page.locator("#restoration-metrics").inner_text()


@pytest.mark.browser
def test_restoration_tab_in_chromium(page):
    """Pick the rainy example, type an instruction: it is understood as rain, and restoring beats the input's PSNR."""
    panel = _open_tab(page)
    panel.get_by_role("gridcell").filter(has=page.locator("img[src$='flower_rain.png']")).click()
    instruction = panel.get_by_label("Instruction")
    instruction.fill("there are rain streaks all over it, clean them away")
    understood = page.locator("#restoration-understood")
    understood.get_by_text("Understood as: rain").wait_for(timeout=60_000)
    metrics = _restore_and_wait(page, panel)
    assert "rain" in metrics and "guided" in metrics.lower()
    psnr = dict(PSNR_ROW.findall(metrics))
    model_psnr = next(float(value) for name, value in psnr.items() if name.startswith("Model"))
    assert model_psnr > float(psnr["Input"]), metrics
    assert '"degradation":"rain"' in "".join(page.locator("#restoration-details").inner_text().split())
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "restoration.png"), full_page=True)


@pytest.mark.browser
def test_restoring_bad_input_explains_and_the_tab_still_works(page, tmp_path: Path):
    """No image, then no instruction, give clear messages; the suggested instruction then restores."""
    panel = _open_tab(page)
    panel.get_by_role("button", name="Restore", exact=True).click()
    page.get_by_text("Please upload an image or pick an example.").first.wait_for(timeout=30_000)

    Image.new("RGB", (10, 40), (90, 90, 90)).save(tmp_path / "tiny.png")
    panel.locator("input[type=file]").first.set_input_files(str(tmp_path / "tiny.png"))
    page.locator("#restoration-understood").get_by_text("too small").wait_for(timeout=30_000)
    panel.get_by_label("Instruction").press_sequentially("denoise", delay=50)
    panel.get_by_role("button", name="Restore", exact=True).click()
    toast = page.locator(".toast-body").filter(has_text="too small")
    toast.first.wait_for(timeout=30_000)
    page.wait_for_timeout(2_000)
    assert toast.count() == 1 and toast.inner_text().count("too small") == 1  # once, not once per keystroke
    panel.get_by_label("Instruction").fill("")

    rng = np.random.default_rng(0)
    gradient = np.linspace(60, 200, 96)[None, :, None] * np.ones((96, 1, 3))
    noisy = np.clip(gradient + rng.normal(0, 40, gradient.shape), 0, 255).astype(np.uint8)
    Image.fromarray(noisy).save(tmp_path / "noisy.png")
    panel.locator("input[type=file]").first.set_input_files(str(tmp_path / "noisy.png"))
    page.locator("#restoration-understood").get_by_text("No instruction yet. Try:").wait_for(timeout=30_000)
    panel.get_by_role("button", name="Restore", exact=True).click()
    page.get_by_text("Type an instruction first.").first.wait_for(timeout=30_000)

    panel.get_by_role("button", name="Use the suggestion").click()
    page.locator("#restoration-understood").get_by_text("Understood as: noise").wait_for(timeout=60_000)
    assert "noise" in _restore_and_wait(page, panel)


SCENE = Path(__file__).resolve().parents[1] / "assets" / "segmentation" / "examples" / "scene_11.png"


@pytest.mark.browser
def test_one_region_named_in_words_is_restored_in_chromium(page, tmp_path: Path):
    """A noisy scene, "remove the noise" and the region "the bag": the region is drawn, only it is restored (PSNR
    inside it rises, outside it stays), and CBM3D compares on the same region."""
    from backends.core.images import to_pil
    from backends.restoration.evaluate import degraded_case

    with Image.open(SCENE) as scene:
        clean = scene.convert("RGB")
    clean.save(tmp_path / "clean.png")
    to_pil(degraded_case(np.asarray(clean), "noise", 25.0, seed=0)).save(tmp_path / "noisy.png")
    panel = _open_tab(page)
    assert page.locator("#restoration-use-suggestion").is_disabled()  # no suggestion yet
    panel.locator("input[type=file]").first.set_input_files(str(tmp_path / "noisy.png"))
    page.locator("#restoration-understood").get_by_text("No instruction yet. Try:").wait_for(timeout=60_000)
    page.locator("#restoration-use-suggestion:not([disabled])").wait_for(timeout=30_000)
    panel.get_by_label("Instruction").fill("remove the noise")
    page.locator("#restoration-understood").get_by_text("Understood as: noise").wait_for(timeout=60_000)
    page.locator("#restoration-use-suggestion[disabled]").wait_for(timeout=30_000)
    panel.get_by_text("Restore one region (optional)").click()
    panel.get_by_text("Clean reference (optional, for PSNR/SSIM)").click()
    region = page.locator("#restoration-region textarea")
    region.fill("the bag")
    region.press("Enter")
    page.locator("#restoration-region-view img").wait_for(timeout=60_000)
    files = panel.locator("input[type=file]")
    files.nth(files.count() - 1).set_input_files(str(tmp_path / "clean.png"))
    page.wait_for_timeout(1_000)
    metrics = _restore_and_wait(page, panel)
    assert "region from the expression 'the bag'" in metrics
    rows = {line.split("\t")[0]: line.split("\t")[1:] for line in metrics.splitlines() if "\t" in line}
    input_row = next(cells for name, cells in rows.items() if name.startswith("Input"))
    model_row = next(cells for name, cells in rows.items() if name.startswith("Model"))
    inside = [float(cells[1].split(" / ")[0]) for cells in (input_row, model_row)]
    outside = [float(cells[2].split(" / ")[0]) for cells in (input_row, model_row)]
    assert inside[1] > inside[0] + 3 and abs(outside[1] - outside[0]) < 0.5, metrics
    panel.get_by_role("button", name="Compare with CBM3D").click()
    page.locator("#restoration-cbm3d-metrics").get_by_text("in region").wait_for(timeout=120_000)
    assert page.locator("#restoration-cbm3d img").count() == 1
    assert page.locator(".toast-body").count() == 0
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "restoration_region.png"), full_page=True)
