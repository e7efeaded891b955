"""The app with the restoration panel on Ray Serve (`python -m backends.serve.ray`), in headless Chromium."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import ROOT, free_port, start_process
from tests.test_restoration_browser import SHOTS, _open_tab, _restore_and_wait

pytest.importorskip("ray.serve")
pytestmark = pytest.mark.timeout(300)


def wait_for_application(url: str, process: subprocess.Popen, timeout: float = 180) -> None:
    """Block until Serve's ingress answers for the application at ``url``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "python -m backends.serve.ray exited early"
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{url} did not come up within {timeout} s")


@pytest.fixture(scope="module")
def app_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Ray Serve running the restoration panel, and `python app.py` with that panel on `backend: ray` (the `page`
    fixture opens this app instead of the default one)."""
    logs = tmp_path_factory.mktemp("ray-app")
    serve_url = f"http://127.0.0.1:{free_port()}"
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    env.update(PYTHONPATH=str(ROOT), HEADLAB_RESTORATION_BACKEND="ray", HEADLAB_RAY_SERVE_URL=serve_url,
               HEADLAB_TORCH_THREADS="1")
    deployer = subprocess.Popen(
        [sys.executable, "-m", "backends.serve.ray", "--num-cpus", "2"], cwd=ROOT, env=env,
        stdout=(logs / "serve-ray.log").open("w"), stderr=subprocess.STDOUT,
    )
    app = None
    try:
        wait_for_application(f"{serve_url}/restoration", deployer)
        port = free_port()
        app = start_process(["app.py"], port, logs / "app.log", **{**env, "GRADIO_SERVER_PORT": str(port)})
        yield f"http://127.0.0.1:{port}"
    finally:
        if app is not None:
            app.kill()
            app.wait()
        deployer.send_signal(signal.SIGTERM)  # shuts Serve and the local Ray instance down
        deployer.wait(timeout=60)


@pytest.mark.browser
def test_restoration_on_ray_serve_in_chromium(page):
    panel = _open_tab(page)
    panel.get_by_role("gridcell").filter(has=page.locator("img[src$='flower_rain.png']")).click()
    panel.get_by_label("Instruction").fill("please remove the rain streaks")
    page.locator("#restoration-understood").get_by_text("Understood as: rain").wait_for(timeout=60_000)
    assert "rain" in _restore_and_wait(page, panel)
    page.get_by_text("models loaded: textprompt-ir").first.wait_for(timeout=30_000)  # the replica's health
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "restoration-ray.png"), full_page=True)
