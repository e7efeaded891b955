"""The client of a panel deployed as a Ray Serve application (``backend: ray`` in ``spaces.yml``).

Inside the Ray cluster (this process is connected to Ray, or ``RAY_ADDRESS`` is set) it calls the application
through a ``DeploymentHandle``; elsewhere over Serve's HTTP ingress (``ray_serve_url``, route ``/<panel>``). Either
way it is the same client as the others: ``call(endpoint, *args)`` and ``info()``, :class:`ServiceError` with the
service's message for bad input, :class:`BackendUnavailableError` when the application is gone, and recovery by
itself once it is back. A request that fails because its replica died is sent again (a few times, briefly apart),
so killing a replica loses no request while another replica or its replacement can answer.

Hub models are multiplexed: each request carries its ``model`` argument as Serve's multiplexed model id, so it is
routed to a replica that already holds that model. Neither torch nor Ray is imported here until a call needs Ray.

Wire format over HTTP (JSON): ``POST /<panel>`` with ``{"endpoint": name, "args": [...]}`` answers
``{"results": [...]}`` or, for bad input, status 400 with ``{"error": message}``; ``GET /<panel>`` answers the
endpoints (parameter names, defaults of the optional ones, result kinds) and the default model; trailing optional
arguments may be left out. Images travel as ``{"png": base64}``.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import sys
import threading
import time
from typing import Any

import httpx
from PIL import Image

from backends.core.config import RayDeployment
from backends.core.service import BackendUnavailableError, ServiceError

log = logging.getLogger("headlab")

#: HTTP header Serve reads the multiplexed model id from
MODEL_ID_HEADER = "serve_multiplexed_model_id"
#: attempts per request when its replica dies, and the pause before each retry
ATTEMPTS, RETRY_PAUSE_S = 5, 0.5
#: how long one request may run (HeadHunter searches take minutes on a CPU)
REQUEST_TIMEOUT_S = 900.0


class ReplicaLostError(Exception):
    """The request's replica died or could not take it; the request may be sent again."""


def encode(value: Any) -> Any:
    """A JSON-able form of an argument or result: images become ``{"png": base64}``, the rest stays."""
    if isinstance(value, Image.Image):
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        return {"png": base64.b64encode(buffer.getvalue()).decode("ascii")}
    return value


def decode(value: Any) -> Any:
    """The inverse of :func:`encode`."""
    if isinstance(value, dict) and set(value) == {"png"}:
        with Image.open(io.BytesIO(base64.b64decode(value["png"]))) as image:
            return image.copy()
    return value


def model_argument(spec: dict, args: tuple, default_model: str) -> str:
    """A request's multiplexed model id: its ``model`` argument ("" = ``default_model``); "" without one."""
    if "model" not in spec["params"]:
        return ""
    return str(args[spec["params"].index("model")] or "").strip() or default_model


def in_ray_cluster() -> bool:
    """True when this process is connected to Ray or told where the cluster is (``RAY_ADDRESS``)."""
    ray = sys.modules.get("ray")
    return bool(os.environ.get("RAY_ADDRESS")) or (ray is not None and ray.is_initialized())


