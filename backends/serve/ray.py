"""Deploy panels' services as Ray Serve applications: ``python -m backends.serve.ray [PANEL ...]``.

Without panels it deploys every ``backend: ray`` panel of ``spaces.yml``, each as the application ``<panel>`` on
the HTTP route ``/<panel>`` with that panel's replicas (or autoscaling range), CPUs/GPUs per replica and
``max_ongoing_requests``. It joins the cluster at ``RAY_ADDRESS`` when set (the applications then outlive this
command) and otherwise starts a local Ray instance that lives as long as this command does. Serve's HTTP ingress
listens where ``ray_serve_url`` says (127.0.0.1:8000 unless told otherwise).

Each replica holds one service. Requests name their model as Serve's multiplexed model id, so a replica holds a
few models (``Service.max_cached_models``) and requests go to a replica that already has theirs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import threading
from typing import Any
from urllib.parse import urlsplit

import psutil
import ray
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import JSONResponse

from backends.core.config import ROOT, AppConfig, RayDeployment, load_config
from backends.core.ray_client import decode, encode
from backends.core.registry import SERVICES, load_class
from backends.core.service import Service, ServiceError


class PanelDeployment:
    """One replica of a panel: its service, reachable by ``DeploymentHandle`` (``call``) and over HTTP."""

    def __init__(self, service_path: str):
        self.service = load_class(service_path)()
        self.spec = {
            "default_model": self.service.default_model,
            "endpoints": {
                ep.name: {"params": [param.name for param in ep.params], "returns": list(ep.returns),
                          "defaults": {param.name: param.default for param in ep.params if not param.required}}
                for ep in self.service.endpoints()
            },
        }

    @serve.multiplexed(max_num_models_per_replica=Service.max_cached_models)
    async def load_model(self, model_id: str) -> Any:
        """Load (or find in the service's cache) the model a request names; Serve routes by what is loaded."""
        return await asyncio.to_thread(self.service.model, model_id)

    async def endpoints(self) -> dict:
        """The service's endpoints (parameter names, result kinds) and default model, for clients."""
        return self.spec

    async def call(self, endpoint: str, *args: Any) -> Any:
        """Run ``endpoint`` on this replica's service, its model loaded first (a ServiceError for bad input)."""
        model_id = serve.get_multiplexed_model_id()
        if model_id:
            await self.load_model(model_id)
        return await asyncio.to_thread(self.service.call, endpoint, *args)

    async def __call__(self, request: Request) -> JSONResponse:
        """HTTP ingress: ``GET`` answers :meth:`endpoints`, ``POST {"endpoint", "args"}`` runs a call."""
        if request.method == "GET":
            return JSONResponse(self.spec)
        try:
            body = await request.json()
            results = await self.call(body["endpoint"], *(decode(arg) for arg in body["args"]))
        except ServiceError as error:
            return JSONResponse({"error": str(error)}, status_code=400)
        except (ValueError, KeyError, TypeError) as error:
            return JSONResponse({"error": f"malformed request ({type(error).__name__}: {error})"}, status_code=400)
        results = results if isinstance(results, tuple) else (results,)
        return JSONResponse({"results": [encode(value) for value in results]})


def replica_environment() -> dict[str, str]:
    """Environment variables every replica gets: this checkout importable, and HeadLab's own settings."""
    passed = {key: value for key, value in os.environ.items() if key.startswith(("HEADLAB_", "HF_"))}
    return {"PYTHONPATH": str(ROOT), **passed}


def deployment_options(panel: str, deployment: RayDeployment) -> dict[str, Any]:
    """``serve.deployment``'s options for ``panel``: replicas or autoscaling range, resources, queue, environment."""
    scaling: dict[str, Any] = (
        {"autoscaling_config": {"min_replicas": deployment.min_replicas, "max_replicas": deployment.max_replicas}}
        if deployment.autoscaled
        else {"num_replicas": deployment.replicas}
    )
    return {
        "name": f"{panel}_service",
        "max_ongoing_requests": deployment.max_ongoing_requests,
        "ray_actor_options": {
            "num_cpus": deployment.num_cpus,
            "num_gpus": deployment.num_gpus,
            "runtime_env": {"env_vars": replica_environment()},
        },
        **scaling,
    }


def panel_application(panel: str, deployment: RayDeployment, service_path: str | None = None) -> serve.Application:
    """The Ray Serve application of ``panel`` (its service from the registry unless ``service_path`` names one)."""
    options = serve.deployment(**deployment_options(panel, deployment))
    return options(PanelDeployment).bind(service_path or SERVICES[panel])


def start_serve(url: str, address: str | None = None, num_cpus: int | None = None) -> None:
    """Join the Ray cluster at ``address`` (else start one on loopback); start Serve's HTTP ingress at ``url``."""
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    where = urlsplit(url)
    serve.start(http_options={"host": where.hostname, "port": where.port or 80})


def deploy(panel: str, deployment: RayDeployment, service_path: str | None = None) -> DeploymentHandle:
    """Deploy (or update) ``panel``'s application and wait until its replicas run; returns its handle."""
    return serve.run(panel_application(panel, deployment, service_path), name=panel, route_prefix=f"/{panel}")


def replica_processes(app: str) -> list[psutil.Process]:
    """This machine's processes of application ``app``'s replicas (Ray titles them ``ray::ServeReplica:<app>:…``)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if any(part.startswith(f"ray::ServeReplica:{app}:") for part in process.info["cmdline"] or ()):
            found.append(process)
    return found


def ray_panels(config: AppConfig, names: list[str]) -> list[str]:
    """The panels to deploy: ``names``, or every ``backend: ray`` panel of the configuration."""
    unknown = [name for name in names if name not in config.panels]
    if unknown:
        raise SystemExit(f"unknown panels {unknown}; spaces.yml has {sorted(config.panels)}")
    chosen = names or [name for name, panel in config.panels.items() if panel.is_ray]
    if not chosen:
        raise SystemExit("no panel has `backend: ray` in spaces.yml; name the panels to deploy")
    return chosen


def main() -> None:
    """Deploy the panels and, on a local Ray instance, serve until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("panels", nargs="*", help="panels to deploy (default: the backend: ray panels of spaces.yml)")
    parser.add_argument("--num-cpus", type=int, help="CPUs of a local Ray instance (default: all)")
    args = parser.parse_args()
    config = load_config()
    panels = ray_panels(config, args.panels)
    address = os.environ.get("RAY_ADDRESS")
    start_serve(config.panels[panels[0]].ray.url, address, args.num_cpus)
    for panel in panels:
        deploy(panel, config.panels[panel].ray)
        settings = config.panels[panel].ray
        print(f"{panel}: deployed at {settings.url.rstrip('/')}/{panel} ({settings})", flush=True)
    if address:
        return
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
