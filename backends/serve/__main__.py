"""Serve one panel's backend service over HTTP: ``python -m backends.serve heads --port 7861``.

The app then reaches it by setting the panel's ``backend`` in ``spaces.yml`` (or ``HEADLAB_HEADS_BACKEND``) to the
URL. Binds to 127.0.0.1 unless ``--host`` says otherwise.
"""

from __future__ import annotations

import argparse

import gradio as gr

from backends.core.registry import SERVICES, service_class
from backends.serve.api import add_api_endpoints


def build_server(panel: str) -> gr.Blocks:
    """A Gradio app whose API routes are ``panel``'s service endpoints."""
    service = service_class(panel)()
    with gr.Blocks(title=f"HeadLab {panel} service") as server:
        gr.Markdown(f"HeadLab **{panel}** backend service. Call it with `gradio_client`; see /?view=api.")
        add_api_endpoints(service.call, service.endpoints(), concurrency_limit=2, concurrency_id=panel)
    return server


def main() -> None:
    """Parse the command line and serve the panel until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("panel", choices=sorted(SERVICES))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7861)
    args = parser.parse_args()
    build_server(args.panel).queue(default_concurrency_limit=2).launch(
        server_name=args.host, server_port=args.port, show_error=True
    )


if __name__ == "__main__":
    main()
