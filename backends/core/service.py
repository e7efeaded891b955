"""The contract every panel's backend service follows.

A service is a plain Python object that implements its panel's API (``backends/<panel>/api.py``, see
:mod:`backends.core.api`): results are JSON-able dicts and PIL images. Models load lazily on first use and stay
cached (bounded LRU); ``info()`` reports what is loaded and what is loading. Bad input raises :class:`ServiceError`
with a message meant for the user; any other failure is logged and becomes an :class:`InternalError`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from typing import Any, ClassVar

from PIL import Image

from backends.core.api import PanelAPI, check_implements

log = logging.getLogger("headlab")

#: PIL refuses to decode larger images (decompression bombs); services downscale what they accept
MAX_IMAGE_PIXELS = 40_000_000
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS


class ServiceError(Exception):
    """A problem the user can act on (bad input, unknown model, …); its message is shown as it is."""


class BackendUnavailableError(ServiceError):
    """The panel's backend service cannot be reached right now."""


class InternalError(ServiceError):
    """A bug: the endpoint failed in a way its input does not explain (the traceback is in the server's log)."""


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


class Service(PanelAPI):
    """Base class of the panels' backend services: endpoints, lazy model cache, device, health.

    A panel's service derives from its API class (``backends/<panel>/api.py``) and this class, and implements every
    endpoint the API declares with the same signature.
    """

    default_model: ClassVar[str]
    #: models this service offers by name (embedded defaults first); other ids may be accepted by ``load_model``
    known_models: ClassVar[tuple[str, ...]] = ()
    #: whether float16 is safe for this panel's models on CUDA
    half_precision_safe: ClassVar[bool] = True
    max_cached_models: ClassVar[int] = 2

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        check_implements(cls)

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

    def call(self, name: str, *args: Any) -> Any:
        """Run endpoint ``name``; a failure that is not a :class:`ServiceError` is logged and becomes an
        :class:`InternalError`, never a crash."""
        if name == self.info_endpoint_name():
            return self.info()
        if name not in {spec.name for spec in self.endpoints()[1:]}:
            raise ServiceError(f"the {self.panel} panel has no endpoint {name!r}")
        try:
            return getattr(self, name)(*args)
        except ServiceError:
            raise
        except Exception as error:  # a bug must not take the service down
            log.exception("%s.%s failed", self.panel, name)
            raise InternalError(f"internal error in {name} ({type(error).__name__}); the server log has the details"
                                ) from error
