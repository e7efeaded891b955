"""The Heads panel's public API (torch-free; implemented by :mod:`backends.heads.service`)."""

from __future__ import annotations

from PIL import Image

from backends.core.api import PanelAPI, endpoint


class HeadsAPI(PanelAPI):
    """Attention maps of language models, head-type scores, head ablation and a generation stepper."""

    panel = "heads"

    @endpoint(summary="json")
    def heads_analyze(self, model: str = "", text: str = "") -> dict:
        """Tokens, the model's shape and per-head attention statistics of a text.

        Args:
            model: "" for the embedded SmolLM2-135M, "minilm", or a hub id (see spaces.yml)
            text: the text to analyse (cut to the model's limit; "truncated" says so)

        Returns:
            summary: model, tokens, n_layers, n_heads, n_kv_heads, kv_groups, truncated, notice and per-head stats
                (entropy, entropy_fraction, max_weight, first_token as [layer][head] grids)
        """
        ...

    @endpoint(image="image", layout="json")
    def heads_model_view(self, model: str = "", text: str = "", hide_first_token: int = 0) -> tuple[Image.Image, dict]:
        """Every head of every layer as one compact image, with the pixel layout to map a click to a head.

        Args:
            model: "" for the embedded SmolLM2-135M, "minilm", or a hub id
            text: the text to analyse
            hide_first_token: 1 to leave out the first token's column (the usual attention sink), 0 to keep it

        Returns:
            image: layers as rows, heads as columns, each map shrunk and scaled to its own maximum
            layout: the grid's geometry (origin, cell size, gaps) to map a pixel to (layer, head)
        """
        ...

    @endpoint(image="image")
    def heads_map(self, model: str = "", text: str = "", view: str = "head", layer: int = 0, head: int = 0,
                  hide_first_token: int = 0) -> Image.Image:
        """A heatmap with token labels: one head, the mean of a layer's heads, or the attention rollout.

        Args:
            model: "" for the embedded SmolLM2-135M, "minilm", or a hub id
            text: the text to analyse
            view: "head" (one head of layer), "mean" (mean over the heads of layer) or "rollout" (all layers)
            layer: the layer, from 0
            head: the head within the layer, from 0 (view "head" only)
            hide_first_token: 1 to leave out the first token's column, 0 to keep it

        Returns:
            image: the heatmap, queries as rows and keys as columns
        """
        ...

    @endpoint(file="json")
    def heads_export(self, model: str = "", text: str = "", figure: str = "head", fmt: str = "png", layer: int = 0,
                     head: int = 0, hide_first_token: int = 0) -> dict:
        """A figure as PNG or SVG, or one map's matrix with its tokens as JSON or CSV.

        Args:
            model: "" for the embedded SmolLM2-135M, "minilm", or a hub id
            text: the text to analyse
            figure: "model" (the model view), "head", "mean" or "rollout"
            fmt: "png", "svg", "json" or "csv" (json and csv are for one map, not the model view)
            layer: the layer of a "head" or "mean" figure
            head: the head of a "head" figure
            hide_first_token: 1 to leave out the first token's column, 0 to keep it

        Returns:
            file: filename, mime, encoding ("utf-8", or "base64" for PNG) and content
        """
        ...

    @endpoint(page="json")
    def heads_bertviz(self, model: str = "", text: str = "", view: str = "head") -> dict:
        """bertviz's interactive view as a self-contained offline HTML page (short inputs only).

        Args:
            model: "" for the embedded SmolLM2-135M, "minilm", or a hub id
            text: the text to analyse (bertviz writes every weight into the page, so it must be short)
            view: "head" or "model"

        Returns:
            page: model, view, n_tokens, bytes and document (the HTML, for an iframe's srcdoc)
        """
        ...

    @endpoint(scores="json")
    def heads_scores(self, model: str = "", text: str = "") -> dict:
        """Head-type scores, each a [layer][head] grid, with their probes and explanations.

        Args:
            model: "" for the embedded SmolLM2-135M, "minilm", or a hub id
            text: the text the text-based scores (previous_token, duplicate, sink, waad, fai) are measured on

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

    @endpoint(steps="json")
    def heads_generate(self, model: str = "", text: str = "", n_tokens: int = 12) -> dict:
        """Generate greedily, one token at a time, with each head's top attended positions per step.

        Args:
            model: "" for the embedded SmolLM2-135M, or a causal hub model's id
            text: the prompt
            n_tokens: how many tokens to generate, 1 to 64

        Returns:
            steps: each generated token with every head's top-3 attended positions and weights
        """
        ...
