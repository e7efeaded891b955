"""Expose a panel's endpoints as Gradio API routes (``api_name`` = endpoint name).

Used twice: by ``python -m backends.serve PANEL`` (routes call the service directly) and by ``app.py`` (routes call
the panel's client, so the main app's API goes UI → client → service like the panels do).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import gradio as gr

from backends.core.service import Endpoint, ServiceError


def _input_component(kind: str, default: Any) -> gr.components.Component:
    value = None if default is inspect.Parameter.empty else default
    if kind == "image":
        return gr.Image(type="pil", image_mode=None)
    if kind == "int":
        return gr.Number(value=value, precision=0)
    if kind == "float":
        return gr.Number(value=value)
    return gr.Textbox(value=value)


def _output_component(kind: str) -> gr.components.Component:
    return gr.Image(type="pil", format="png") if kind == "image" else gr.JSON()


def add_api_endpoints(
    call: Callable[..., Any], endpoints: list[Endpoint], concurrency_limit: int = 1, concurrency_id: str | None = None
) -> None:
    """Inside a ``gr.Blocks`` context, add one hidden API route per endpoint; ``call(name, *args)`` runs it.

    A :class:`ServiceError` becomes a ``gr.Error`` whose message reaches the API caller as it is.
    """
    with gr.Column(visible=False):
        for spec in endpoints:
            inputs = [_input_component(param.kind, param.default) for param in spec.params]
            outputs = [_output_component(kind) for kind in spec.returns]
            trigger = gr.Button(spec.name, visible=False)
            trigger.click(
                _route(call, spec.name),
                inputs,
                outputs,
                api_name=spec.name,
                api_description=spec.doc.split("\n\n")[0] or None,
                concurrency_limit=concurrency_limit,
                concurrency_id=concurrency_id,
            )


def _route(call: Callable[..., Any], name: str) -> Callable[..., Any]:
    def run(*args: Any) -> Any:
        try:
            return call(name, *args)
        except ServiceError as error:
            raise gr.Error(str(error)) from error

    run.__name__ = name
    return run
