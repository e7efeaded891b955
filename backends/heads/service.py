"""The Heads panel's backend service: attention maps of language models, their views and exports.

Every endpoint takes the model first ("" = the embedded SmolLM2) and the text second. Texts run up to the model's
context (8,192 tokens for SmolLM2). One analysis pass per (model, text) computes the per-head statistics, the
text-based head scores and every head's map pooled to at most 256×256 blocks (exact for inputs up to 256 tokens);
the model view and the heatmaps are drawn from those. A zoom into a token window runs its own pass that keeps only
that window, at full resolution up to 256 tokens a side; the rollout and bertviz run their own pass on short inputs.
"""

from __future__ import annotations

import base64
import io
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

from backends.core.heads import EffectsCache, Head, choose_tasks, format_heads, select_tasks
from backends.core.service import Service, ServiceError
from backends.core.text import check_text
from backends.heads import bertviz_view, render
from backends.heads.ablation import ablation_report, mean_outputs, require_causal
from backends.heads.api import HeadsAPI
from backends.heads.attention import (
    MAP_BINS,
    HeadStats,
    PooledMaps,
    Rollout,
    Tokenized,
    block_size,
    run_with_attention,
    thumbnail_size,
    tokenize,
)
from backends.heads.effects import ATLAS_VERSION, TASKS, compute_head_effects, head_stack
from backends.heads.generation import generate_with_attention
from backends.heads.models import (
    DEFAULT_TOKEN_LIMIT,
    EMBEDDED_MODELS,
    SMOLLM2,
    LanguageModel,
    load_language_model,
)
from backends.heads.needles import NeedleCache, NeedleSetup
from backends.heads.plan import Ablation, by_layer
from backends.heads.scores import ProbeScoreCache, TextScores, head_scores

MAP_VIEWS = ("head", "mean", "rollout")
MAX_CACHED_WINDOWS = 8  # zoom windows kept per analysed text
FIGURES = ("model", *MAP_VIEWS)
SHIPPED_ATLASES = Path(__file__).resolve().parents[2] / "assets" / "heads" / "head_effects"
EXPORT_FORMATS = {"png": "image/png", "svg": "image/svg+xml", "json": "application/json", "csv": "text/csv"}


@dataclass
class Analysis:
    """One analysed (model, text): tokens, statistics, every head's pooled map and the text's head scores."""

    lm: LanguageModel
    tokenized: Tokenized
    stats: dict
    pooled: PooledMaps
    seconds: float
    text_scores: dict
    heads_off: str = "none"  # the heads mean-ablated in every pass of this analysis
    ablation: Ablation | None = None
    rollout: torch.Tensor | None = None  # computed on first request
    #: zoomed windows already computed: (rows, columns, layer or None) → their pooled maps
    windows: OrderedDict = field(default_factory=OrderedDict)


@dataclass
class AttentionMap:
    """One map to draw or export (rows = queries, columns = keys, exact or pooled), its labels, title and meta."""

    values: np.ndarray
    rows: list[str]  # one label per row: the token, or the block's token range when pooled
    columns: list[str]
    title: str
    meta: dict
    causal: bool  # an exact causal map: the part above the diagonal is masked out


