"""Panels as Ray Serve applications on a local Ray instance (2 CPUs) that this module starts and stops.

The echo service checks the protocol over both transports (DeploymentHandle and Serve's HTTP ingress): results,
images, each kind of bad input, the application going away and coming back. The restoration panel with 2 replicas
checks faults: a replica killed under load loses no request, and Serve replaces it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import psutil
import pytest
from PIL import Image

from backends.core.config import RayDeployment
from backends.core.ray_client import RayClient
from backends.core.service import BackendUnavailableError, ServiceError
from tests.conftest import free_port

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")
serve_ray = pytest.importorskip("backends.serve.ray")

ECHO = "tests.echo_service:EchoService"
TRANSPORTS = ("handle", "http")
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def ray_url(monkeypatch_module: pytest.MonkeyPatch) -> Iterator[str]:
    """A local Ray instance with Serve's HTTP ingress on a free loopback port; torch threads 1 per replica."""
    monkeypatch_module.setenv("HEADLAB_TORCH_THREADS", "1")
    url = f"http://127.0.0.1:{free_port()}"
    serve_ray.start_serve(url, num_cpus=2)
    yield url
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope="module")
def echo(ray_url: str) -> RayDeployment:
    """The echo service deployed as the application "echo" (small replicas, autoscaled between 1 and 2)."""
    deployment = RayDeployment(min_replicas=1, max_replicas=2, num_cpus=0.25, url=ray_url)
    serve_ray.deploy("echo", deployment, ECHO)
    return deployment


def test_spaces_yml_settings_become_serve_options(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HEADLAB_TORCH_THREADS", "1")
    fixed = serve_ray.deployment_options("restoration", RayDeployment(replicas=3, num_cpus=0.5, max_ongoing_requests=4))
    assert fixed["num_replicas"] == 3 and "autoscaling_config" not in fixed
    assert fixed["max_ongoing_requests"] == 4 and fixed["name"] == "restoration_service"
    actor = fixed["ray_actor_options"]
    assert (actor["num_cpus"], actor["num_gpus"]) == (0.5, 0.0)
    assert actor["runtime_env"]["env_vars"]["HEADLAB_TORCH_THREADS"] == "1"
    autoscaled = serve_ray.deployment_options("heads", RayDeployment(min_replicas=1, max_replicas=4, num_gpus=0.25))
    assert autoscaled["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4}
    assert "num_replicas" not in autoscaled
    assert autoscaled["ray_actor_options"]["num_gpus"] == 0.25


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_results_images_and_health(echo: RayDeployment, transport: str):
    client = RayClient("echo", echo, transport=transport)
    assert client.call("echo_text", "", "ab", 3) == {"model": "echo", "text": "ababab"}
    image = Image.fromarray(np.arange(4 * 3 * 3, dtype=np.uint8).reshape(3, 4, 3))
    mirrored, meta = client.call("mirror", image, "echo")
    assert meta == {"size": [4, 3], "mode": "RGB"}
    assert np.array_equal(np.asarray(mirrored), np.asarray(image)[:, ::-1])
    info = client.info()
    assert info["status"] == "ok" and "echo" in info["loaded_models"]  # loaded through @serve.multiplexed


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("echo_text", "", "", 2), "^Please type some text.$"),
        (("echo_text", "no-such-model", "a", 1), "^unknown model 'no-such-model'$"),
        (("mirror", None, ""), "^Please give an image.$"),
        (("divide", "", 1.0, 0.0), r"^internal error in divide \(ZeroDivisionError\); the server log has the details$"),
        (("echo_text", "", "a", 2, 9), r"^echo_text takes 3 arguments \(model, text, times\), got 4$"),
        (("no_such_endpoint",), "^the echo panel has no endpoint 'no_such_endpoint'$"),
    ],
)
def test_each_bad_input_is_the_services_message(echo: RayDeployment, transport: str, args: tuple, message: str):
    client = RayClient("echo", echo, transport=transport)
    with pytest.raises(ServiceError, match=message) as caught:
        client.call(*args)
    assert not isinstance(caught.value, BackendUnavailableError)


