"""The Referring-segmentation tab in headless Chromium, and the launched app's loopback-only binding."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCENE = ROOT / "assets" / "segmentation" / "examples" / "scene_3.png"
SHOTS = Path("/tmp/shots")
COUNT = re.compile(r"count:\s*(\d+)")
GROUNDING = re.compile(r"grounding box:\s*(\[[^\]]*\])")


def _open_tab(page):
    """Switch to the segmentation tab; return its panel (the tab panel holding the answer)."""
    page.get_by_role("tab", name="Referring segmentation").click()
    return page.get_by_role("tabpanel").filter(has=page.locator("#segmentation-answer"))


def _wait_for_count(page) -> int:
    """Wait until the answer line shows a count; return it."""
    answer = page.locator("#segmentation-answer")
    answer.get_by_text("count:").wait_for(timeout=60_000)
    return int(COUNT.search(answer.inner_text()).group(1))


@pytest.mark.browser
def test_segmentation_tab_in_chromium(page):
    """Upload a scene, type an expression, Segment: the overlay, the count and the API answer appear."""
    panel = _open_tab(page)
    panel.locator("input[type=file]").set_input_files(str(SCENE))
    result = page.locator("#segmentation-result img")
    result.wait_for(timeout=30_000)  # the upload itself is shown first, to click on
    uploaded = result.get_attribute("src")
    panel.get_by_label("Expression").fill("the pairs of trousers")
    panel.get_by_role("button", name="Segment", exact=True).click()
    count = _wait_for_count(page)
    assert count >= 1
    assert result.get_attribute("src") != uploaded and result.evaluate("img => img.naturalWidth") > 0
    details = page.locator("#segmentation-details").inner_text()
    assert "grounding_box" in details and "presence_score" in details
    assert "Present: yes" in page.locator("#segmentation-answer").inner_text()
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "segmentation.png"), full_page=True)


@pytest.mark.browser
def test_segmenting_without_an_image_explains_and_the_tab_still_works(page):
    """Segment with no image shows a clear message; an example afterwards still segments."""
    panel = _open_tab(page)
    panel.get_by_label("Expression").fill("the bag")
    panel.get_by_role("button", name="Segment", exact=True).click()
    page.get_by_text("Please upload an image or pick an example.").first.wait_for(timeout=30_000)
    assert page.locator("#segmentation-result img").count() == 0
    panel.get_by_role("gridcell", name="the bag to the right of the dress").click()
    assert _wait_for_count(page) >= 1
    assert page.locator("#segmentation-result img").count() == 1


def test_app_listens_only_on_loopback(app_url: str):
    """`python app.py` binds 127.0.0.1 only: no listening socket elsewhere, and other addresses refuse."""
    port = urlparse(app_url).port
    listeners = [c for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.pid]
    app_pids = {c.pid for c in listeners if c.laddr.port == port}
    assert app_pids, f"no process found listening on port {port}"
    app_sockets = [c.laddr for c in listeners if c.pid in app_pids]
    assert all(address.ip == "127.0.0.1" for address in app_sockets), app_sockets
    others = [a.address for addresses in psutil.net_if_addrs().values() for a in addresses
              if a.family == socket.AF_INET and not a.address.startswith("127.")]
    for address in others:
        with socket.socket() as sock:
            sock.settimeout(2)
            assert sock.connect_ex((address, port)) != 0, f"the app answers on {address}:{port}"


@pytest.mark.browser
def test_a_photo_with_a_box_then_clear_then_remove(page, tmp_path: Path):
    """A real photo: the first box corner is marked without an error, the second gives a GrabCut mask inside the
    box with the out-of-domain note; Clear empties the answer; removing the image removes the result."""
    from PIL import Image
    from skimage import data as skdata

    photo = tmp_path / "chelsea.png"
    Image.fromarray(skdata.chelsea()).save(photo)  # 451×300: a cat's face
    panel = _open_tab(page)
    panel.locator("input[type=file]").set_input_files(str(photo))
    result = page.locator("#segmentation-result img")
    result.wait_for(timeout=30_000)
    panel.get_by_label("Box corner").check()
    shown = result.bounding_box()
    sx, sy = shown["width"] / 451, shown["height"] / 300
    before = result.get_attribute("src")
    result.click(position={"x": 80 * sx, "y": 40 * sy})
    page.wait_for_function("src => document.querySelector('#segmentation-result img').src !== src", arg=before,
                           timeout=30_000)  # the marker is drawn
    assert page.locator(".toast-body").count() == 0
    result.click(position={"x": 400 * sx, "y": 290 * sy})
    _wait_for_count(page)
    assert "grabcut" in page.locator("#segmentation-answer").inner_text()
    assert "unlike the embedded model" in page.locator("#segmentation-domain").inner_text()
    box = json.loads(panel.get_by_label("Box [x0, y0, x1, y1] (image pixels)").input_value())
    grounding = json.loads(GROUNDING.search(page.locator("#segmentation-answer").inner_text()).group(1))
    assert box[0] <= grounding[0] and box[1] <= grounding[1] and grounding[2] <= box[2] + 1 and \
        grounding[3] <= box[3] + 1
    panel.get_by_role("button", name="Clear clicks and box").click()
    page.locator("#segmentation-answer").get_by_text("count:").wait_for(state="detached", timeout=30_000)
    panel.get_by_role("button", name="Remove Image").click()
    page.locator("#segmentation-result img").wait_for(state="detached", timeout=30_000)
