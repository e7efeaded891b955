"""The README's API reference, generated from the panels' API classes: ``python -m backends.core.api_docs --write``.

The table between the README's ``api-reference`` markers is this module's output; a test keeps them equal.
"""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path

from backends.core.api import Endpoint
from backends.core.registry import APIS, api_class

README = Path(__file__).resolve().parents[2] / "README.md"
START, END = "<!-- api-reference:start -->", "<!-- api-reference:end -->"


def _params(spec: Endpoint) -> str:
    if not spec.params:
        return "—"
    return "<br>".join(
        f"`{p.name}`{'' if p.required else f' = `{p.default_literal}`'}: {p.doc}" for p in spec.params
    )


def _results(spec: Endpoint) -> str:
    return "<br>".join(f"`{r.name}` ({r.kind}): {r.doc}" for r in spec.results)


def reference_table() -> str:
    """One Markdown table of every panel's routes: the call, its parameters with defaults, its results."""
    rows = ["| route | parameters (in order; `= default` when optional) | results (in order) |", "| --- | --- | --- |"]
    for panel in APIS:
        for spec in api_class(panel).endpoints():
            summary = inspect.cleandoc(spec.summary).replace("|", "\\|")
            rows.append(f"| `/{spec.name}`<br>{summary} | {_params(spec)} | {_results(spec)} |")
    return "\n".join(rows)


def readme_with_reference(readme: str) -> str:
    """``readme`` with the text between the markers replaced by :func:`reference_table`."""
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{reference_table()}\n{END}{tail}"


def main() -> None:
    """Print the table, or rewrite the README's reference with ``--write``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help="rewrite README.md's API reference in place")
    if parser.parse_args().write:
        README.write_text(readme_with_reference(README.read_text()))
    else:
        print(reference_table())


if __name__ == "__main__":
    main()
