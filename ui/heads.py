"""The Heads tab: attention maps of language models (model view, heatmaps, rollout, bertviz, exports).

Talks to the heads backend only through its client (``heads_analyze``, ``heads_model_view``, ``heads_map``,
``heads_export``, ``heads_bertviz``). If ``ui/heads_lab.py`` exists, its ``build_heads_lab`` adds the head-type
scores, ablation and generation views at the end of the tab, sharing this tab's model and text inputs.
"""

from __future__ import annotations

import base64
import html
import importlib.util
import tempfile
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import ImageDraw

from backends.core.client import Client
from backends.core.config import PanelConfig
from ui.common import call_backend, explanation, model_choices, queue_settings

EXAMPLES = {
    "Repeated sentence (induction heads)": "The cat sat on the mat. The dog ran to the park. "
    "The cat sat on the mat. The dog ran to the park.",
    "Names (indirect object)": "When Mary and John went to the store, John gave a drink to Mary.",
    "Weekdays (successor heads)": "Monday, Tuesday, Wednesday, Thursday, Friday, Saturday, Sunday.",
    "Code": "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
    "Needle in a haystack (retrieval)": "The grass is green and the sky is blue. The secret code is 4067. "
    "Birds sing in the morning and the river flows to the sea. What is the secret code? The secret code is",
    "A sentence for an encoder (MiniLM)": "The bank raised interest rates, so we sat on the river bank and talked.",
}
MAP_VIEWS = {"One head": "head", "Mean over the layer's heads": "mean", "Attention rollout (all layers)": "rollout"}
EXPORT_FIGURES = {"Heatmap": "map", "Model view": "model"}
EXPORT_FORMATS = ("PNG", "SVG", "JSON", "CSV")
STAT_COLUMNS = ("layer", "head", "KV head", "entropy (nats)", "entropy / uniform", "max weight", "first token")

INTRO = """### Heads: what does each attention head look at?
Type a text (or pick an example), choose a model and press **Analyze**. The **model view** shows every head of every
layer at once; click a head (or use the pickers) to see its full **heatmap** with the tokens."""

EXPLANATION = """
**What is an attention head?** Each layer of a transformer has several *heads*. For every token (a *query*), a head
computes weights over the earlier tokens (the *keys*; all tokens in an encoder such as MiniLM) that sum to 1, then
mixes their values by those weights. Different heads learn different jobs: looking at the previous token, copying
what followed an earlier copy of the current token (*induction*), or parking attention on the first token (a *sink*).

**How to read the views**
- *Model view*: one small map per head, layers left to right, heads top to bottom (the picked head is outlined).
  Each map is shrunk to a thumbnail and scaled to its own maximum (square-root contrast, see the colour bar), so
  compare shapes, not brightness, across heads.
  A bright diagonal just below the main one = previous-token head; a bright left column = sink head; a stripe
  parallel to the diagonal in a repeated text = induction head.
- *Heatmap*: rows are queries (the token attending), columns keys (the token attended to); grey cells are masked
  (a causal model cannot look ahead). The colour bar gives the true weights.
- *Hide the first-token column*: most heads dump much of their weight on the first token (an "attention sink");
  hiding that column lets the colour scale show the rest.
- *Mean over heads* averages one layer's heads; *attention rollout* (Abnar & Zuidema) multiplies the layers'
  head-averaged maps (plus the residual identity) to estimate how much each input token flows into each position.
- *GQA*: in SmolLM2 (and Llama-style models) groups of query heads share one key/value head; the model view leaves
  a wider gap between groups, and the heatmap title names the KV head.
- Statistics per head, averaged over query rows: entropy (low = focused, as a fraction of a uniform row), the largest
  weight, and the attention on the first token (a sink score; above 0.3 is a sink head for Gu et al.).

**Seed papers**
[Retrieval heads (Wu et al. 2024)](https://arxiv.org/abs/2404.15574) ·
[Successor heads (Gould et al. 2023)](https://arxiv.org/abs/2312.09230) ·
[RazorAttention](https://arxiv.org/abs/2407.15891) ·
[DuoAttention](https://arxiv.org/abs/2410.10819) ·
[Attention heads in LLM safety](https://arxiv.org/abs/2410.13708) ·
[AttentionInfluence](https://huggingface.co/papers?q=AttentionInfluence) ·
[Attention Illuminates LLM Reasoning](https://huggingface.co/papers?q=Attention+Illuminates+LLM+Reasoning) ·
[Induction heads (Olsson et al. 2022)](https://arxiv.org/abs/2209.11895) ·
[Attention sinks (Xiao et al. 2023)](https://arxiv.org/abs/2309.17453) ·
[When attention sink emerges (Gu et al. 2024)](https://arxiv.org/abs/2410.10781) ·
[Attention rollout (Abnar & Zuidema 2020)](https://arxiv.org/abs/2005.00928) ·
[bertviz (Vig 2019)](https://arxiv.org/abs/1906.05714)
"""

