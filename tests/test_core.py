"""The service contract, the config and both client transports (a real second process on loopback)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import backends.core.registry as registry
from backends.core.client import LocalClient, RemoteClient
from backends.core.config import load_config
from backends.core.service import BackendUnavailableError, InternalError, Service, ServiceError
from tests.conftest import free_port
from tests.echo_service import EchoAPI, EchoService


@pytest.fixture(autouse=True)
def echo_panel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.APIS, "echo", "tests.echo_service:EchoAPI")
    monkeypatch.setitem(registry.SERVICES, "echo", "tests.echo_service:EchoService")


def test_endpoints_are_introspected_from_type_hints():
    endpoints = {ep.name: ep for ep in EchoService.endpoints()}
    assert list(endpoints)[0] == "echo_info"
    assert [(p.name, p.kind) for p in endpoints["echo_text"].params] == [
        ("model", "str"), ("text", "str"), ("times", "int")
    ]
    assert endpoints["echo_text"].params[2].default == 2
    assert endpoints["echo_text"].params[1].doc == "the text to repeat"
    assert endpoints["mirror"].params[0].kind == "image" and endpoints["mirror"].params[0].required
    assert [(r.name, r.kind) for r in endpoints["mirror"].results] == [("mirrored", "image"), ("meta", "json")]
    assert endpoints["mirror"].results[1].doc == "the image's size and mode"
    assert endpoints["mirror"].signature() == 'mirror(image, model="")'


def test_a_service_must_implement_its_api_as_declared():
    with pytest.raises(TypeError, match="does not implement the endpoint mirror"):
        type("Lazy", (EchoAPI, Service), {"default_model": "echo", "echo_text": EchoService.echo_text,
                                           "divide": EchoService.divide})
    with pytest.raises(TypeError, match="differs from its API"):
        type("Sloppy", (EchoService,), {"echo_text": lambda self, model, text: {}})


def test_local_client_runs_endpoints_and_reports_state():
    client = LocalClient("echo")
    assert client.info()["loaded_models"] == []
    assert client.call("echo_text", "", "ab", 3) == {"model": "echo", "text": "ababab"}
    info = client.info()
    assert info["loaded_models"] == ["echo"] and info["device"] in ("cpu", "cuda") and "echo" in info["load_seconds"]


def test_bad_input_and_bugs_become_service_errors():
    client = LocalClient("echo")
    with pytest.raises(ServiceError, match="type some text"):
        client.call("echo_text", "", "", 1)
    with pytest.raises(ServiceError, match="unknown model"):
        client.call("echo_text", "../../etc/passwd", "x", 1)
    with pytest.raises(InternalError, match=r"internal error in divide \(ZeroDivisionError\)"):
        client.call("divide", "", 1.0, 0.0)
    with pytest.raises(ServiceError, match="no endpoint"):
        client.call("__init__")
    assert client.call("divide", "", 1.0, 4.0) == {"ratio": 0.25}  # still answering


def test_remote_client_matches_local(echo_server):
    url, _ = echo_server
    remote, local = RemoteClient("echo", url), LocalClient("echo")
    assert remote.call("echo_text", "", "hi", 2) == local.call("echo_text", "", "hi", 2)
    gray = Image.fromarray(np.arange(48, dtype=np.uint8).reshape(6, 8))
    mirrored, meta = remote.call("mirror", gray, "")
    assert np.array_equal(np.asarray(mirrored.convert("L")), np.asarray(gray)[:, ::-1])
    assert meta == {"size": [8, 6], "mode": "L"}
    with pytest.raises(ServiceError, match="type some text"):
        remote.call("echo_text", "", "", 1)
    assert remote.info()["panel"] == "echo"


def test_remote_client_reports_and_recovers_from_a_dead_backend(echo_server):
    url, process = echo_server
    client = RemoteClient("echo", url)
    assert client.call("echo_text", "", "a", 1)["text"] == "a"
    process.kill()
    process.wait()
    with pytest.raises(BackendUnavailableError, match="unavailable"):
        client.call("echo_text", "", "a", 1)


def test_unreachable_backend_is_a_clear_error():
    client = RemoteClient("echo", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(BackendUnavailableError, match="echo backend .* is unavailable"):
        client.call("echo_text", "", "a", 1)


def test_spaces_yml_lists_every_panel_with_its_default_first(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HEADLAB_HEADS_BACKEND", "http://127.0.0.1:7861")
    config = load_config()
    assert list(config.panels) == ["heads", "guidance", "segmentation", "restoration"]
    assert config.panels["heads"].is_remote and config.panels["heads"].models[0] == "smollm2"
    assert not config.panels["restoration"].is_remote
    for name, panel in config.panels.items():  # the embedded default is listed first
        assert panel.models[0] == registry.service_class(name).default_model
