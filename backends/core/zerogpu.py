"""In-process panels on a Hugging Face ZeroGPU Space: every call runs under ``spaces.GPU``.

A ZeroGPU Space (``SPACES_ZERO_GPU=true``) lends a GPU only to functions wrapped by ``spaces.GPU`` for the time they
run. :func:`on_zero_gpu` tells whether the app runs on one; ``make_client`` then gives local panels a
:class:`ZeroGPUClient`, whose service loads its default model at start-up (ZeroGPU moves it to the GPU when a call
gets one) and runs each endpoint under ``spaces.GPU``. Elsewhere nothing changes: the ``spaces`` package is not even
imported.
"""

from __future__ import annotations

import os
from typing import Any

from backends.core.client import LocalClient
from backends.core.service import Service

#: the longest a single call may hold the GPU (a HeadHunter search is the longest call)
GPU_SECONDS = 120


def on_zero_gpu() -> bool:
    """True on a ZeroGPU Space."""
    return os.environ.get("SPACES_ZERO_GPU", "").strip().lower() in ("1", "true")


def run_endpoint(service: Service, endpoint: str, *args: Any) -> Any:
    """Run one endpoint of ``service`` (the function ZeroGPU runs with a GPU attached)."""
    return service.call(endpoint, *args)


class ZeroGPUClient(LocalClient):
    """An in-process client whose calls each get a ZeroGPU GPU for their duration."""

    def __init__(self, panel: str, service: Service | None = None):
        import spaces  # before torch touches CUDA, as ZeroGPU requires

        super().__init__(panel, service)
        self._run_on_gpu = spaces.GPU(duration=GPU_SECONDS)(run_endpoint)
        self.service.model("")  # loaded in the main process, as ZeroGPU expects of models

    def call(self, endpoint: str, *args: Any) -> Any:
        """Run ``endpoint`` on the in-process service with a GPU attached."""
        return self._run_on_gpu(self.service, endpoint, *args)