ZOOM_NOTE = """Long texts (up to the model's context, 8,192 tokens for SmolLM2) are shown **pooled**: each cell is
the mean weight of a block of tokens. Zoom into a window of up to 256 tokens a side to see every token; the keys may
be another window (e.g. queries 4000–4200 reading keys 0–200)."""

BERTVIZ_NOTE = """bertviz's interactive views (Vig 2019) for short inputs. bertviz writes every weight into the page, so
they are offered only for short texts; the libraries they need (d3, jQuery, require.js) are served from local copies,
so they work offline."""


def build(client: Client, config: PanelConfig) -> None:
    """The Heads tab's contents (called inside the tab by app.py)."""
    queue = queue_settings(config)
    gr.Markdown(INTRO)
    explanation("What is an attention head? How to read these views · papers", EXPLANATION)
    analysed = gr.State({})
    with gr.Row():
        model = model_choices(config)
        example = gr.Dropdown(list(EXAMPLES), value=None, label="Example texts")
    text = gr.Textbox(next(iter(EXAMPLES.values())), lines=3, max_lines=12, label="Text")
    analyze = gr.Button("Analyze", variant="primary")
    summary = gr.Markdown()
    model_view = gr.Image(
        label="Model view: every head of every layer; click one",
        type="pil",
        format="png",
        interactive=False,
        elem_id="heads-model-view",
    )
    with gr.Row():
        with gr.Column(scale=1):
            view = gr.Radio(list(MAP_VIEWS), value="One head", label="Map")
            layer = gr.Slider(0, 1, value=0, step=1, label="Layer")
            head = gr.Slider(0, 1, value=0, step=1, label="Head")
            hide_first = gr.Checkbox(False, label="Hide the first-token (BOS / sink) column")
            gr.Markdown(ZOOM_NOTE)
            with gr.Row():
                zoom_start = gr.Number(0, precision=0, minimum=0, label="Window: first token")
                zoom_end = gr.Number(0, precision=0, minimum=0, label="end (0 = the end)")
            with gr.Row():
                key_start = gr.Number(-1, precision=0, minimum=-1, label="Keys: first (-1 = same)")
                key_end = gr.Number(-1, precision=0, minimum=-1, label="end (-1 = same)")
            zoom = gr.Button("Zoom")
            head_info = gr.Markdown()
            export_figure = gr.Radio(list(EXPORT_FIGURES), value="Heatmap", label="Export")
            export_format = gr.Radio(list(EXPORT_FORMATS), value="PNG", label="Format")
            export = gr.Button("Export")
            export_file = gr.File(label="Download", interactive=False)
        with gr.Column(scale=2):
            heatmap = gr.Image(label="Heatmap", type="pil", format="png", interactive=False, elem_id="heads-heatmap")
    with gr.Accordion("Per-head statistics (sortable)", open=False):
        stats_table = gr.Dataframe(headers=list(STAT_COLUMNS), interactive=False)
    with gr.Accordion("bertviz interactive views (short inputs)", open=False):
        gr.Markdown(BERTVIZ_NOTE)
        with gr.Row():
            bertviz_kind = gr.Radio(["head", "model"], value="head", label="bertviz view")
            bertviz_button = gr.Button("Show bertviz view")
        bertviz_frame = gr.HTML()

    def analyse(model_id: str, text_value: str) -> tuple[dict, str]:
        info = call_backend(client, "heads_analyze", model_id or "", text_value)
        return {"model": model_id or "", "text": text_value, **info}, _summary(info)

    def show_analysis(state: dict, hide: bool) -> tuple:
        image, layout = call_backend(client, "heads_model_view", state["model"], state["text"], int(hide), 0, 0)
        return (
            {**state, "layout": layout, "view_image": image},
            highlighted(image, layout, 0, 0),
            gr.Slider(maximum=state["n_layers"] - 1, value=0),
            gr.Slider(maximum=state["n_heads"] - 1, value=0),
            _stat_rows(state),
            0,
            0,
            -1,
            -1,
        )

    def redraw_model_view(state: dict, hide: bool, start: float, end: float) -> tuple:
        if not state:
            return gr.skip(), gr.skip()
        image, layout = call_backend(
            client, "heads_model_view", state["model"], state["text"], int(hide), int(start or 0), int(end or 0)
        )
        return {**state, "layout": layout, "view_image": image}, image

    def draw_map(
        state: dict,
        view_name: str,
        layer_index: float,
        head_index: float,
        hide: bool,
        start: float,
        end: float,
        first_key: float,
        last_key: float,
    ) -> tuple:
        if not state:
            return gr.skip(), gr.skip(), gr.skip()
        kind, chosen_layer, chosen_head = MAP_VIEWS[view_name], int(layer_index), int(head_index)
        window = (int(start or 0), int(end or 0), int(-1 if first_key is None else first_key))
        window = (*window, int(-1 if last_key is None else last_key))
        args = (state["model"], state["text"], kind, chosen_layer, chosen_head, int(hide), *window)
        view_image = highlighted(state.get("view_image"), state.get("layout") or {}, chosen_layer, chosen_head)
        return (
            call_backend(client, "heads_map", *args),
            _head_info(state, kind, chosen_layer, chosen_head),
            view_image if view_image is not None else gr.skip(),
        )

    def pick_head(state: dict, event: gr.SelectData) -> tuple:
        picked = _head_at(state.get("layout") or {}, event.index)
        if picked is None:
            return gr.skip(), gr.skip(), gr.skip()
        return picked[0], picked[1], "One head"

    def export_file_for(
        state: dict,
        figure: str,
        fmt: str,
        view_name: str,
        layer_index: float,
        head_index: float,
        hide: bool,
        *bounds: float,
    ) -> str:
        if not state:
            raise gr.Error("Analyze a text first.")
        window = [int(value) for value in bounds]
        kind = EXPORT_FIGURES[figure]
        args = (MAP_VIEWS[view_name] if kind == "map" else kind, fmt.lower(), int(layer_index), int(head_index))
        exported = call_backend(client, "heads_export", state["model"], state["text"], *args, int(hide), *window)
        return _write_export(exported)

    def show_bertviz(state: dict, kind: str) -> str:
        if not state:
            raise gr.Error("Analyze a text first.")
        result = call_backend(client, "heads_bertviz", state["model"], state["text"], kind)
        return _iframe(result["document"])

    map_inputs = [analysed, view, layer, head, hide_first, zoom_start, zoom_end, key_start, key_end]
    map_outputs = [heatmap, head_info, model_view]
    window = [zoom_start, zoom_end, key_start, key_end]
    results = [analysed, summary, model_view, heatmap, head_info, stats_table, bertviz_frame, export_file]
    example.change(lambda name: EXAMPLES.get(name, gr.skip()), example, text, queue=False)
    # results never outlive their inputs: a new model or text (or a new analysis, even one that fails) clears them
    for changed in (model.change, text.change):
        changed(_cleared, None, results, queue=False)
    analyze.click(_cleared, None, results, queue=False).then(
        analyse, [model, text], [analysed, summary], **queue
    ).success(
        show_analysis, [analysed, hide_first], [analysed, model_view, layer, head, stats_table, *window], **queue
    ).success(draw_map, map_inputs, map_outputs, **queue)
    model_view.select(pick_head, analysed, [layer, head, view], queue=False).success(
        draw_map, map_inputs, map_outputs, **queue
    )
    for control in (layer, head):
        control.release(draw_map, map_inputs, map_outputs, **queue)
    view.input(draw_map, map_inputs, map_outputs, **queue)
    for redraw in (hide_first.input, zoom.click):
        redraw(
            redraw_model_view, [analysed, hide_first, zoom_start, zoom_end], [analysed, model_view], **queue
        ).success(draw_map, map_inputs, map_outputs, **queue)
    export.click(
        export_file_for,
        [analysed, export_figure, export_format, view, layer, head, hide_first, *window],
        export_file,
        **queue,
    )
    bertviz_button.click(show_bertviz, [analysed, bertviz_kind], bertviz_frame, **queue)

    if importlib.util.find_spec("ui.heads_lab") is not None:
        from ui.heads_lab import build_heads_lab

        build_heads_lab(client, config, model=model, text=text)