class HeadsService(HeadsAPI, Service):
    """Attention maps of transformer language models: per-head stats, model view, heatmaps, rollout, bertviz."""

    default_model = SMOLLM2
    known_models = EMBEDDED_MODELS
    max_cached_analyses = 4

    def __init__(self, device: str | None = None, token_limit: int = DEFAULT_TOKEN_LIMIT):
        super().__init__(device)
        self.token_limit = token_limit
        self._analyses: OrderedDict[tuple[str, str], Analysis] = OrderedDict()
        self._analysis_lock = threading.Lock()
        self.effects_cache = EffectsCache(self.panel, SHIPPED_ATLASES)

    def load_model(self, model_id: str) -> LanguageModel:
        """SmolLM2, MiniLM or a hub model on this service's device, analysing at most ``token_limit`` tokens."""
        return load_language_model(model_id, device=self.device, dtype=self.dtype, token_limit=self.token_limit)

    # -- endpoints ----------------------------------------------------------------------------------------------------
    def heads_analyze(self, model: str = "", text: str = "", heads_off: str = "") -> dict:
        analysis = self._analysis(model, text, heads_off)
        lm, tokenized = analysis.lm, analysis.tokenized
        return {
            "model": lm.model_id,
            "heads_off": analysis.heads_off,
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

    def heads_model_view(
        self, model: str = "", text: str = "", hide_first_token: int = 0, start: int = 0, end: int = 0,
        heads_off: str = "",
    ) -> tuple[Image.Image, dict]:
        hide = flag("hide_first_token", hide_first_token)
        figure, layout, window = self._model_view_figure(self._analysis(model, text, heads_off), hide, int(start),
                                                         int(end))
        return render.figure_png(figure), {**layout.as_dict(), "window": [window.start, window.stop]}

    def heads_map(self, model: str = "", text: str = "", view: str = "head", layer: int = 0, head: int = 0,
                  hide_first_token: int = 0, start: int = 0, end: int = 0, key_start: int = -1,
                  key_end: int = -1, heads_off: str = "") -> Image.Image:
        hide = flag("hide_first_token", hide_first_token)
        analysis = self._analysis(model, text, heads_off)
        attention_map = self._attention_map(analysis, view, int(layer), int(head), (start, end, key_start, key_end))
        return render.figure_png(self._map_figure(analysis, attention_map, hide))

    def heads_export(self, model: str = "", text: str = "", figure: str = "head", fmt: str = "png", layer: int = 0,
                     head: int = 0, hide_first_token: int = 0, start: int = 0, end: int = 0, key_start: int = -1,
                     key_end: int = -1, heads_off: str = "") -> dict:
        fmt = (fmt or "").lower()
        if figure not in FIGURES:
            raise ServiceError(f"unknown figure {figure!r}; use one of {FIGURES}")
        if fmt not in EXPORT_FORMATS:
            raise ServiceError(f"unknown export format {fmt!r}; use one of {tuple(EXPORT_FORMATS)}")
        hide = flag("hide_first_token", hide_first_token)
        if figure == "model" and fmt in ("json", "csv"):
            raise ServiceError("JSON/CSV export is for one map (a head, the mean, the rollout), not the model view")
        analysis = self._analysis(model, text, heads_off)
        if figure == "model":
            drawn, _, _ = self._model_view_figure(analysis, hide, int(start), int(end))
            name = f"{_file_stem(analysis.lm)}-model-view"
        else:
            window = (start, end, key_start, key_end)
            attention_map = self._attention_map(analysis, figure, int(layer), int(head), window)
            name = attention_map.meta["name"]
            if fmt in ("json", "csv"):
                labelled = (attention_map.values, attention_map.rows, attention_map.columns)
                content = (
                    render.matrix_json(*labelled, attention_map.meta) if fmt == "json" else render.matrix_csv(*labelled)
                )
                return _export(f"{name}.{fmt}", fmt, content)
            drawn = self._map_figure(analysis, attention_map, hide)
        if fmt == "svg":
            return _export(f"{name}.svg", fmt, render.figure_svg(drawn))
        buffer = io.BytesIO()
        render.figure_png(drawn).save(buffer, format="png", optimize=True)
        return _export(f"{name}.png", fmt, base64.b64encode(buffer.getvalue()).decode("ascii"), "base64")

    def heads_bertviz(self, model: str = "", text: str = "", view: str = "head", heads_off: str = "") -> dict:
        analysis = self._analysis(model, text, heads_off)
        lm, tokens = analysis.lm, analysis.tokenized.tokens
        if not bertviz_view.fits_bertviz(lm.n_layers, lm.n_heads, len(tokens)):
            raise ServiceError(
                f"bertviz views are for short inputs (here at most {bertviz_view.MAX_TOKENS} tokens and "
                f"{bertviz_view.MAX_VALUES:,} weights); this text has {len(tokens)} tokens. "
                "Use the model view and heatmaps, which scale to long texts."
            )
        layers = analysis.pooled.result()["pooled"]  # exact: a bertviz-sized input is far below MAP_BINS
        document = bertviz_view.bertviz_document(view, [layers[layer] for layer in range(lm.n_layers)], tokens)
        return {
            "model": lm.model_id,
            "view": view,
            "n_tokens": len(tokens),
            "bytes": len(document),
            "document": document,
        }

    # -- analysis and its cache ---------------------------------------------------------------------------------------
    def _analysis(self, model: str, text: str, heads_off: str = "") -> Analysis:
        text = clean_text(text)
        lm = self.model(model)
        switched_off = head_stack(lm).parse(heads_off)
        if switched_off:
            require_causal(lm)
        key = (lm.model_id, text, format_heads(switched_off))
        with self._analysis_lock:
            if key in self._analyses:
                self._analyses.move_to_end(key)
                return self._analyses[key]
        start = time.perf_counter()
        stats = HeadStats(lm.n_layers, lm.n_heads, lm.is_causal)
        scores = TextScores(lm.n_layers, lm.n_heads)
        pooled = PooledMaps(lm.n_layers, lm.n_heads)
        tokenized = tokenize(lm, text)
        ablation = mean_ablation(lm, tokenized.input_ids.to(lm.device), switched_off)
        run_with_attention(lm, tokenized.input_ids, [stats, pooled, scores], ablation=ablation)
        analysis = Analysis(
            lm=lm,
            tokenized=tokenized,
            heads_off=format_heads(switched_off),
            ablation=ablation,
            stats=stats.result(),
            pooled=pooled,
            seconds=round(time.perf_counter() - start, 3),
            text_scores=scores.result(),
        )
        with self._analysis_lock:
            self._analyses[key] = analysis
            _trim(self._analyses, self.max_cached_analyses)
        return analysis

    def _window(self, analysis: Analysis, rows: range, columns: range, layer: int | None) -> PooledMaps:
        """The pooled maps of one window (the analysis's own for the whole text; else a pass, kept for reuse)."""
        n_tokens = len(analysis.tokenized.tokens)
        if rows == columns == range(n_tokens):
            return analysis.pooled
        key = (rows.start, rows.stop, columns.start, columns.stop, layer)
        with self._analysis_lock:
            if key in analysis.windows:
                return analysis.windows[key]
        lm = analysis.lm
        layers = None if layer is None else [layer]
        pooled = PooledMaps(lm.n_layers, lm.n_heads, rows=rows, columns=columns, layers=layers)
        run_with_attention(lm, analysis.tokenized.input_ids, [pooled], ablation=analysis.ablation)
        with self._analysis_lock:
            analysis.windows[key] = pooled
            _trim(analysis.windows, MAX_CACHED_WINDOWS)
        return pooled

    def _rollout(self, analysis: Analysis) -> torch.Tensor:
        if analysis.rollout is None:
            rollout = Rollout()
            run_with_attention(analysis.lm, analysis.tokenized.input_ids, [rollout], ablation=analysis.ablation)
            analysis.rollout = rollout.result()["rollout"]
        return analysis.rollout

    def _attention_map(
        self, analysis: Analysis, view: str, layer: int, head: int, window: tuple = (0, 0, -1, -1)
    ) -> AttentionMap:
        lm, tokens = analysis.lm, analysis.tokenized.tokens
        if view not in MAP_VIEWS:
            raise ServiceError(f"unknown view {view!r}; use one of {MAP_VIEWS}")
        rows, columns = token_window(len(tokens), *window)
        if view == "rollout":
            values = self._rollout(analysis).numpy()[rows.start : rows.stop, columns.start : columns.stop]
            labels = token_labels(tokens, rows, 1), token_labels(tokens, columns, 1)
            meta = _meta(lm, "rollout", None, None, rows, columns)
            return AttentionMap(values, *labels, "Attention rollout over all layers", meta, False)
        if not 0 <= layer < lm.n_layers:
            raise ServiceError(f"layer {layer} does not exist: {lm.model_id} has layers 0–{lm.n_layers - 1}")
        if view == "head" and not 0 <= head < lm.n_heads:
            raise ServiceError(f"head {head} does not exist: {lm.model_id} has heads 0–{lm.n_heads - 1} per layer")
        pooled = self._window(analysis, rows, columns, layer)
        maps = pooled.means(layer)
        row_block, column_block = block_size(len(rows), MAP_BINS), block_size(len(columns), MAP_BINS)
        labels = token_labels(tokens, rows, row_block), token_labels(tokens, columns, column_block)
        exact = row_block == column_block == 1
        causal = lm.is_causal and exact and rows == columns
        whole = len(rows) == len(tokens) and rows == columns
        span = "" if whole else f" · queries {_span(rows)}, keys {_span(columns)}"
        pooled_note = "" if exact else f" · pooled {row_block}×{column_block} tokens"
        if view == "mean":
            title = f"Layer {layer}: mean over its {lm.n_heads} heads{span}{pooled_note}"
            meta = _meta(lm, "mean", layer, None, rows, columns)
            return AttentionMap(maps.mean(0).numpy(), *labels, title, meta, causal)
        group = f" · KV head {lm.kv_group(head)}" if lm.n_kv_heads < lm.n_heads else ""
        title = f"Layer {layer} · head {head}{group}{span}{pooled_note}"
        return AttentionMap(maps[head].numpy(), *labels, title, _meta(lm, "head", layer, head, rows, columns), causal)

    def _map_figure(self, analysis: Analysis, attention_map: AttentionMap, hide_first: bool) -> Figure:
        title = f"{analysis.lm.model_id} — {attention_map.title}"
        hide = hide_first and attention_map.meta["key_start"] == 0
        return render.heatmap_figure(
            attention_map.values, attention_map.rows, attention_map.columns, title, hide, attention_map.causal
        )

    def _model_view_figure(
        self, analysis: Analysis, hide_first: bool, start: int = 0, end: int = 0
    ) -> tuple[Figure, render.ModelViewLayout, range]:
        lm = analysis.lm
        window, _ = token_window(len(analysis.tokenized.tokens), start, end)
        pooled = self._window(analysis, window, window, None)
        size = thumbnail_size(lm.n_layers, lm.n_heads)
        thumbnails = pooled.thumbnails(size, hide_first and window.start == 0)
        shown = "first-token column hidden" if hide_first and window.start == 0 else "all tokens"
        n_tokens = len(analysis.tokenized.tokens)
        span = f"tokens {_span(window)} of {n_tokens:,}" if len(window) < n_tokens else f"{n_tokens:,} tokens"
        title = f"{lm.model_id}: {lm.n_layers} layers × {lm.n_heads} heads, {span} ({shown})"
        figure, layout = render.model_view_figure(thumbnails, lm.heads_per_kv_head, title)
        return figure, layout, window

    # -- head-type scores, ablation lab, generation stepper ----------------------------------------------------------
    _probe_scores = ProbeScoreCache()  # probe-based scores depend on the model only: computed once per model

    def heads_scores(self, model: str = "", text: str = "", heads_off: str = "") -> dict:
        analysis = self._analysis(model, text, heads_off)
        found = head_scores(analysis.lm, analysis.text_scores, self._probe_scores.get(analysis.lm))
        return {**found, "tokens": analysis.tokenized.tokens, "truncated": analysis.tokenized.truncated,
                "heads_off": analysis.heads_off}

    def heads_ablate(self, model: str = "", text: str = "", heads: str = "", mode: str = "uniform") -> dict:
        text, lm = clean_text(text), self.model(model)
        require_causal(lm)
        retrieval = self._probe_scores.get(lm)["scores"]["retrieval"]
        return ablation_report(lm, text, heads, mode, retrieval)

    _needles = NeedleCache()  # long needle-in-a-haystack reports: computed once per model (minutes on a CPU)

    def heads_needles(self, model: str = "") -> dict:
        lm = self.model(model)
        require_causal(lm)
        razor = self._probe_scores.get(lm)["razor"]["retrieval_kv_heads"]
        return self._needles.get(lm, razor, NeedleSetup())

    def heads_head_effects(self, model: str = "", tasks: str = "") -> dict:
        lm = self.model(model)
        require_causal(lm)
        chosen = choose_tasks(tasks, TASKS, lm.model_id)
        key = f"{lm.model_id}-{lm.fingerprint}-v{ATLAS_VERSION}"
        atlas, cached = self.effects_cache.get_or_compute(key, lambda: compute_head_effects(lm))
        return {**select_tasks(atlas, chosen), "cached": cached}

    def heads_generate(self, model: str = "", text: str = "", n_tokens: int = 12, heads_off: str = "") -> dict:
        text, lm = clean_text(text), self.model(model)
        switched_off = head_stack(lm).parse(heads_off)
        if switched_off:
            require_causal(lm)
        prompt = tokenize(lm, text).input_ids[: max(1, lm.max_tokens - int(n_tokens))]  # what generation sees
        ablation = mean_ablation(lm, prompt.to(lm.device), switched_off)
        return {**generate_with_attention(lm, text, int(n_tokens), ablation=ablation),
                "heads_off": format_heads(switched_off)}


def mean_ablation(lm: LanguageModel, input_ids: torch.Tensor, heads: list[Head]) -> Ablation | None:
    """Mean ablation of ``heads`` with their means over ``input_ids`` (None for no heads)."""
    if not heads:
        return None
    return Ablation("mean", by_layer(heads), mean_outputs(lm, input_ids[: lm.max_tokens], heads))


def flag(name: str, value: int) -> bool:
    """A 0/1 switch, or a :class:`ServiceError` for any other value."""
    if value not in (0, 1):
        raise ServiceError(f"{name} must be 0 or 1, not {value!r}")
    return bool(value)


def clean_text(text: str) -> str:
    """The text to analyse, or a :class:`ServiceError` for empty input or input that is not text."""
    return check_text(text, "text to analyse")


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


def token_window(n_tokens: int, start: int, end: int, key_start: int = -1, key_end: int = -1) -> tuple[range, range]:
    """The query and key ranges of a zoom window, checked: ``end`` 0 is the end of the text, a key bound of -1 is
    the same as the query bound."""
    start, end, key_start, key_end = int(start), int(end), int(key_start), int(key_end)
    rows = range(start, end or n_tokens)
    key_stop = rows.stop if key_end == -1 else key_end or n_tokens
    columns = range(rows.start if key_start == -1 else key_start, key_stop)
    for name, span in (("query", rows), ("key", columns)):
        if not 0 <= span.start < span.stop <= n_tokens:
            raise ServiceError(
                f"the {name} window {span.start}–{span.stop} is not inside the text's {n_tokens:,} tokens "
                f"(give 0 ≤ start < end ≤ {n_tokens:,}; 0, 0 for the whole text)"
            )
    return rows, columns


def token_labels(tokens: list[str], span: range, block: int) -> list[str]:
    """One label per row or column: ``position token`` for single tokens, ``first–last`` for pooled blocks."""
    if block == 1:
        return [f"{index} {render.display_token(tokens[index])}" for index in span]
    starts = span[::block]
    return [f"{first}–{min(first + block, span.stop) - 1}" for first in starts]


def _span(window: range) -> str:
    return f"{window.start:,}–{window.stop - 1:,}"


def _meta(lm: LanguageModel, view: str, layer: int | None, head: int | None, rows: range, columns: range) -> dict:
    parts = {"head": f"L{layer}H{head}", "mean": f"L{layer}-mean", "rollout": "rollout"}
    return {
        "model": lm.model_id,
        "view": view,
        "layer": layer,
        "head": head,
        "kv_head": None if head is None else lm.kv_group(head),
        "query_start": rows.start,
        "query_end": rows.stop,
        "key_start": columns.start,
        "key_end": columns.stop,
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
