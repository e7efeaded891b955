"""The Heads panel's backend service: attention maps of language models, their views and exports.

Every endpoint takes the model first ("" = the embedded SmolLM2) and the text second. One analysis pass per
(model, text) computes the per-head statistics and the model-view thumbnails and, for short inputs, keeps every
layer's maps, so the views that follow (a head, the mean over heads, the rollout, bertviz) reuse it; for long inputs
those views run their own pass that keeps only what they need.
"""

from __future__ import annotations

import base64
import io
import threading
import time
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

from backends.core.service import Service, ServiceError
from backends.heads import bertviz_view, render
from backends.heads.ablation import ablation_report, require_causal
from backends.heads.api import HeadsAPI
from backends.heads.attention import (
    CaptureLayers,
    HeadStats,
    Reducer,
    Rollout,
    Thumbnails,
    Tokenized,
    capture_fits,
    replay,
    run_with_attention,
    thumbnail_size,
    tokenize,
)
from backends.heads.generation import generate_with_attention
from backends.heads.models import EMBEDDED_MODELS, SMOLLM2, LanguageModel, load_language_model
from backends.heads.scores import ProbeScoreCache, TextScores, head_scores

#: keep every layer's maps of an analysed text when they fit in this many floats (64 MB)
CAPTURE_BUDGET = 16_000_000
MAX_CONTROL_SHARE = 0.05  # more control characters than this and the input is not text
MAP_VIEWS = ("head", "mean", "rollout")
FIGURES = ("model", *MAP_VIEWS)
EXPORT_FORMATS = {"png": "image/png", "svg": "image/svg+xml", "json": "application/json", "csv": "text/csv"}


@dataclass
class Analysis:
    """One analysed (model, text): tokens, statistics, thumbnails and, for short inputs, every layer's maps."""

    lm: LanguageModel
    tokenized: Tokenized
    stats: dict
    thumbnails: dict[str, torch.Tensor]
    layers: dict[int, torch.Tensor] | None
    seconds: float
    rollout: torch.Tensor | None = None  # computed on first request
    text_scores: dict | None = None  # head-type scores of the text (TextScores, same pass)


@dataclass
class AttentionMap:
    """One ``[T, T]`` map to draw or export, with its title and what it is."""

    values: np.ndarray
    title: str
    meta: dict