def _cleared() -> tuple:
    """Empty values for every result of the tab (state, summary, views, table, bertviz, export)."""
    return {}, "", None, None, "", None, "", None


def highlighted(image: Any, layout: dict, layer: int, head: int) -> Any:
    """A copy of the model view with the thumbnail of (``layer``, ``head``) outlined, or None without an image."""
    if image is None or not layout:
        return None
    rows, columns = layout["rows"], layout["columns"]
    row, column = (layer, head) if layout["rows_are"] == "layer" else (head, layer)
    if not (0 <= row < len(rows) and 0 <= column < len(columns)):
        return image
    marked = image.copy()
    left, top, size = columns[column], rows[row], layout["thumb"]
    ImageDraw.Draw(marked).rectangle((left - 2, top - 2, left + size + 1, top + size + 1), outline="#00e5ff", width=2)
    return marked


def _summary(info: dict) -> str:
    """The analysis in a few lines: model shape, tokens (how many used of how many given), GQA groups, time."""
    used = f"{info['n_tokens']:,} tokens"
    if info["truncated"]:
        used = f"{info['n_tokens']:,} of the text's {info['n_input_tokens']:,} tokens used"
    lines = [
        f"**{info['model']}** · {info['n_layers']} layers × {info['n_heads']} heads "
        f"({'causal decoder' if info['is_causal'] else 'encoder'}) · {used} · "
        f"analysed in {info['seconds']:.2f} s"
    ]
    if info["n_kv_heads"] < info["n_heads"]:
        groups = "; ".join(
            f"KV head {kv}: query heads {', '.join(map(str, heads))}" for kv, heads in enumerate(info["kv_groups"])
        )
        lines.append(f"Grouped-query attention: {info['n_kv_heads']} key/value heads ({groups}).")
    if info["truncated"]:
        lines.append(f"⚠️ {info['notice']}")
    if not info["bertviz_available"]:
        lines.append("bertviz views are off for a text this long; the model view and heatmaps cover it.")
    return "\n\n".join(lines)


