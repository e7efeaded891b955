"""HeadLab's deployment settings, read from ``spaces.yml``."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from backends.core.registry import SERVICES

ROOT = Path(__file__).resolve().parents[2]
SPACES_FILE = ROOT / "spaces.yml"
#: Ray Serve's HTTP ingress when spaces.yml names none (Serve's own default port, on loopback)
DEFAULT_RAY_SERVE_URL = "http://127.0.0.1:8000"


@dataclass(frozen=True)
class RayDeployment:
    """How a ``backend: ray`` panel runs as a Ray Serve application: replicas, resources, queue, ingress URL.

    ``min_replicas``/``max_replicas`` (both set) autoscale on each replica's queue of ongoing requests instead of
    the fixed ``replicas``; ``num_cpus``/``num_gpus`` are reserved per replica (fractions allowed).
    """

    replicas: int = 1
    min_replicas: int | None = None
    max_replicas: int | None = None
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    max_ongoing_requests: int = 2
    url: str = DEFAULT_RAY_SERVE_URL

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ValueError(f"replicas must be at least 1, got {self.replicas}")
        if (self.min_replicas is None) != (self.max_replicas is None):
            raise ValueError("autoscaling needs both min_replicas and max_replicas")
        if self.autoscaled and not (0 <= self.min_replicas <= self.max_replicas and self.max_replicas >= 1):
            raise ValueError(
                f"need 0 <= min_replicas <= max_replicas and max_replicas >= 1, got min_replicas "
                f"{self.min_replicas}, max_replicas {self.max_replicas}"
            )
        if self.num_cpus < 0 or self.num_gpus < 0:
            raise ValueError(f"num_cpus and num_gpus cannot be negative, got {self.num_cpus}, {self.num_gpus}")
        if self.max_ongoing_requests < 1:
            raise ValueError(f"max_ongoing_requests must be at least 1, got {self.max_ongoing_requests}")
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"ray_serve_url must be an http(s) URL, got {self.url!r}")

    @property
    def autoscaled(self) -> bool:
        """True when the replica count follows the load between ``min_replicas`` and ``max_replicas``."""
        return self.max_replicas is not None


@dataclass(frozen=True)
class PanelConfig:
    """One panel: where its backend runs ("local", "ray" or a URL), the models it offers (default first), its queue."""

    name: str
    backend: str = "local"
    models: tuple[str, ...] = ()
    concurrency_limit: int = 1
    ray: RayDeployment = field(default_factory=RayDeployment)

    @property
    def is_remote(self) -> bool:
        """True when the panel is served by another process (over HTTP or Ray Serve)."""
        return self.backend != "local"

    @property
    def is_ray(self) -> bool:
        """True when the panel is a Ray Serve application."""
        return self.backend == "ray"


@dataclass(frozen=True)
class AppConfig:
    """The whole app: title, suggested Space hardware and the panels in tab order."""

    title: str
    hardware: str
    panels: dict[str, PanelConfig] = field(default_factory=dict)


RAY_FIELDS = {
    "replicas": int, "min_replicas": int, "max_replicas": int, "num_cpus": float, "num_gpus": float,
    "max_ongoing_requests": int,
}


def ray_deployment(panel: str, settings: dict, url: str) -> RayDeployment:
    """A panel's Ray Serve settings from its ``spaces.yml`` entry; a bad value raises ValueError naming it."""
    values = {}
    for key, kind in RAY_FIELDS.items():
        if settings.get(key) is None:
            continue
        value = settings[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or (kind is int and value != int(value)):
            wanted = "a whole number" if kind is int else "a number"
            raise ValueError(f"panel {panel!r}: {key} must be {wanted}, got {value!r}")
        values[key] = kind(value)
    if "replicas" in values and "max_replicas" in values:
        raise ValueError(f"panel {panel!r}: set either replicas or min_replicas/max_replicas (autoscaling), not both")
    try:
        return RayDeployment(url=url, **values)
    except ValueError as error:
        raise ValueError(f"panel {panel!r}: {error}") from error


def load_config(path: str | Path = SPACES_FILE) -> AppConfig:
    """Read ``spaces.yml``; ``HEADLAB_<PANEL>_BACKEND`` environment variables override a panel's backend.

    ``HEADLAB_RAY_SERVE_URL`` overrides ``ray_serve_url``, the HTTP ingress of the ``backend: ray`` panels.
    """
    raw = yaml.safe_load(Path(path).read_text()) or {}
    ray_url = os.environ.get("HEADLAB_RAY_SERVE_URL") or str(raw.get("ray_serve_url", DEFAULT_RAY_SERVE_URL))
    panels = {}
    for name, settings in (raw.get("panels") or {}).items():
        if name not in SERVICES:
            raise ValueError(f"{path}: unknown panel {name!r}; known panels are {sorted(SERVICES)}")
        settings = settings or {}
        backend = os.environ.get(f"HEADLAB_{name.upper()}_BACKEND") or str(settings.get("backend", "local"))
        panels[name] = PanelConfig(
            name=name,
            backend=backend,
            models=tuple(str(model) for model in settings.get("models", ())),
            concurrency_limit=int(settings.get("concurrency_limit", 1)),
            ray=ray_deployment(name, settings, ray_url),
        )
    title, hardware = str(raw.get("title", "HeadLab")), str(raw.get("hardware", "cpu-basic"))
    return AppConfig(title=title, hardware=hardware, panels=panels)
