"""The Heads panel's public API (torch-free; implemented by :mod:`backends.heads.service`)."""

from __future__ import annotations

from PIL import Image

from backends.core.api import PanelAPI, endpoint


class HeadsAPI(PanelAPI):
    """Attention maps of language models, head-type scores, head ablation and a generation stepper."""

    panel = "heads"

    @endpoint(summary="json")
    def heads_analyze(self, model: str = "", text: str = "", heads_off: str = "") -> dict:
        """Tokens, the model's shape and per-head attention statistics of a text.

        Args:
            model: "" for the embedded SmolLM2-135M, "minilm", or a hub id (see spaces.yml)
            text: the text to analyse, up to the model's context (8,192 tokens for SmolLM2; "truncated" and
                "notice" say how much of a longer text is used)
            heads_off: heads mean-ablated (output replaced by its mean over this text) for this call only, e.g.
                "16.0,23.4"; "" = none. Causal models only.

        Returns:
            summary: model, tokens, n_layers, n_heads, n_kv_heads, kv_groups, truncated, notice and per-head stats
                (entropy, entropy_fraction, max_weight, first_token as [layer][head] grids)
        """
        ...

    @endpoint(image="image", layout="json")
    def heads_model_view(
        self, model: str = "", text: str = "", hide_first_token: int = 0, start: int = 0, end: int = 0,
        heads_off: str = "",
    ) -> tuple[Image.Image, dict]:
        """Every head of every layer as one compact image (layers = rows, heads = columns, each map shrunk and
        scaled to its own maximum), plus the grid's pixel layout for mapping a click to (layer, head).

        Args:
            model: the model id ("" = the embedded SmolLM2).
            text: the text to analyse.
            hide_first_token: 1 to leave the first key (the usual attention sink) out of every map.
            start: first token of a zoom window (queries and keys); 0 with ``end`` 0 shows the whole text.
            end: one past the window's last token (0 = the end of the text).
            heads_off: heads mean-ablated (output replaced by its mean over this text) for this call only, e.g.
                "16.0,23.4"; "" = none. Causal models only.

        Returns:
            image: the model view, PNG.
            layout: the pixel start of each row and column, what rows are, the thumbnail side and the token window.
        """
        ...

    @endpoint(image="image")
    def heads_map(self, model: str = "", text: str = "", view: str = "head", layer: int = 0, head: int = 0,
                  hide_first_token: int = 0, start: int = 0, end: int = 0, key_start: int = -1,
                  key_end: int = -1, heads_off: str = "") -> Image.Image:
        """A heatmap with token labels: one head of ``layer``, the mean over its heads, or the attention rollout.

        Maps longer than 256 tokens a side are pooled into blocks of whole tokens (each block's mean weight,
        labelled with its token range); a window of up to 256 tokens a side is drawn at full resolution.

        Args:
            model: the model id ("" = the embedded SmolLM2).
            text: the text to analyse.
            view: "head" (one head of ``layer``), "mean" (mean over the heads of ``layer``) or "rollout".
            layer: the layer (0-based).
            head: the head within the layer (0-based; "head" view only).
            hide_first_token: 1 to grey out the first key (the usual attention sink).
            start: first query token of a zoom window (0 with ``end`` 0: the whole text).
            end: one past the window's last query token (0 = the end of the text).
            key_start: first key token of the window (-1 = the same as ``start``).
            key_end: one past the window's last key token (-1 = the same as ``end``).
            heads_off: heads mean-ablated (output replaced by its mean over this text) for this call only, e.g.
                "16.0,23.4"; "" = none. Causal models only.

        Returns:
            image: the heatmap, PNG (rows = queries, columns = keys).
        """
        ...

    @endpoint(export="json")
    def heads_export(self, model: str = "", text: str = "", figure: str = "head", fmt: str = "png", layer: int = 0,
                     head: int = 0, hide_first_token: int = 0, start: int = 0, end: int = 0, key_start: int = -1,
                     key_end: int = -1, heads_off: str = "") -> dict:
        """A figure as PNG or SVG, or a map's matrix with its row and column labels as JSON or CSV.

        Args:
            model: the model id ("" = the embedded SmolLM2).
            text: the text to analyse.
            figure: "model" (the model view), "head", "mean" or "rollout".
            fmt: "png", "svg", "json" or "csv" (JSON and CSV for one map, not the model view).
            layer: the layer (0-based).
            head: the head within the layer (0-based).
            hide_first_token: 1 to leave out (model view) or grey out (heatmap) the first key.
            start: first query token of a zoom window (0 with ``end`` 0: the whole text).
            end: one past the window's last query token (0 = the end of the text).
            key_start: first key token of the window (-1 = the same as ``start``).
            key_end: one past the window's last key token (-1 = the same as ``end``).
            heads_off: heads mean-ablated (output replaced by its mean over this text) for this call only, e.g.
                "16.0,23.4"; "" = none. Causal models only.

        Returns:
            export: ``filename``, ``mime``, ``encoding`` ("utf-8", or "base64" for PNG) and ``content``.
        """
        ...

    @endpoint(page="json")
    def heads_bertviz(self, model: str = "", text: str = "", view: str = "head", heads_off: str = "") -> dict:
        """bertviz's interactive view as a self-contained offline HTML page (short inputs only).

        Args:
            model: "" for the embedded SmolLM2-135M, "minilm", or a hub id
            text: the text to analyse (bertviz writes every weight into the page, so it must be short)
            view: "head" or "model"
            heads_off: heads mean-ablated (output replaced by its mean over this text) for this call only, e.g.
                "16.0,23.4"; "" = none. Causal models only.

        Returns:
            page: model, view, n_tokens, bytes and document (the HTML, for an iframe's srcdoc)
        """
        ...

    @endpoint(scores="json")
    def heads_scores(self, model: str = "", text: str = "", heads_off: str = "") -> dict:
        """Head-type scores, each a [layer][head] grid, with their probes and explanations.

        Args:
            model: "" for the embedded SmolLM2-135M, "minilm", or a hub id
            text: the text the text-based scores (previous_token, duplicate, sink, waad, fai) are measured on
            heads_off: heads mean-ablated (output replaced by its mean over this text) for this call only, e.g.
                "16.0,23.4"; "" = none. Causal models only.

        Returns:
            scores: n_layers, n_heads and scores = previous_token, duplicate, induction (repeated random tokens),
                retrieval (Wu et al. needles), successor (ordinal sequences), sink, waad, fai; RazorAttention's
                per-KV-head split, probes and explanations; computed once per model for the probe-based ones
        """
        ...

    @endpoint(report="json")
    def heads_ablate(self, model: str = "", text: str = "", heads: str = "", mode: str = "uniform") -> dict:
        """Switch heads off in a causal model and measure what changes in its predictions.

        Args:
            model: "" for the embedded SmolLM2-135M, or a causal hub model's id
            text: the text whose next-token predictions are compared
            heads: the heads to ablate, comma-separated: "18.6", "L18H6", or "17.*" for a whole layer
            mode: "zero" (head output 0), "uniform" (even attention) or "mean" (output replaced by its mean)

        Returns:
            report: kl (last token), loss_before, loss_after, top_before, top_after, generation_before,
                generation_after, kl_per_position and attention_influence
        """
        ...

    @endpoint(report="json")
    def heads_needles(self, model: str = "") -> dict:
        """Retrieval heads found the way Wu et al. do (needles at several depths of 1k–8k-token haystacks), and
        streaming heads tested by ablation (every KV head outside a kept set sees only 4 sink + 256 recent tokens).

        Computed on the first call for a model (minutes on a CPU), then served from memory or HeadLab's cache folder.

        Args:
            model: the model id ("" = the embedded SmolLM2); causal models only.

        Returns:
            report: ``retrieval`` and ``retrieval_by_length`` ([layer][head] grids), ``needle_map`` (depth × length →
                answered), ``tests`` (each answer), and ``streaming.splits``: per kept set (full attention, top
                retrieval heads, RazorAttention's, random) the held-out needle ``accuracy`` and ``kv_share`` kept.
        """
        ...

    @endpoint(atlas="json")
    def heads_head_effects(self, model: str = "", tasks: str = "") -> dict:
        """The head atlas: each task's loss change when one head alone is mean-ablated, on a fixed probe set.

        Tasks: induction (copying a repeated run of random tokens), retrieval (a pass key in filler), successor
        (days, months, numbers in order) and factual (capitals and facts). Computed on first use (about a minute on
        a CPU for SmolLM2), then cached per model in memory and on disk; the embedded model's atlas ships with the app.

        Args:
            model: the model id ("" = the embedded SmolLM2); causal models only.
            tasks: comma-separated tasks to report ("" = all four).

        Returns:
            atlas: ``model``, ``stack``, ``layers``, ``heads``, ``tasks``, ``metric`` {task: unit}, ``better``
                {task: "lower"}, ``baseline`` {task: loss}, ``effects`` {task: layers×heads, loss(head off) −
                baseline}, ``relative`` (in % of the baseline), ``specificity`` (layers×heads, 0–1), ``top`` {task:
                heads whose removal raises its loss most}, ``probe``, ``seconds``, ``cached``.
        """
        ...

    @endpoint(steps="json")
    def heads_generate(self, model: str = "", text: str = "", n_tokens: int = 12, heads_off: str = "") -> dict:
        """Generate greedily, one token at a time, with each head's top attended positions per step.

        Args:
            model: "" for the embedded SmolLM2-135M, or a causal hub model's id
            text: the prompt
            n_tokens: how many tokens to generate, 1 to 64
            heads_off: heads mean-ablated (output replaced by its mean over this text) for this call only, e.g.
                "16.0,23.4"; "" = none. Causal models only.

        Returns:
            steps: each generated token with every head's top-3 attended positions and weights
        """
        ...