class HeadsService(HeadsAPI, Service):
    """Attention maps of transformer language models: per-head stats, model view, heatmaps, rollout, bertviz."""

    default_model = SMOLLM2
    known_models = EMBEDDED_MODELS
    max_cached_analyses = 4

    def __init__(self, device: str | None = None):
        super().__init__(device)
        self._analyses: OrderedDict[tuple[str, str], Analysis] = OrderedDict()
        self._analysis_lock = threading.Lock()

    def load_model(self, model_id: str) -> LanguageModel:
        """SmolLM2, MiniLM or a hub model, with eager attention on this service's device."""
        return load_language_model(model_id, device=self.device, dtype=self.dtype)

    # -- endpoints ----------------------------------------------------------------------------------------------------
    def heads_analyze(self, model: str = "", text: str = "") -> dict:
        analysis = self._analysis(model, text)
        lm, tokenized = analysis.lm, analysis.tokenized
        return {
            "model": lm.model_id,
            "tokens": tokenized.tokens,
            "n_tokens": len(tokenized.tokens),
            "n_input_tokens": tokenized.n_input_tokens,
            "truncated": tokenized.truncated,
            "notice": truncation_notice(lm, tokenized),
            "max_tokens": lm.max_tokens,
            "context_length": lm.context_length,
            "is_causal": lm.is_causal,
            "n_layers": lm.n_layers,
            "n_heads": lm.n_heads,
            "n_kv_heads": lm.n_kv_heads,
            "kv_groups": kv_groups(lm),
            "stats": analysis.stats,
            "bertviz_available": bertviz_view.fits_bertviz(lm.n_layers, lm.n_heads, len(tokenized.tokens)),
            "seconds": analysis.seconds,
        }

    def heads_model_view(self, model: str = "", text: str = "", hide_first_token: int = 0) -> tuple[Image.Image, dict]:
        figure, layout = self._model_view_figure(model, text, bool(hide_first_token))
        return render.figure_png(figure), layout.as_dict()

    def heads_map(
        self, model: str = "", text: str = "", view: str = "head", layer: int = 0, head: int = 0,
        hide_first_token: int = 0,
    ) -> Image.Image:
        attention_map = self._attention_map(model, text, view, int(layer), int(head))
        return render.figure_png(self._map_figure(model, text, attention_map, bool(hide_first_token)))

    def heads_export(
        self,
        model: str = "",
        text: str = "",
        figure: str = "head",
        fmt: str = "png",
        layer: int = 0,
        head: int = 0,
        hide_first_token: int = 0,
    ) -> dict:
        fmt = (fmt or "").lower()
        if figure not in FIGURES:
            raise ServiceError(f"unknown figure {figure!r}; use one of {FIGURES}")
        if fmt not in EXPORT_FORMATS:
            raise ServiceError(f"unknown export format {fmt!r}; use one of {tuple(EXPORT_FORMATS)}")
        hide = bool(hide_first_token)
        if figure == "model":
            if fmt in ("json", "csv"):
                raise ServiceError("JSON/CSV export is for one map (a head, the mean, the rollout), not the model view")
            drawn, _ = self._model_view_figure(model, text, hide)
            name = f"{_file_stem(self._analysis(model, text).lm)}-model-view"
        else:
            attention_map = self._attention_map(model, text, figure, int(layer), int(head))
            name = attention_map.meta["name"]
            if fmt in ("json", "csv"):
                tokens = self._analysis(model, text).tokenized.tokens
                content = (
                    render.matrix_json(attention_map.values, tokens, attention_map.meta)
                    if fmt == "json"
                    else render.matrix_csv(attention_map.values, tokens)
                )
                return _export(f"{name}.{fmt}", fmt, content)
            drawn = self._map_figure(model, text, attention_map, hide)
        if fmt == "svg":
            return _export(f"{name}.svg", fmt, render.figure_svg(drawn))
        buffer = io.BytesIO()
        render.figure_png(drawn).save(buffer, format="png", optimize=True)
        return _export(f"{name}.png", fmt, base64.b64encode(buffer.getvalue()).decode("ascii"), "base64")

    def heads_bertviz(self, model: str = "", text: str = "", view: str = "head") -> dict:
        analysis = self._analysis(model, text)
        lm, tokens = analysis.lm, analysis.tokenized.tokens
        if not bertviz_view.fits_bertviz(lm.n_layers, lm.n_heads, len(tokens)):
            raise ServiceError(
                f"bertviz views are for short inputs (here at most {bertviz_view.MAX_TOKENS} tokens and "
                f"{bertviz_view.MAX_VALUES:,} weights); this text has {len(tokens)} tokens. "
                "Use the model view and heatmaps, which scale to long texts."
            )
        layers = self._layers(analysis, range(lm.n_layers))
        document = bertviz_view.bertviz_document(view, [layers[layer] for layer in range(lm.n_layers)], tokens)
        return {
            "model": lm.model_id,
            "view": view,
            "n_tokens": len(tokens),
            "bytes": len(document),
            "document": document,
        }

    # -- analysis and its cache ---------------------------------------------------------------------------------------
    def _analysis(self, model: str, text: str) -> Analysis:
        text = clean_text(text)
        lm = self.model(model)
        key = (lm.model_id, text)
        with self._analysis_lock:
            if key in self._analyses:
                self._analyses.move_to_end(key)
                return self._analyses[key]
        start = time.perf_counter()
        stats = HeadStats(lm.n_layers, lm.n_heads, lm.is_causal)
        scores = TextScores(lm.n_layers, lm.n_heads)
        thumbnails = Thumbnails(lm.n_layers, lm.n_heads, thumbnail_size(lm.n_layers, lm.n_heads))
        tokenized = tokenize(lm, text)
        capture = CaptureLayers() if capture_fits(lm, len(tokenized.tokens), CAPTURE_BUDGET) else None
        run_with_attention(lm, tokenized.input_ids, [stats, thumbnails, scores, *([capture] if capture else [])])
        analysis = Analysis(
            lm=lm,
            tokenized=tokenized,
            stats=stats.result(),
            thumbnails=thumbnails.result(),
            layers=capture.result()["layers"] if capture else None,
            seconds=round(time.perf_counter() - start, 3),
            text_scores=scores.result(),
        )
        with self._analysis_lock:
            self._analyses[key] = analysis
            _trim(self._analyses, self.max_cached_analyses)
        return analysis

    def _run(self, analysis: Analysis, reducers: list[Reducer]) -> None:
        """Feed ``reducers`` the analysis's kept maps, or run a new pass when the text was too long to keep them."""
        if analysis.layers is not None:
            replay(analysis.layers, analysis.tokenized.input_ids, reducers)
        else:
            run_with_attention(analysis.lm, analysis.tokenized.input_ids, reducers)

    def _layers(self, analysis: Analysis, layers: range | list[int]) -> dict[int, torch.Tensor]:
        capture = CaptureLayers(layers)
        self._run(analysis, [capture])
        return capture.result()["layers"]

    def _rollout(self, analysis: Analysis) -> torch.Tensor:
        if analysis.rollout is None:
            rollout = Rollout()
            self._run(analysis, [rollout])
            analysis.rollout = rollout.result()["rollout"]
        return analysis.rollout

    def _attention_map(self, model: str, text: str, view: str, layer: int, head: int) -> AttentionMap:
        analysis = self._analysis(model, text)
        lm = analysis.lm
        if view not in MAP_VIEWS:
            raise ServiceError(f"unknown view {view!r}; use one of {MAP_VIEWS}")
        if view == "rollout":
            values = self._rollout(analysis).numpy()
            return AttentionMap(values, "Attention rollout over all layers", _meta(lm, "rollout", None, None))
        if not 0 <= layer < lm.n_layers:
            raise ServiceError(f"layer {layer} does not exist: {lm.model_id} has layers 0–{lm.n_layers - 1}")
        maps = self._layers(analysis, [layer])[layer]
        if view == "mean":
            title = f"Layer {layer}: mean over its {lm.n_heads} heads"
            return AttentionMap(maps.mean(0).numpy(), title, _meta(lm, "mean", layer, None))
        if not 0 <= head < lm.n_heads:
            raise ServiceError(f"head {head} does not exist: {lm.model_id} has heads 0–{lm.n_heads - 1} per layer")
        group = f" · KV head {lm.kv_group(head)}" if lm.n_kv_heads < lm.n_heads else ""
        return AttentionMap(maps[head].numpy(), f"Layer {layer} · head {head}{group}", _meta(lm, "head", layer, head))

    def _map_figure(self, model: str, text: str, attention_map: AttentionMap, hide_first: bool) -> Figure:
        analysis = self._analysis(model, text)
        title = f"{analysis.lm.model_id} — {attention_map.title}"
        causal = analysis.lm.is_causal and attention_map.meta["view"] != "rollout"
        return render.heatmap_figure(attention_map.values, analysis.tokenized.tokens, title, hide_first, causal)

    def _model_view_figure(self, model: str, text: str, hide_first: bool) -> tuple[Figure, render.ModelViewLayout]:
        analysis = self._analysis(model, text)
        lm = analysis.lm
        thumbnails = analysis.thumbnails["without_first" if hide_first else "full"]
        shown = "first-token column hidden" if hide_first else "all tokens"
        n_tokens = len(analysis.tokenized.tokens)
        title = f"{lm.model_id}: {lm.n_layers} layers × {lm.n_heads} heads, {n_tokens} tokens ({shown})"
        return render.model_view_figure(thumbnails, lm.heads_per_kv_head, title)

    # -- head-type scores, ablation lab, generation stepper (issue 3) -------------------------------------------------
    _probe_scores = ProbeScoreCache()  # probe-based scores depend on the model only: computed once per model

    def heads_scores(self, model: str = "", text: str = "") -> dict:
        analysis = self._analysis(model, text)
        found = head_scores(analysis.lm, analysis.text_scores, self._probe_scores.get(analysis.lm))
        return {**found, "tokens": analysis.tokenized.tokens, "truncated": analysis.tokenized.truncated}

    def heads_ablate(self, model: str = "", text: str = "", heads: str = "", mode: str = "uniform") -> dict:
        text, lm = clean_text(text), self.model(model)
        require_causal(lm)
        retrieval = self._probe_scores.get(lm)["scores"]["retrieval"]
        return ablation_report(lm, text, heads, mode, retrieval)

    def heads_generate(self, model: str = "", text: str = "", n_tokens: int = 12) -> dict:
        return generate_with_attention(self.model(model), clean_text(text), int(n_tokens))


