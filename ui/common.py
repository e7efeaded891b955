"""Helpers every panel's UI shares: calling the backend with clear errors, queue settings, explanations."""

from __future__ import annotations

from typing import Any

import gradio as gr

from backends.core.client import Client
from backends.core.config import PanelConfig
from backends.core.service import ServiceError


def call_backend(client: Client, endpoint: str, *args: Any) -> Any:
    """Call ``endpoint``; a backend error becomes a ``gr.Error`` the user sees, and the panel stays usable."""
    try:
        return client.call(endpoint, *args)
    except ServiceError as error:
        raise gr.Error(str(error), title=f"{client.panel.capitalize()} panel") from error


def queue_settings(config: PanelConfig) -> dict[str, Any]:
    """Event keyword arguments that put a panel's work in its own queue, so one heavy panel starves no other."""
    return {"concurrency_id": config.name, "concurrency_limit": config.concurrency_limit}


def model_choices(config: PanelConfig) -> gr.Dropdown:
    """A model picker: the panel's models from spaces.yml (embedded default first); any other id may be typed."""
    return gr.Dropdown(
        choices=list(config.models),
        value=config.models[0] if config.models else None,
        allow_custom_value=True,
        label="Model",
        info="Embedded models work offline; hub ids need internet (and usually a GPU).",
    )


def explanation(title: str, markdown: str, open: bool = False) -> gr.Accordion:
    """A collapsible teaching text."""
    with gr.Accordion(title, open=open) as accordion:
        gr.Markdown(markdown)
    return accordion


def backend_status(client: Client) -> str:
    """One line for the panel header: where the backend runs, its device and what is loaded or loading."""
    try:
        info = client.info()
    except ServiceError as error:
        return f"⚠️ {error}"
    loading = f" · loading **{info['loading']}**…" if info.get("loading") else ""
    loaded = ", ".join(info.get("loaded_models") or []) or "none yet (models load on first use)"
    return f"Backend: {info.get('device', '?')} · models loaded: {loaded}{loading}"