def _stat_rows(info: dict) -> list[list]:
    """One table row per head: where it is and its statistics."""
    stats, per_group = info["stats"], info["n_heads"] // info["n_kv_heads"]
    return [
        [layer, head, head // per_group]
        + [stats[name][layer][head] for name in ("entropy", "entropy_fraction", "max_weight", "first_token")]
        for layer in range(info["n_layers"])
        for head in range(info["n_heads"])
    ]


def _head_info(state: dict, view: str, layer: int, head: int) -> str:
    """A line of statistics for the head (or layer) on show."""
    if view == "rollout":
        return "Rollout: rows = positions, columns = input tokens; a row shows where a position's information is from."
    if view == "mean":
        return f"Mean over the {state['n_heads']} heads of layer {layer}."
    stats = state["stats"]
    kv = head // (state["n_heads"] // state["n_kv_heads"])
    return (
        f"Layer {layer}, head {head} (KV head {kv}): entropy {stats['entropy_fraction'][layer][head]:.2f} of uniform · "
        f"max weight {stats['max_weight'][layer][head]:.2f} · on first token {stats['first_token'][layer][head]:.2f}"
    )


def _head_at(layout: dict, point: Any) -> tuple[int, int] | None:
    """The (layer, head) whose thumbnail holds the clicked pixel ``point`` = [x, y], or None."""
    if not layout or not point:
        return None
    row = _cell(layout["rows"], layout["thumb"], point[1])
    column = _cell(layout["columns"], layout["thumb"], point[0])
    if row is None or column is None:
        return None
    return (row, column) if layout["rows_are"] == "layer" else (column, row)


def _cell(starts: list[int], size: int, position: float) -> int | None:
    return next((index for index, start in enumerate(starts) if start <= position < start + size), None)


def _write_export(exported: dict) -> str:
    """Write an export from the backend to a temporary file for download; returns its path."""
    path = Path(tempfile.mkdtemp(prefix="headlab-export-")) / Path(exported["filename"]).name
    if exported["encoding"] == "base64":
        path.write_bytes(base64.b64decode(exported["content"]))
    else:
        path.write_text(exported["content"], encoding="utf-8")
    return str(path)


def _iframe(document: str, height: int = 760) -> str:
    """Embed a full HTML page through an iframe ``srcdoc`` (gr.HTML does not run bare scripts; an iframe does)."""
    escaped = html.escape(document, quote=True)
    return f'<iframe srcdoc="{escaped}" sandbox="allow-scripts" style="width:100%;height:{height}px;border:0"></iframe>'