class RayClient:
    """Calls a panel's Ray Serve application, by ``DeploymentHandle`` in the cluster and over HTTP otherwise."""

    def __init__(self, panel: str, deployment: RayDeployment | None = None, transport: str | None = None):
        if transport not in (None, "handle", "http"):
            raise ValueError(f"transport must be 'handle' or 'http', got {transport!r}")
        self.panel = panel
        self.url = (deployment or RayDeployment()).url.rstrip("/") + f"/{panel}"
        self.transport = transport or ("handle" if in_ray_cluster() else "http")
        self._spec: dict | None = None
        self._handle = None
        self._http = httpx.Client(timeout=httpx.Timeout(REQUEST_TIMEOUT_S, connect=5.0))
        self._lock = threading.Lock()

    # -- the client interface -----------------------------------------------------------------------------
    def call(self, endpoint: str, *args: Any) -> Any:
        """Run ``endpoint`` on a replica; a replica that dies mid-request gets the request sent elsewhere."""
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return self._send(endpoint, args)
            except BackendUnavailableError:
                self._forget()
                raise
            except ReplicaLostError as error:
                self._forget()
                if attempt == ATTEMPTS:
                    raise self._unavailable(error) from error
                log.warning("%s: %s failed (%s); retrying (attempt %d of %d)", self.panel, endpoint, error,
                            attempt + 1, ATTEMPTS)
                time.sleep(RETRY_PAUSE_S * attempt)

    def info(self) -> dict:
        """The service's health call, answered by one of the replicas."""
        return self.call(f"{self.panel}_info")

    # -- one attempt ----------------------------------------------------------------------------------------
    def _send(self, endpoint: str, args: tuple) -> Any:
        service = self._service_spec()
        spec = service["endpoints"].get(endpoint)
        if spec is None:
            raise ServiceError(f"the {self.panel} panel has no endpoint {endpoint!r}")
        params, defaults = spec["params"], spec["defaults"]
        if len(args) > len(params) or any(name not in defaults for name in params[len(args):]):
            raise ServiceError(f"{endpoint} takes {len(params)} arguments ({', '.join(params)}), got {len(args)}")
        args = (*args, *(defaults[name] for name in params[len(args):]))
        model_id = model_argument(spec, args, service["default_model"])
        if self.transport == "handle":
            return self._send_by_handle(endpoint, args, model_id)
        results = self._post({"endpoint": endpoint, "args": [encode(arg) for arg in args]}, model_id)
        decoded = tuple(decode(value) for value in results)
        return decoded if len(decoded) > 1 else decoded[0]

    def _service_spec(self) -> dict:
        """The application's endpoints and default model, asked once per connection."""
        spec = self._spec
        if spec is None:
            if self.transport == "handle":
                spec = self._result(self._app_handle().endpoints.remote())
            else:
                spec = self._request("GET")
            self._spec = spec
        return spec

    def _forget(self) -> None:
        """Drop what was learnt from the application, so the next attempt finds it (or its successor) anew."""
        with self._lock:
            self._spec = self._handle = None

    def _unavailable(self, error: Exception) -> BackendUnavailableError:
        where = f"Ray Serve application {self.panel!r}" + ("" if self.transport == "handle" else f" at {self.url}")
        return BackendUnavailableError(
            f"The {self.panel} backend ({where}) is unavailable ({error}). "
            "The other panels keep working; this one recovers by itself when its service is back."
        )

    # -- HTTP ingress -----------------------------------------------------------------------------------------
    def _post(self, body: dict, model_id: str) -> list:
        return self._request("POST", json=body, headers={MODEL_ID_HEADER: model_id} if model_id else {})["results"]

    def _request(self, method: str, **kwargs: Any) -> dict:
        try:
            response = self._http.request(method, self.url, **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout) as error:  # nothing listens: Serve is down
            raise self._unavailable(error) from error
        except httpx.TransportError as error:  # dropped mid-request
            raise ReplicaLostError(f"{type(error).__name__}: {error}") from error
        if response.status_code == 400:
            raise ServiceError(response.json()["error"])
        if response.status_code == 404:  # Serve runs, the application does not
            raise self._unavailable(RuntimeError(f"HTTP 404: no application at {self.url}"))
        if response.status_code != 200:
            raise ReplicaLostError(f"HTTP {response.status_code}: {response.text[:200]}")
        return response.json()

    # -- DeploymentHandle -----------------------------------------------------------------------------------------
    def _app_handle(self):
        import ray
        from ray import serve
        from ray.serve.exceptions import RayServeException

        with self._lock:
            if self._handle is None:
                try:
                    if not ray.is_initialized():
                        ray.init(address=os.environ.get("RAY_ADDRESS") or "auto", log_to_driver=False)
                    self._handle = serve.get_app_handle(self.panel)
                except (ConnectionError, RayServeException, ray.exceptions.RayError) as error:  # no cluster or app
                    raise self._unavailable(error) from error
            return self._handle

    def _send_by_handle(self, endpoint: str, args: tuple, model_id: str) -> Any:
        handle = self._app_handle()
        if model_id:
            handle = handle.options(multiplexed_model_id=model_id)
        return self._result(handle.call.remote(endpoint, *args))

    def _result(self, response: Any) -> Any:
        """Wait for a handle's response; the service's ServiceError comes back as it is, a lost replica as such."""
        import ray
        from ray.serve.exceptions import RayServeException

        try:
            return response.result(timeout_s=REQUEST_TIMEOUT_S)
        except ray.exceptions.RayTaskError as error:
            cause = error.cause
            if isinstance(cause, ServiceError):
                raise ServiceError(str(cause)) from None
            raise ServiceError(f"the {self.panel} service failed ({type(cause).__name__}: {cause})") from None
        except TimeoutError as error:
            raise self._unavailable(error) from error
        except (RayServeException, ray.exceptions.RayError) as error:
            raise ReplicaLostError(f"{type(error).__name__}: {error}") from error
