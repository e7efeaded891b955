"""One client interface for every panel, over two transports.

``LocalClient`` calls the panel's service in this process. ``RemoteClient`` calls the same service served by another
process (``python -m backends.serve PANEL --port N``) over HTTP with ``gradio_client``. Both raise
:class:`ServiceError` for bad input and :class:`BackendUnavailableError` when the service cannot be reached; a remote
client reconnects by itself on the next call once the service is back.
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from backends.core.api import Endpoint
from backends.core.config import PanelConfig
from backends.core.registry import api_class, service_class
from backends.core.service import BackendUnavailableError, Service, ServiceError


class Client(Protocol):
    """What the UI talks to: call an endpoint by name with positional arguments."""

    panel: str

    def call(self, endpoint: str, *args: Any) -> Any:
        """Run ``endpoint``; a single result comes back as it is, several as a tuple."""

    def info(self) -> dict:
        """The service's health call."""


class LocalClient:
    """Calls the panel's service in this process (the service is built on first use)."""

    def __init__(self, panel: str, service: Service | None = None):
        self.panel = panel
        self._service = service
        self._lock = threading.Lock()

    @property
    def service(self) -> Service:
        """The in-process service, created on first use."""
        with self._lock:
            if self._service is None:
                self._service = service_class(self.panel)()
            return self._service

    def call(self, endpoint: str, *args: Any) -> Any:
        """Run ``endpoint`` on the in-process service."""
        return self.service.call(endpoint, *args)

    def info(self) -> dict:
        """The service's health call."""
        return self.service.info()


class RemoteClient:
    """Calls the panel's service in another process over HTTP (gradio_client)."""

    def __init__(self, panel: str, url: str, endpoints: list[Endpoint] | None = None):
        self.panel = panel
        self.url = url.rstrip("/") + "/"
        self._endpoints = {ep.name: ep for ep in (endpoints or api_class(panel).endpoints())}
        self._client = None
        self._lock = threading.Lock()

    def _connect(self):
        from gradio_client import Client as GradioClient

        with self._lock:
            if self._client is None:
                try:
                    self._client = GradioClient(self.url, verbose=False, download_files=tempfile.gettempdir())
                except Exception as error:
                    raise self._unavailable(error) from error
            return self._client

    def _unavailable(self, error: Exception) -> BackendUnavailableError:
        return BackendUnavailableError(
            f"The {self.panel} backend at {self.url} is unavailable ({type(error).__name__}). "
            "The other panels keep working; this one recovers by itself when its service is back."
        )

    def call(self, endpoint: str, *args: Any) -> Any:
        """Send ``endpoint`` with ``args`` to the remote service and decode its results."""
        spec = self._endpoints.get(endpoint)
        if spec is None:
            raise ServiceError(f"the {self.panel} panel has no endpoint {endpoint!r}")
        missing = [param for param in spec.params[len(args):] if param.required]
        if len(args) > len(spec.params) or missing:
            raise ServiceError(f"{endpoint} takes {len(spec.params)} arguments ({spec.signature()}), got {len(args)}")
        args = (*args, *(param.default for param in spec.params[len(args):]))
        client = self._connect()
        with tempfile.TemporaryDirectory() as folder:
            sent = [_encode(arg, param.kind, folder) for arg, param in zip(args, spec.params, strict=True)]
            try:
                result = client.predict(*sent, api_name=f"/{endpoint}")
            except Exception as error:
                raise self._translate(error) from error
        results = result if len(spec.returns) > 1 else (result,)
        decoded = tuple(_decode(value, kind) for value, kind in zip(results, spec.returns, strict=True))
        return decoded if len(decoded) > 1 else decoded[0]

    def _translate(self, error: Exception) -> ServiceError:
        from gradio_client.exceptions import AppError

        if isinstance(error, AppError):
            return ServiceError(str(error.message if hasattr(error, "message") else error))
        with self._lock:
            self._client = None  # reconnect on the next call
        return self._unavailable(error)

    def info(self) -> dict:
        """The remote service's health call."""
        return self.call(api_class(self.panel).info_endpoint_name())


def _encode(value: Any, kind: str, folder: str) -> Any:
    if kind != "image" or value is None:
        return value
    from gradio_client import handle_file

    path = Path(folder) / f"input-{id(value)}.png"
    value.save(path)
    return handle_file(str(path))


def _decode(value: Any, kind: str) -> Any:
    if kind != "image" or value is None:
        return value
    with Image.open(value) as image:
        return image.copy()


def make_client(config: PanelConfig) -> Client:
    """The client for a panel as ``spaces.yml`` configures it (local service, Ray Serve application or remote URL)."""
    if config.is_ray:
        from backends.core.ray_client import RayClient

        return RayClient(config.name, config.ray)
    if config.is_remote:
        return RemoteClient(config.name, config.backend)
    from backends.core.zerogpu import ZeroGPUClient, on_zero_gpu

    return ZeroGPUClient(config.name) if on_zero_gpu() else LocalClient(config.name)