def test_application_gone_then_back(echo: RayDeployment):
    """Both transports say "unavailable" at once while the application is deleted and recover when it is back."""
    clients = [RayClient("echo", echo, transport=transport) for transport in TRANSPORTS]
    for client in clients:
        assert client.call("echo_text", "", "a", 1)["text"] == "a"
    serve.delete("echo")
    try:
        for client in clients:
            start = time.monotonic()
            with pytest.raises(BackendUnavailableError, match="echo backend .* is unavailable"):
                client.call("echo_text", "", "a", 1)
            assert time.monotonic() - start < 2  # no retries spent on an application that is not there
    finally:
        serve_ray.deploy("echo", echo, ECHO)
    for client in clients:
        assert client.call("echo_text", "", "b", 2)["text"] == "bb"


def replica_names(app: str) -> set[str]:
    """Names of the live replica actors of application ``app``."""
    prefix = f"SERVE_REPLICA::{app}#"
    actors = ray.util.list_named_actors(all_namespaces=True)
    return {actor["name"] for actor in actors if actor["name"].startswith(prefix)}


def busiest_replica(app: str) -> tuple[psutil.Process, float]:
    """The replica process of ``app`` that uses the most CPU over half a second, and its CPU percentage."""
    processes = serve_ray.replica_processes(app)
    assert len(processes) == 2
    for process in processes:
        process.cpu_percent(None)
    time.sleep(0.5)
    return max(((process, process.cpu_percent(None)) for process in processes), key=lambda pair: pair[1])


def running_replicas(app: str) -> int:
    deployment = serve.status().applications[app].deployments[f"{app}_service"]
    return deployment.replica_states.get("RUNNING", 0)


@pytest.fixture(scope="module")
def restoration(ray_url: str) -> RayDeployment:
    """The restoration panel with 2 replicas that take one request at a time."""
    deployment = RayDeployment(replicas=2, num_cpus=0.5, max_ongoing_requests=1, url=ray_url)
    serve_ray.deploy("restoration", deployment)
    return deployment


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_killing_a_replica_under_load_loses_no_request(restoration: RayDeployment, transport: str):
    client = RayClient("restoration", restoration, transport=transport)
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8))
    before = replica_names("restoration")
    assert len(before) == 2
    stop = threading.Event()

    def caller() -> list:
        """Restore until told to stop (each request must succeed); the results."""
        results = []
        while not stop.is_set():
            results.append(client.call("restore", noisy, "remove the noise", "", None))
        return results

    with ThreadPoolExecutor(4) as pool:  # 4 callers keep both replicas busy (one request each, the rest queued)
        list(pool.map(lambda _: client.call("restore", noisy, "remove the noise", "", None), range(8)))  # warm-up
        callers = [pool.submit(caller) for _ in range(4)]
        time.sleep(1.0)
        victim, victim_cpu = busiest_replica("restoration")
        victim.kill()  # a replica that is working on a request dies (SIGKILL)
        killed = time.monotonic()
        time.sleep(3.0)  # the load goes on while Serve notices the death
        stop.set()
        results = [result for future in callers for result in future.result(timeout=120)]
    assert len(results) >= 4
    assert all(meta["degradation"] == "noise" and image.size == noisy.size for image, meta in results)
    assert victim_cpu > 20, f"the killed replica was idle ({victim_cpu:.0f} % CPU)"
    # its request came back as a lost replica and the client sent it again, or Serve re-routed it before it began
    while not (running_replicas("restoration") == 2 and len(replica_names("restoration") - before) == 1):
        assert time.monotonic() - killed < 90, "Serve did not replace the killed replica within 90 s"
        time.sleep(0.5)
    assert client.call("restore", noisy, "remove the noise", "", None)[1]["degradation"] == "noise"
