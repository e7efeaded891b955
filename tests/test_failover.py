"""A panel served by another process dies and comes back: the app says so, other panels keep working, it recovers."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from tests.conftest import free_port, start_process


def serve_heads(port: int, log: Path) -> subprocess.Popen:
    return start_process(["-m", "backends.serve", "heads", "--port", str(port)], port, log)


def stop(process: subprocess.Popen) -> None:
    process.kill()
    process.wait()


def test_heads_backend_dies_and_recovers(tmp_path: Path):
    heads_port, app_port = free_port(), free_port()
    heads = serve_heads(heads_port, tmp_path / "heads-1.log")
    app = start_process(
        ["app.py"], app_port, tmp_path / "app.log",
        GRADIO_SERVER_PORT=str(app_port), HEADLAB_HEADS_BACKEND=f"http://127.0.0.1:{heads_port}",
    )
    try:
        client = Client(f"http://127.0.0.1:{app_port}/", verbose=False)
        assert client.predict("minilm", "Attention heads", api_name="/heads_analyze")["n_heads"] == 12
        stop(heads)
        with pytest.raises(AppError, match="heads backend .* is unavailable"):
            client.predict("minilm", "Attention heads", api_name="/heads_analyze")
        assert client.predict(api_name="/guidance_info")["status"] == "ok"  # another panel keeps working
        heads = serve_heads(heads_port, tmp_path / "heads-2.log")
        assert client.predict("minilm", "Attention heads", api_name="/heads_analyze")["n_layers"] == 6
    finally:
        stop(heads)
        stop(app)
