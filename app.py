"""HeadLab: an interactive lab for task-specific attention heads across modalities.

``python app.py`` serves the four panels on 127.0.0.1:7860 (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT override).
Each panel talks to its own backend service, in this process or remote, as ``spaces.yml`` says.
"""

from __future__ import annotations

import importlib
import os

import gradio as gr

from backends.core.client import make_client
from backends.core.config import AppConfig, load_config
from backends.core.registry import api_class
from backends.serve.api import add_api_endpoints
from ui import atlas as atlas_tab
from ui.common import backend_status, queue_settings

TAB_LABELS = {
    "heads": "Heads",
    "guidance": "Guidance",
    "segmentation": "Referring segmentation",
    "restoration": "Restoration",
}

STATUS_REFRESH_SECONDS = 5  # how often each panel's header re-reads its backend's state (loading, loaded, down)

INTRO = """# HeadLab
Explore *task-specific attention heads*: what heads of language models attend to, how perturbing single heads of a
diffusion transformer steers its images, and how attention fuses text with images to segment and restore them.
Every panel runs offline on an embedded model; hub models load when the hub is reachable."""


def build_app(config: AppConfig | None = None) -> gr.Blocks:
    """The HeadLab Gradio app: one tab per panel, the Atlas tab, and every panel's API routes as the only public API.

    The routes are added first, so each keeps its endpoint's own name; every UI event is private.
    """
    config = config or load_config()
    clients = {name: make_client(panel) for name, panel in config.panels.items()}
    statuses = []
    with gr.Blocks(title=config.title) as app:
        route_ids: set[int] = set()
        for name, panel in config.panels.items():
            route_ids |= add_api_endpoints(clients[name].call, api_class(name).endpoints(), **queue_settings(panel))
        gr.Markdown(INTRO)
        with gr.Tabs() as tabs:
            for name, panel in config.panels.items():
                with gr.Tab(TAB_LABELS[name], id=name):
                    statuses.append(gr.Markdown())
                    importlib.import_module(f"ui.{name}").build(clients[name], panel)
            with gr.Tab("Atlas", id="atlas"):
                atlas_tab.build(clients, tabs)

        def refresh_statuses() -> list[str]:
            return [backend_status(client) for client in clients.values()]

        app.load(refresh_statuses, None, statuses, queue=False)
        gr.Timer(STATUS_REFRESH_SECONDS).tick(refresh_statuses, None, statuses, queue=False, show_progress="hidden")
    for function_id, function in app.fns.items():
        if function_id not in route_ids:
            function.api_visibility = "private"
    return app


if __name__ == "__main__":
    build_app().queue(default_concurrency_limit=1, max_size=64).launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"), show_error=True, max_file_size="20mb"
    )
