"""The contract every panel's backend service follows.

A service is a plain Python object: its public API is the methods marked with :func:`endpoint`. Parameters are typed
``str``, ``int``, ``float`` or ``PIL.Image.Image`` (``None`` when no image is given); results are JSON-able dicts and
PIL images. Models load lazily on first use and stay cached (bounded LRU); ``info()`` reports what is loaded and
what is loading. Bad input raises :class:`ServiceError` with a message meant for the user.
"""

from __future__ import annotations

import inspect
import logging
import os
import threading
import time
import typing
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from PIL import Image

log = logging.getLogger("headlab")

#: PIL refuses to decode larger images (decompression bombs); services downscale what they accept
MAX_IMAGE_PIXELS = 40_000_000
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS

PARAM_KINDS = {str: "str", int: "int", float: "float", Image.Image: "image"}
RESULT_KINDS = ("json", "image")


class ServiceError(Exception):
    """A problem the user can act on (bad input, unknown model, …); its message is shown as it is."""


class BackendUnavailableError(ServiceError):
    """The panel's backend service cannot be reached right now."""


@dataclass(frozen=True)
class Param:
    """One endpoint parameter: its name, kind (str, int, float or image) and default (``inspect._empty`` if none)."""

    name: str
    kind: str
    default: Any = inspect.Parameter.empty


@dataclass(frozen=True)
class Endpoint:
    """An API endpoint of a panel: name, parameters in order, result kinds in order, description."""

    name: str
    params: tuple[Param, ...]
    returns: tuple[str, ...]
    doc: str


def endpoint(*returns: str) -> Callable[[Callable], Callable]:
    """Mark a service method as an API endpoint whose results are ``returns`` (each "json" or "image")."""
    kinds = returns or ("json",)
    unknown = [kind for kind in kinds if kind not in RESULT_KINDS]
    if unknown:
        raise ValueError(f"unknown result kinds {unknown}; use {RESULT_KINDS}")

    def mark(method: Callable) -> Callable:
        method.__endpoint_returns__ = kinds
        return method

    return mark


def hub_load_error(model_id: str, error: Exception) -> ServiceError:
    """The message for a hub model that could not be loaded (offline, unknown id, missing or mismatching files)."""
    return ServiceError(
        f"could not load {model_id!r} ({type(error).__name__}: {error}). Hub models need internet access or a "
        "local copy; the embedded model works offline."
    )


def pick_device(requested: str | None = None) -> str:
    """``requested``, else HEADLAB_DEVICE, else "cuda" when a GPU is present, else "cpu"."""
    import torch

    choice = requested or os.environ.get("HEADLAB_DEVICE", "")
    if choice:
        if choice.startswith("cuda") and not torch.cuda.is_available():
            raise ServiceError(f"device {choice!r} was asked for, but no CUDA GPU is available")
        return choice
    return "cuda" if torch.cuda.is_available() else "cpu"


class Service:
    """Base class of the panels' backend services: endpoints, lazy model cache, device, health."""

    panel: ClassVar[str]
    default_model: ClassVar[str]
    #: models this service offers by name (embedded defaults first); other ids may be accepted by ``load_model``
    known_models: ClassVar[tuple[str, ...]] = ()
    #: whether float16 is safe for this panel's models on CUDA
    half_precision_safe: ClassVar[bool] = True
    max_cached_models: ClassVar[int] = 2

    def __init__(self, device: str | None = None):
        import torch

        threads = os.environ.get("HEADLAB_TORCH_THREADS")
        if threads:  # e.g. 1 on a small shared CPU, where extra threads only thrash
            torch.set_num_threads(int(threads))
        self.device = pick_device(device)
        self.dtype = torch.float16 if self.device.startswith("cuda") and self.half_precision_safe else torch.float32
        self._models: OrderedDict[str, Any] = OrderedDict()
        self._load_seconds: dict[str, float] = {}
        self._loading: str | None = None
        self._lock = threading.RLock()

    # -- models ---------------------------------------------------------------------------------------------
    def load_model(self, model_id: str) -> Any:
        """Build the model called ``model_id`` (subclasses dispatch to their adapters)."""
        raise NotImplementedError

    def model(self, model_id: str = "") -> Any:
        """The model called ``model_id`` ("" = the panel's embedded default), loaded on first use."""
        key = (model_id or "").strip() or self.default_model
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            self._loading = key
            start = time.perf_counter()
            try:
                loaded = self.load_model(key)
            finally:
                self._loading = None
            self._load_seconds[key] = round(time.perf_counter() - start, 3)
            self._models[key] = loaded
            while len(self._models) > self.max_cached_models:
                self._models.popitem(last=False)
            return loaded

    # -- API ------------------------------------------------------------------------------------------------
    def info(self) -> dict:
        """Health and state: panel, device, default and loaded models, what is loading now, load times."""
        return {
            "panel": self.panel,
            "status": "ok",
            "device": self.device,
            "dtype": str(self.dtype).removeprefix("torch."),
            "default_model": self.default_model,
            "known_models": list(self.known_models) or [self.default_model],
            "loaded_models": list(self._models),
            "loading": self._loading,
            "load_seconds": dict(self._load_seconds),
            "endpoints": [ep.name for ep in self.endpoints()],
        }

    @classmethod
    def info_endpoint_name(cls) -> str:
        """The API name of this panel's health call, e.g. ``heads_info``."""
        return f"{cls.panel}_info"

    @classmethod
    def endpoints(cls) -> list[Endpoint]:
        """This service's API: the health call first, then every method marked with :func:`endpoint`."""
        found = [Endpoint(cls.info_endpoint_name(), (), ("json",), "Health and state of the panel's service.")]
        for name, method in inspect.getmembers(cls, inspect.isfunction):
            returns = getattr(method, "__endpoint_returns__", None)
            if returns is None:
                continue
            hints = typing.get_type_hints(method)
            params = []
            for param in list(inspect.signature(method).parameters.values())[1:]:
                kind = PARAM_KINDS.get(_strip_optional(hints.get(param.name)))
                if kind is None:
                    raise TypeError(f"{cls.__name__}.{name}: parameter {param.name} needs a str/int/float/image hint")
                params.append(Param(param.name, kind, param.default))
            found.append(Endpoint(name, tuple(params), returns, inspect.getdoc(method) or ""))
        return found

    def call(self, name: str, *args: Any) -> Any:
        """Run endpoint ``name``; unexpected failures come back as a :class:`ServiceError`, never a crash."""
        if name == self.info_endpoint_name():
            return self.info()
        method = getattr(self, name, None)
        if method is None or not hasattr(method, "__endpoint_returns__"):
            raise ServiceError(f"the {self.panel} panel has no endpoint {name!r}")
        try:
            return method(*args)
        except ServiceError:
            raise
        except (ValueError, TypeError, OSError) as error:
            log.warning("%s.%s rejected its input: %s", self.panel, name, error)
            raise ServiceError(f"{name}: {error}") from error
        except Exception as error:  # a bug must not take the service down
            log.exception("%s.%s failed", self.panel, name)
            raise ServiceError(f"{name} failed unexpectedly ({type(error).__name__}: {error})") from error


def _strip_optional(hint: Any) -> Any:
    """``X | None`` → ``X``."""
    args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    return args[0] if len(args) == 1 and type(None) in typing.get_args(hint) else hint
