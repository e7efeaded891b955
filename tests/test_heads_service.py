"""The Heads service through both transports: in-process and a real second process over HTTP (gradio_client)."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from PIL import Image

from backends.core.client import LocalClient, RemoteClient
from backends.core.service import ServiceError
from backends.heads.attention import CaptureLayers, run_with_attention
from backends.heads.service import HeadsService
from tests.conftest import free_port, start_process

TEXT = "When Mary and John went to the store, John gave a drink to Mary."


@pytest.fixture(scope="module")
def service() -> HeadsService:
    """One HeadsService (models load on first use)."""
    return HeadsService()


@pytest.fixture(scope="module")
def client(service) -> LocalClient:
    """The in-process client over that service."""
    return LocalClient("heads", service)


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RemoteClient]:
    """``python -m backends.serve heads --port N`` in a second process on loopback, reached over HTTP."""
    port = free_port()
    args = ["-m", "backends.serve", "heads", "--port", str(port)]
    process = start_process(args, port, tmp_path_factory.mktemp("heads-server") / "server.log")
    yield RemoteClient("heads", f"http://127.0.0.1:{port}")
    process.kill()
    process.wait()


def test_analyze_default_model_fields(client):
    result = client.call("heads_analyze", "", TEXT)
    assert result["model"] == "smollm2"
    assert (result["n_layers"], result["n_heads"], result["n_kv_heads"]) == (30, 9, 3)
    assert result["kv_groups"] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert result["tokens"][:3] == ["When", " Mary", " and"] and result["n_tokens"] == len(result["tokens"])
    assert result["truncated"] is False and result["notice"] == "" and result["is_causal"] is True
    for name in ("entropy", "entropy_fraction", "max_weight", "first_token"):
        grid = result["stats"][name]
        assert len(grid) == 30 and all(len(row) == 9 for row in grid)
        assert all(value >= 0 for row in grid for value in row)
    assert all(0 < value <= 1 for row in result["stats"]["max_weight"] for value in row)
    json.dumps(result)  # JSON-able


def test_model_view_image_and_layout(client):
    image, layout = client.call("heads_model_view", "", TEXT, 0)
    assert isinstance(image, Image.Image)
    assert layout["rows_are"] == "head" and len(layout["rows"]) == 9 and len(layout["columns"]) == 30
    assert layout["columns"][-1] + layout["thumb"] <= image.width
    hidden, _ = client.call("heads_model_view", "", TEXT, 1)
    assert hidden.tobytes() != image.tobytes()


@pytest.mark.parametrize("view", ["head", "mean", "rollout"])
def test_maps(client, view):
    image = client.call("heads_map", "", TEXT, view, 3, 2, 1)
    assert isinstance(image, Image.Image) and image.width > 300


@pytest.mark.parametrize(("figure", "fmt"), [("head", "png"), ("model", "svg"), ("head", "csv"), ("rollout", "json")])
def test_exports(client, figure, fmt):
    exported = client.call("heads_export", "", TEXT, figure, fmt, 2, 5, 0)
    assert exported["filename"].endswith(f".{fmt}")
    content = exported["content"]
    if fmt == "png":
        assert Image.open(io.BytesIO(base64.b64decode(content))).format == "PNG"
    elif fmt == "svg":
        assert "<svg" in content
    elif fmt == "csv":
        assert content.splitlines()[0].startswith("query \\ key,0 When")
    else:
        data = json.loads(content)
        assert data["view"] == "rollout" and len(data["attention"]) == len(data["rows"]) == len(data["columns"])


def test_head_export_matches_the_captured_map(client):
    data = json.loads(client.call("heads_export", "", TEXT, "head", "json", 4, 7, 0)["content"])
    assert (data["layer"], data["head"], data["kv_head"]) == (4, 7, 2)
    rows = data["attention"]
    assert all(abs(sum(row) - 1) < 1e-4 for row in rows)
    assert all(not any(row[index + 1 :]) for index, row in enumerate(rows))  # causal: nothing after the query


def test_bertviz_offline_page(client):
    result = client.call("heads_bertviz", "", TEXT, "head")
    assert result["n_tokens"] == 16 and "define('d3'" in result["document"]


def test_minilm_and_truncation(client):
    result = client.call("heads_analyze", "minilm", "word " * 700)
    assert result["model"] == "minilm" and result["is_causal"] is False
    assert result["truncated"] and result["n_tokens"] == 512 and "only the first 512 tokens" in result["notice"]
    with pytest.raises(ServiceError, match="short inputs"):
        client.call("heads_bertviz", "minilm", "word " * 700, "model")
    image, layout = client.call("heads_model_view", "minilm", "word " * 700, 0)
    assert layout["rows_are"] == "head" and image.width > 100


LONG_TEXT = " ".join(
    f"Sentence {index} tells of the {index % 7}th river and the {index % 5}th hill." for index in range(40)
)


def test_long_maps_are_pooled_and_a_zoom_is_exact(client, service):
    info = client.call("heads_analyze", "", LONG_TEXT)
    n_tokens = info["n_tokens"]
    assert 512 < n_tokens <= 768  # blocks of 3 tokens
    pooled = json.loads(client.call("heads_export", "", LONG_TEXT, "head", "json", 18, 6, 0)["content"])
    assert len(pooled["rows"]) == len(pooled["columns"]) == -(-n_tokens // 3) and pooled["rows"][0] == "0–2"
    zoom = (400, 450, 0, 30)
    found = json.loads(client.call("heads_export", "", LONG_TEXT, "head", "json", 18, 6, 0, *zoom)["content"])
    assert (found["query_start"], found["query_end"], found["key_start"], found["key_end"]) == zoom
    capture = CaptureLayers([18], rows=range(400, 450))
    run_with_attention(service.model(""), LONG_TEXT, [capture])
    torch.testing.assert_close(torch.tensor(found["attention"]), capture.maps[18][6, :, :30], atol=1e-6, rtol=0)
    # a pooled block is the mean of the exact weights it covers
    torch.testing.assert_close(
        torch.tensor(pooled["attention"][134][:10]),
        capture.maps[18][6, 2:5, :30].reshape(3, 10, 3).mean(dim=(0, 2)),
        atol=1e-6,
        rtol=0,
    )
    image, layout = client.call("heads_model_view", "", LONG_TEXT, 0, 100, 160)
    assert layout["window"] == [100, 160] and isinstance(image, Image.Image)


@pytest.mark.parametrize(
    ("window", "message"),
    [
        ((5, 3, -1, -1), "query window 5–3"),
        ((0, 10_000, -1, -1), "query window 0–10000"),
        ((-4, 0, -1, -1), "query"),
        ((0, 0, 5, 2), "key window 5–2"),
    ],
)
def test_bad_zoom_windows_are_refused(client, window, message):
    with pytest.raises(ServiceError, match=message):
        client.call("heads_map", "", TEXT, "head", 0, 0, 0, *window)


def test_rollout_is_refused_beyond_its_limit(client):
    long_text = "The river runs past the hill and the mill. " * 120
    assert client.call("heads_analyze", "", long_text)["n_tokens"] > 1024
    with pytest.raises(ServiceError, match="rollout .* up to 1,024 tokens"):
        client.call("heads_map", "", long_text, "rollout", 0, 0, 0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("heads_analyze", "", ""), "empty"),
        (("heads_analyze", "", "   \n "), "empty"),
        (("heads_analyze", "", "\x00\x01\x02\x03binary\x04\x05"), "does not look like text"),
        (("heads_analyze", "gpt2", TEXT), "unreachable"),
        (("heads_analyze", "not a model!", TEXT), "not a model id"),
        (("heads_map", "", TEXT, "head", 30, 0, 0), "layer 30 does not exist"),
        (("heads_map", "", TEXT, "head", 0, 9, 0), "head 9 does not exist"),
        (("heads_map", "", TEXT, "sideways", 0, 0, 0), "unknown view"),
        (("heads_export", "", TEXT, "model", "csv", 0, 0, 0), "JSON/CSV export is for one map"),
        (("heads_export", "", TEXT, "head", "gif", 0, 0, 0), "unknown export format"),
    ],
)
def test_bad_input_gives_a_clear_error(client, args, message):
    with pytest.raises(ServiceError, match=message):
        client.call(*args)
    assert client.call("heads_analyze", "", TEXT)["model"] == "smollm2"  # still usable


def test_remote_transport_matches_in_process(client, remote):
    local = client.call("heads_analyze", "minilm", TEXT)
    answer = remote.call("heads_analyze", "minilm", TEXT)
    assert answer["tokens"] == local["tokens"] and set(answer["stats"]) == set(local["stats"])
    for name, grid in local["stats"].items():  # another process may sum in another order: equal to the 4 decimals
        np.testing.assert_allclose(answer["stats"][name], grid, atol=2e-4, err_msg=name)
    image, layout = remote.call("heads_model_view", "minilm", TEXT, 0, 0, 0)
    assert isinstance(image, Image.Image) and layout["rows_are"] == "head"
    assert isinstance(remote.call("heads_map", "minilm", TEXT, "rollout", 0, 0, 0, 0, 0, -1, -1), Image.Image)
    zoomed = remote.call("heads_map", "minilm", TEXT, "head", 2, 3, 0, 2, 6, 0, 4)
    assert isinstance(zoomed, Image.Image) and zoomed.size != image.size
    with pytest.raises(ServiceError, match="empty"):
        remote.call("heads_analyze", "minilm", "")
    assert remote.info()["panel"] == "heads"
