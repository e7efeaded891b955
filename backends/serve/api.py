"""Expose a panel's endpoints as Gradio API routes (``api_name`` = endpoint name, parameters as the API declares).

Used twice: by ``python -m backends.serve PANEL`` (routes call the service directly) and by ``app.py`` (routes call
the panel's client, so the main app's API goes UI → client → service like the panels do).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

import gradio as gr
from PIL import Image

from backends.core.api import Endpoint, Param
from backends.core.service import ServiceError

log = logging.getLogger("headlab")
PYTHON_TYPES = {"str": str, "int": int, "float": float, "image": Image.Image | None}


def _input_component(param: Param) -> gr.components.Component:
    value = None if param.required else param.default
    if param.kind == "image":
        return gr.Image(type="pil", image_mode=None, label=param.name)
    common = {"label": param.name, "info": param.doc or None}
    if param.kind == "int":
        return gr.Number(value=value, precision=0, **common)
    if param.kind == "float":
        return gr.Number(value=value, **common)
    return gr.Textbox(value=value, **common)


def _output_component(kind: str, label: str) -> gr.components.Component:
    return gr.Image(type="pil", format="png", label=label) if kind == "image" else gr.JSON(label=label)


def add_api_endpoints(
    call: Callable[..., Any], endpoints: list[Endpoint], concurrency_limit: int = 1, concurrency_id: str | None = None
) -> set[int]:
    """Inside a ``gr.Blocks`` context, add one hidden API route per endpoint; ``call(name, *args)`` runs it.

    A :class:`ServiceError` becomes a ``gr.Error`` whose message reaches the API caller as it is; anything else is
    logged and reaches the caller as "internal error in <endpoint>". Returns the ids of the routes' Gradio functions.
    """
    route_ids = set()
    with gr.Column(visible=False):
        for spec in endpoints:
            inputs = [_input_component(param) for param in spec.params]
            outputs = [_output_component(result.kind, result.name) for result in spec.results]
            trigger = gr.Button(spec.name, visible=False)
            dependency = trigger.click(
                route(call, spec),
                inputs,
                outputs,
                api_name=spec.name,
                api_description=api_description(spec),
                concurrency_limit=concurrency_limit,
                concurrency_id=concurrency_id,
            )
            route_ids.add(dependency["id"])
    return route_ids


def api_description(spec: Endpoint) -> str:
    """The route's description: the summary, then each parameter and result with its description."""
    lines = [spec.summary]
    lines += [f"{param.name}: {param.doc}" for param in spec.params]
    lines += [f"returns {result.name}: {result.doc}" for result in spec.results]
    return "\n".join(lines)


def route(call: Callable[..., Any], spec: Endpoint) -> Callable[..., Any]:
    """A function with the endpoint's own signature (so Gradio names, orders and defaults its parameters)."""

    def run(*args: Any) -> Any:
        try:
            return call(spec.name, *args)
        except ServiceError as error:
            raise gr.Error(str(error)) from error
        except Exception as error:
            log.exception("route %s failed", spec.name)
            raise gr.Error(f"internal error in {spec.name}") from error

    run.__name__ = spec.name
    run.__doc__ = spec.summary
    run.__signature__ = inspect.Signature([
        inspect.Parameter(param.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=param.default,
                          annotation=PYTHON_TYPES[param.kind])
        for param in spec.params
    ])
    return run
