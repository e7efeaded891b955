"""`backend: ray` panels in spaces.yml: replicas or autoscaling, resources, queue; every bad value named."""

from __future__ import annotations

from pathlib import Path

import pytest

from backends.core.client import LocalClient, make_client
from backends.core.config import DEFAULT_RAY_SERVE_URL, load_config
from backends.core.ray_client import RayClient, model_argument
from backends.core.service import ServiceError
from backends.core.zerogpu import ZeroGPUClient, on_zero_gpu
from tests.echo_service import EchoService


def write_spaces(tmp_path: Path, restoration: str, top: str = "") -> Path:
    path = tmp_path / "spaces.yml"
    path.write_text(f"{top}panels:\n  restoration:\n    backend: ray\n{restoration}")
    return path


def test_ray_panel_settings_are_read(tmp_path: Path):
    path = write_spaces(
        tmp_path,
        "    min_replicas: 1\n    max_replicas: 4\n    num_cpus: 0.5\n    num_gpus: 0.25\n"
        "    max_ongoing_requests: 3\n",
        top="ray_serve_url: http://127.0.0.1:7905\n",
    )
    panel = load_config(path).panels["restoration"]
    assert panel.is_ray and panel.is_remote
    assert panel.ray.autoscaled and (panel.ray.min_replicas, panel.ray.max_replicas) == (1, 4)
    assert (panel.ray.num_cpus, panel.ray.num_gpus, panel.ray.max_ongoing_requests) == (0.5, 0.25, 3)
    assert panel.ray.url == "http://127.0.0.1:7905"
    client = make_client(panel)
    assert isinstance(client, RayClient) and client.url == "http://127.0.0.1:7905/restoration"


def test_fixed_replicas_and_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HEADLAB_RAY_SERVE_URL", "http://127.0.0.1:7906")
    panel = load_config(write_spaces(tmp_path, "    replicas: 2\n")).panels["restoration"]
    assert panel.ray.replicas == 2 and not panel.ray.autoscaled
    assert panel.ray.url == "http://127.0.0.1:7906"
    assert load_config().panels["heads"].ray.url == "http://127.0.0.1:7906"
    monkeypatch.delenv("HEADLAB_RAY_SERVE_URL")
    assert load_config().panels["heads"].ray.url == DEFAULT_RAY_SERVE_URL


def test_backend_ray_from_the_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HEADLAB_SEGMENTATION_BACKEND", "ray")
    config = load_config()
    assert config.panels["segmentation"].is_ray and not config.panels["heads"].is_ray


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ("    replicas: 0\n", "replicas must be at least 1, got 0"),
        ("    replicas: 1.5\n", "replicas must be a whole number, got 1.5"),
        ("    replicas: two\n", "replicas must be a whole number, got 'two'"),
        ("    replicas: true\n", "replicas must be a whole number, got True"),
        ("    replicas: 2\n    min_replicas: 1\n    max_replicas: 3\n", "set either replicas or min_replicas"),
        ("    min_replicas: 1\n", "autoscaling needs both min_replicas and max_replicas"),
        ("    max_replicas: 3\n", "autoscaling needs both min_replicas and max_replicas"),
        ("    min_replicas: 3\n    max_replicas: 2\n", "min_replicas 3, max_replicas 2"),
        ("    min_replicas: -1\n    max_replicas: 2\n", "min_replicas -1, max_replicas 2"),
        ("    min_replicas: 0\n    max_replicas: 0\n", "min_replicas 0, max_replicas 0"),
        ("    num_cpus: -1\n", "num_cpus and num_gpus cannot be negative, got -1.0, 0.0"),
        ("    num_gpus: -0.5\n", "num_cpus and num_gpus cannot be negative, got 1.0, -0.5"),
        ("    num_gpus: lots\n", "num_gpus must be a number, got 'lots'"),
        ("    max_ongoing_requests: 0\n", "max_ongoing_requests must be at least 1, got 0"),
    ],
)
def test_each_bad_ray_setting_is_named(tmp_path: Path, settings: str, message: str):
    with pytest.raises(ValueError, match="panel 'restoration': .*" + message.replace("(", r"\(")):
        load_config(write_spaces(tmp_path, settings))


def test_bad_ray_serve_url(tmp_path: Path):
    with pytest.raises(ValueError, match="ray_serve_url must be an http"):
        load_config(write_spaces(tmp_path, "", top="ray_serve_url: 127.0.0.1:8000\n"))


def test_local_panels_off_zero_gpu_are_plain_local_clients(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    assert not on_zero_gpu()
    assert type(make_client(load_config().panels["heads"])) is LocalClient


def test_zero_gpu_client_runs_endpoints_through_spaces_gpu(monkeypatch: pytest.MonkeyPatch):
    """Off a ZeroGPU Space `spaces.GPU` leaves the call as it is: same results, same errors."""
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    client = ZeroGPUClient("echo", EchoService())
    assert client.service.info()["loaded_models"] == ["echo"]  # the default model loads at start-up
    assert client.call("echo_text", "", "ab", 2)["text"] == "abab"
    with pytest.raises(ServiceError, match="Please type some text"):
        client.call("echo_text", "", "", 2)


def test_the_multiplexed_model_id_is_the_model_argument():
    """Requests are routed by their `model` argument wherever the endpoint has it; "" names the default model."""
    specs = {ep.name: {"params": [param.name for param in ep.params]} for ep in EchoService.endpoints()}
    assert model_argument(specs["echo_text"], (" echo ", "a", 1), "echo") == "echo"
    assert model_argument(specs["echo_text"], ("", "a", 1), "echo") == "echo"
    assert model_argument(specs["mirror"], (None, "other"), "echo") == "other"
    assert model_argument(specs["echo_info"], (), "echo") == ""
