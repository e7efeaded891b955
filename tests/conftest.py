"""Shared fixtures: offline mode, free loopback ports, and a served backend process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 120) -> None:
    """Block until something listens on ``port`` (fails if ``process`` dies or time runs out)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited early with code {process.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"nothing listens on port {port} after {timeout} s")


def start_process(args: list[str], port: int, log: Path, **env: str) -> subprocess.Popen:
    """Run ``python ARGS`` from the repo root, logging to ``log``; wait until it listens on ``port``."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    process = subprocess.Popen(
        [sys.executable, *args], cwd=ROOT, env=environment, stdout=log.open("w"), stderr=subprocess.STDOUT
    )
    wait_for_port(port, process)
    return process


@pytest.fixture
def echo_server(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """The echo service served by `backends.serve` in a second process on loopback."""
    port = free_port()
    code = (
        "import backends.core.registry as r; r.SERVICES['echo'] = 'tests.echo_service:EchoService'\n"
        "r.APIS['echo'] = 'tests.echo_service:EchoAPI'\n"
        "from backends.serve.__main__ import build_server\n"
        f"build_server('echo').queue().launch(server_name='127.0.0.1', server_port={port})\n"
    )
    process = start_process(["-c", code], port, tmp_path / "echo-server.log")
    yield f"http://127.0.0.1:{port}", process
    process.kill()
    process.wait()


CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]
ARTIFACTS = ROOT / "artifacts"


@pytest.fixture(scope="session")
def app_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The whole HeadLab app launched as a user would (`python app.py`), on a free loopback port."""
    port = free_port()
    process = start_process(["app.py"], port, tmp_path_factory.mktemp("app") / "app.log", GRADIO_SERVER_PORT=str(port))
    yield f"http://127.0.0.1:{port}"
    process.kill()
    process.wait()


@pytest.fixture
def page(app_url: str, request: pytest.FixtureRequest):
    """A headless Chromium page on the app; a screenshot is saved to artifacts/ when the test fails."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path("/usr/bin/chromium").exists():
        pytest.skip("Debian chromium is not installed (make test installs it)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(app_url, wait_until="domcontentloaded")  # Gradio's heartbeat keeps the network busy
        page.get_by_role("tab").first.wait_for(timeout=60_000)
        yield page
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
        browser.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Remember each phase's report on the test item (the `page` fixture reads it to save failure screenshots)."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture(scope="module")
def empty_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """HEADLAB_CACHE_DIR set to a fresh folder for one test module (cached results then come from what ships)."""
    with pytest.MonkeyPatch.context() as patch:
        folder = tmp_path_factory.mktemp("cache")
        patch.setenv("HEADLAB_CACHE_DIR", str(folder))
        yield folder
