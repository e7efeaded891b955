"""bertviz's interactive head view and model view, made to work offline inside an iframe ``srcdoc``.

bertviz writes every attention weight into its HTML as JSON and loads require.js, d3 and jQuery from a CDN. Here the
three libraries come from local copies under ``assets/heads/js`` (vendored from npm: d3 5.7.0, jQuery 2.2.4,
require.js 2.3.6) inlined into one self-contained document, so the view works with no network. Because the weights
travel as JSON, the view is only offered for short inputs (``fits_bertviz``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from backends.core.service import ServiceError

JS_DIR = Path(__file__).resolve().parents[2] / "assets" / "heads" / "js"
CDN_REQUIRE = '<script src="https://cdnjs.cloudflare.com/ajax/libs/require.js/2.3.6/require.min.js"></script>'
VIEWS = ("head", "model")
MAX_TOKENS = 64
MAX_VALUES = 600_000  # layers × heads × T² weights written as JSON


def fits_bertviz(n_layers: int, n_heads: int, n_tokens: int) -> bool:
    """Whether an input is short enough for bertviz (its HTML grows with layers × heads × tokens²)."""
    return n_tokens <= MAX_TOKENS and n_layers * n_heads * n_tokens * n_tokens <= MAX_VALUES


def local_scripts() -> str:
    """d3 and jQuery as globals, then require.js with both registered as AMD modules (no CDN needed)."""
    sources = [(JS_DIR / name).read_text(encoding="utf-8") for name in ("d3.min.js", "jquery.min.js", "require.js")]
    modules = "define('d3', [], function () { return window.d3; });\n"
    modules += "define('jquery', [], function () { return window.jQuery; });"
    return "".join(f"<script>\n{source}\n</script>\n" for source in [*sources, modules])


def bertviz_document(view: str, layers: list[torch.Tensor], tokens: list[str]) -> str:
    """A complete offline HTML page with bertviz's ``view`` ("head" or "model") of ``layers`` (each ``[H, T, T]``)."""
    if view not in VIEWS:
        raise ServiceError(f"unknown bertviz view {view!r}; use one of {VIEWS}")
    from bertviz import head_view, model_view

    attention = [torch.round(layer.double(), decimals=4)[None] for layer in layers]  # short numbers, smaller HTML
    if view == "head":
        body = head_view(attention=attention, tokens=list(tokens), html_action="return").data
    else:
        body = model_view(attention=attention, tokens=list(tokens), display_mode="light", html_action="return").data
    if CDN_REQUIRE not in body:
        raise ServiceError("this bertviz version's page layout is unknown; the offline view cannot be built")
    body = body.replace(CDN_REQUIRE, local_scripts())
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'></head>"
        f"<body style='background:#fff;margin:0'>{body}</body></html>"
    )
