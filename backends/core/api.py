"""Panels' public APIs as plain, torch-free Python: the single source of every route, parameter and result.

A panel's API is a class of stub methods marked with :func:`endpoint` (``backends/<panel>/api.py``). Each stub's
signature gives the parameters in order, their kinds (``str``, ``int``, ``float`` or ``PIL.Image.Image``; ``None``
when no image is given) and defaults; its docstring gives a one-line summary, an ``Args:`` section
(``name: description``) and a ``Returns:`` section (``label: description``); the decorator names the results and
their kinds (``"json"`` or ``"image"``). The panel's service implements the same methods with the same signatures
(checked when the service class is defined), and the app, ``backends.serve`` and the remote client build their routes
from these specs without importing the service, so a front end whose panels all run elsewhere needs no ML stack.
"""

from __future__ import annotations

import functools
import inspect
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from PIL import Image

PARAM_KINDS = {str: "str", int: "int", float: "float", Image.Image: "image"}
RESULT_KINDS = ("json", "image")
_SECTION = re.compile(r"^(Args|Returns):\s*$")
_ENTRY = re.compile(r"^(\w+):\s*(.*)$")


@dataclass(frozen=True)
class Param:
    """One endpoint parameter: name, kind (str, int, float or image), default (``inspect._empty`` if none), doc."""

    name: str
    kind: str
    default: Any = inspect.Parameter.empty
    doc: str = ""

    @property
    def required(self) -> bool:
        """Whether a caller must give this parameter."""
        return self.default is inspect.Parameter.empty

    @property
    def default_literal(self) -> str:
        """The default as Python source with double quotes (``""``, ``0.5``, ``None``)."""
        return repr(self.default).replace("'", '"')


@dataclass(frozen=True)
class Result:
    """One endpoint result: its label, kind ("json" or "image") and description."""

    name: str
    kind: str
    doc: str = ""


@dataclass(frozen=True)
class Endpoint:
    """An API endpoint of a panel: name, parameters in order, results in order, one-line summary."""

    name: str
    params: tuple[Param, ...]
    results: tuple[Result, ...]
    summary: str

    @property
    def returns(self) -> tuple[str, ...]:
        """The result kinds in order."""
        return tuple(result.kind for result in self.results)

    def signature(self) -> str:
        """The call as Python would write it, e.g. ``restore(image, prompt="", model="", reference=None)``."""
        parts = [param.name if param.required else f"{param.name}={param.default_literal}" for param in self.params]
        return f"{self.name}({', '.join(parts)})"


def endpoint(**results: str) -> Callable[[Callable], Callable]:
    """Mark a stub method as an API endpoint whose results are labelled and typed, e.g. ``mask="image"``."""
    unknown = [kind for kind in results.values() if kind not in RESULT_KINDS]
    if not results or unknown:
        raise ValueError(f"name each result with a kind in {RESULT_KINDS}, e.g. @endpoint(answer='json')")

    def mark(method: Callable) -> Callable:
        method.__endpoint_results__ = dict(results)
        return method

    return mark


class PanelAPI:
    """Base of the panels' API classes: the endpoints their stubs declare, plus the health call ``<panel>_info``."""

    panel: ClassVar[str]

    @classmethod
    def info_endpoint_name(cls) -> str:
        """The API name of this panel's health call, e.g. ``heads_info``."""
        return f"{cls.panel}_info"

    @classmethod
    @functools.cache
    def endpoints(cls) -> list[Endpoint]:
        """The health call first, then every endpoint in the order the API class declares it."""
        found = [Endpoint(cls.info_endpoint_name(), (), (Result("info", "json", "health and state"),),
                          "Health and state of the panel's service: device, loaded and loading models, load times.")]
        seen: set[str] = set()
        for klass in reversed(cls.__mro__):
            for name, method in vars(klass).items():
                if hasattr(method, "__endpoint_results__") and name not in seen:
                    seen.add(name)
                    found.append(describe(method))
        return found


def describe(method: Callable) -> Endpoint:
    """The :class:`Endpoint` a marked stub declares (its signature, docstring and result kinds)."""
    hints = typing.get_type_hints(method)
    summary, param_docs, result_docs = parse_docstring(inspect.getdoc(method) or "")
    params = []
    for param in list(inspect.signature(method).parameters.values())[1:]:
        kind = PARAM_KINDS.get(_strip_optional(hints.get(param.name)))
        if kind is None:
            raise TypeError(f"{method.__qualname__}: parameter {param.name} needs a str/int/float/image hint")
        params.append(Param(param.name, kind, param.default, param_docs.get(param.name, "")))
    results = tuple(Result(name, kind, result_docs.get(name, ""))
                    for name, kind in method.__endpoint_results__.items())
    return Endpoint(method.__name__, tuple(params), results, summary)


def parse_docstring(doc: str) -> tuple[str, dict[str, str], dict[str, str]]:
    """``(summary, {param: description}, {result: description})`` of a Google-style docstring."""
    summary_lines: list[str] = []
    sections: dict[str, dict[str, str]] = {"Args": {}, "Returns": {}}
    section: dict[str, str] | None = None
    last = ""
    for raw in doc.splitlines():
        line = raw.strip()
        if header := _SECTION.match(line):
            section = sections[header.group(1)]
        elif section is None:
            summary_lines.append(line)
        elif entry := _ENTRY.match(line):
            last = entry.group(1)
            section[last] = entry.group(2)
        elif line and last:
            section[last] += f" {line}"
    summary = " ".join(" ".join(summary_lines).split())
    return summary, sections["Args"], sections["Returns"]


def check_implements(service: type[PanelAPI]) -> None:
    """Raise TypeError unless ``service`` implements each endpoint its API declares, with the same parameters."""
    for spec in service.endpoints()[1:]:
        method = getattr(service, spec.name)
        if hasattr(method, "__endpoint_results__"):
            raise TypeError(f"{service.__name__} does not implement the endpoint {spec.name}")
        implemented = [(p.name, p.default) for p in list(inspect.signature(method).parameters.values())[1:]]
        declared = [(p.name, p.default) for p in spec.params]
        if implemented != declared:
            raise TypeError(f"{service.__name__}.{spec.name}{implemented} differs from its API {declared}")


def _strip_optional(hint: Any) -> Any:
    """``X | None`` → ``X``."""
    args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    return args[0] if len(args) == 1 and type(None) in typing.get_args(hint) else hint
