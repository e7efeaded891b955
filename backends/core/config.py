"""HeadLab's deployment settings, read from ``spaces.yml``."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from backends.core.registry import SERVICES

ROOT = Path(__file__).resolve().parents[2]
SPACES_FILE = ROOT / "spaces.yml"


@dataclass(frozen=True)
class PanelConfig:
    """One panel: where its backend runs ("local" or a URL), the models it offers (default first), its queue."""

    name: str
    backend: str = "local"
    models: tuple[str, ...] = ()
    concurrency_limit: int = 1

    @property
    def is_remote(self) -> bool:
        """True when the panel is served by another process over HTTP."""
        return self.backend != "local"


@dataclass(frozen=True)
class AppConfig:
    """The whole app: title, suggested Space hardware and the panels in tab order."""

    title: str
    hardware: str
    panels: dict[str, PanelConfig] = field(default_factory=dict)


def load_config(path: str | Path = SPACES_FILE) -> AppConfig:
    """Read ``spaces.yml``; ``HEADLAB_<PANEL>_BACKEND`` environment variables override a panel's backend."""
    raw = yaml.safe_load(Path(path).read_text()) or {}
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
        )
    title, hardware = str(raw.get("title", "HeadLab")), str(raw.get("hardware", "cpu-basic"))
    return AppConfig(title=title, hardware=hardware, panels=panels)