def clean_text(text: str) -> str:
    """The text to analyse, or a :class:`ServiceError` for empty input or input that is not text."""
    if not isinstance(text, str):
        raise ServiceError(f"the input must be text, not {type(text).__name__}")
    stripped = text.strip()
    if not stripped:
        raise ServiceError("enter some text to analyse (the input is empty)")
    control = sum(1 for char in stripped if unicodedata.category(char)[0] == "C" and char not in "\n\r\t")
    if control > MAX_CONTROL_SHARE * len(stripped):
        raise ServiceError(
            f"the input does not look like text ({control} of its {len(stripped)} characters are control or binary "
            "characters); paste plain text"
        )
    return stripped


def truncation_notice(lm: LanguageModel, tokenized: Tokenized) -> str:
    """A plain sentence saying the text was cut to the model's limit ("" when it was not)."""
    if not tokenized.truncated:
        return ""
    return (
        f"The text has {tokenized.n_input_tokens:,} tokens; {lm.model_id} is analysed on at most {lm.max_tokens:,} "
        f"(its context is {lm.context_length:,} tokens), so only the first {len(tokenized.tokens):,} tokens were used."
    )


def kv_groups(lm: LanguageModel) -> list[list[int]]:
    """For each key/value head, the query heads that share it (one head per group without GQA)."""
    return [list(range(kv * lm.heads_per_kv_head, (kv + 1) * lm.heads_per_kv_head)) for kv in range(lm.n_kv_heads)]


def _meta(lm: LanguageModel, view: str, layer: int | None, head: int | None) -> dict:
    parts = {"head": f"L{layer}H{head}", "mean": f"L{layer}-mean", "rollout": "rollout"}
    return {
        "model": lm.model_id,
        "view": view,
        "layer": layer,
        "head": head,
        "kv_head": None if head is None else lm.kv_group(head),
        "name": f"{_file_stem(lm)}-{parts[view]}",
    }


def _file_stem(lm: LanguageModel) -> str:
    """The model's id made safe as the start of a file name."""
    return lm.model_id.strip("/").replace("/", "_")


def _export(filename: str, fmt: str, content: str, encoding: str = "utf-8") -> dict:
    return {"filename": filename, "mime": EXPORT_FORMATS[fmt], "encoding": encoding, "content": content}


def _trim(cache: OrderedDict, size: int) -> None:
    while len(cache) > size:
        cache.popitem(last=False)
