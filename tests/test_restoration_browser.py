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
