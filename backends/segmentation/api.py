"""The referring-segmentation panel's public API (torch-free; implemented by :mod:`backends.segmentation.service`)."""

from __future__ import annotations

from PIL import Image

from backends.core.api import PanelAPI, endpoint


class SegmentationAPI(PanelAPI):
    """Text and/or clicks and a box → a mask, with RemoteSAM's tasks derived from it."""

    panel = "segmentation"

    @endpoint(mask="image", result="json")
    def segment(self, image: Image.Image | None, expression: str = "", points: str = "", box: str = "",
                model: str = "", heads_off: str = "") -> tuple[Image.Image, dict]:
        """Segment what an expression, clicks and/or a box point at, with the tasks derived from the mask.

        The mask never leaves the box and no exclude click lies inside it; include clicks it misses are explained in
        the notes. On images the embedded model does not know, clicks and a box are answered by GrabCut.

        Args:
            image: the photo or scene (any mode; converted to RGB, large images downscaled)
            expression: a referring expression, e.g. "the red bag"; may be empty when clicks or a box are given;
                cut to the text encoder's 32 tokens (with a note)
            points: clicks as JSON [[x, y, 1 (include) or 0 (exclude)], ...] in image pixels, or empty
            box: a box as JSON [x0, y0, x1, y1] in image pixels, or empty
            model: "" for the embedded segmenter, or a hub id (see spaces.yml)
            heads_off: fusion heads of the embedded model to switch off for this call (zero ablation), e.g. "2.1",
                "L6H0", "3.*" or "all" ("" = none; layer 3·b + m is block b's attention m: objects→words,
                objects→objects, words→objects); hub models have no such heads

        Returns:
            mask: the binary mask as a PNG, 0 (background) or 255 (the object), at the image's size
            result: score, candidates, detection boxes, count, grounding_box, present, presence_score, area,
                answered_by (the model, or "grabcut" for the classical fallback), out_of_domain, notes, heads_off
                (the canonical head list), heads_off_applied (false when no head was off or GrabCut answered)
        """
        ...

    @endpoint(overlay="image", mask="image", result="json")
    def segment_view(self, image: Image.Image | None, expression: str = "", points: str = "", box: str = "",
                     model: str = "", threshold: float = 0.5, candidate: int = -1, heads_off: str = ""
                     ) -> tuple[Image.Image, Image.Image, dict]:
        """As segment, with a threshold and a choice of candidate, plus an overlay and the mask's COCO RLE.

        Args:
            image: the photo or scene (any mode; converted to RGB, large images downscaled)
            expression: a referring expression; may be empty when clicks or a box are given
            points: clicks as JSON [[x, y, 1 or 0], ...] in image pixels, or empty
            box: a box as JSON [x0, y0, x1, y1] in image pixels, or empty
            model: "" for the embedded segmenter, or a hub id
            threshold: probability above which a pixel belongs to the mask, strictly between 0 and 1
            candidate: which of the candidate masks to show, -1 for the best-scoring one
            heads_off: fusion heads of the embedded model to switch off for this call (zero ablation), e.g. "2.1",
                "L6H0", "3.*" or "all" ("" = none; layer 3·b + m is block b's attention m: objects→words,
                objects→objects, words→objects); hub models have no such heads

        Returns:
            overlay: the image with the mask tinted, its contour, the detection boxes, the clicks and the box
            mask: the binary mask as a PNG (0/255)
            result: as segment's result, plus "rle" (COCO run-length encoding of the mask)
        """
        ...

    @endpoint(heatmap="image", result="json")
    def segment_attention(self, image: Image.Image | None, expression: str = "", points: str = "", box: str = "",
                          layer: int = -1, head: int = -1, token: int = 1, heads_off: str = ""
                          ) -> tuple[Image.Image, dict]:
        """Where one word of the expression looks: a fusion head's words→objects attention painted on the objects.

        Args:
            image: the photo or scene
            expression: a referring expression (needed: its tokens are what attends; cut to 32 tokens)
            points: clicks as JSON [[x, y, 1 or 0], ...], or empty
            box: a box as JSON [x0, y0, x1, y1], or empty
            layer: the embedded model's fusion layer, -1 for the last
            head: the head of that layer, -1 for the mean over heads
            token: the index of the expression's token whose attention is shown
            heads_off: fusion heads of the embedded model to switch off for this call (zero ablation), e.g. "2.1",
                "L6H0", "3.*" or "all" ("" = none; layer 3·b + m is block b's attention m: objects→words,
                objects→objects, words→objects)

        Returns:
            heatmap: the image with each object tinted by the weight it receives, relative to the largest weight
            result: tokens, layer, head, per-object weights, the weight given to "nothing" and heads_off
        """
        ...

    @endpoint(atlas="json")
    def segmentation_head_effects(self, model: str = "", tasks: str = "") -> dict:
        """The head atlas: each query kind's mIoU change when one fusion head alone is switched off (zero ablation).

        Measured on a fixed probe set of generated scenes (text queries of every kind with a referent); read from
        the atlas shipped for the embedded model, otherwise computed once (seconds on a CPU) and cached.

        Args:
            model: "" for the embedded segmenter (hub models have no head stack)
            tasks: comma-separated query kinds to report ("" = all: category, colour_category, colour, size,
                position, relation, nearest, ordinal, plural)

        Returns:
            atlas: ``model``, ``stack``, ``layers``, ``heads``, ``layer_names``, ``tasks``, ``metric`` {kind:
                "mIoU"}, ``baseline`` {kind: mIoU}, ``effects`` {kind: layers×heads, mIoU(head off) − baseline},
                ``relative`` (the same in % of the baseline), ``specificity`` (layers×heads, 0–1), ``top`` {kind:
                heads whose removal lowers it most}, ``probe``, ``seconds`` (of the computation), ``cached``.
        """
        ...
