"""The Referring-segmentation panel's backend service.

``segment(image, expression, points, box, model)`` returns the mask and RemoteSAM's tasks derived from it
(detection boxes, count, grounding box, presence); ``segment_view`` adds the overlay, the candidates, a chosen
threshold/candidate and the COCO RLE for the panel; ``segment_attention`` draws where one word of the expression
looks (which objects) in one fusion head of the embedded model. ``heads_off`` switches fusion heads of the embedded
model off for one call (zero ablation); ``segmentation_head_effects`` is the head atlas of :mod:`.atlas`.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import numpy as np
from PIL import Image

from backends.core.cache import LRUCache
from backends.core.heads import EffectsCache, Head, choose_tasks, format_heads, names_no_head, select_tasks
from backends.core.images import MAX_SIDE as MAX_SIDE  # the panel's limit, re-exported
from backends.core.images import prepare_image, to_pil
from backends.core.service import Service, ServiceError
from backends.core.text import check_text
from backends.segmentation.api import SegmentationAPI
from backends.segmentation.atlas import ATLAS_KINDS, SHIPPED, atlas_key, compute_head_effects
from backends.segmentation.embedded import ASSETS, EMBEDDED_ID, EmbeddedSegmenter
from backends.segmentation.export import encode_rle, mask_image, overlay
from backends.segmentation.hub import HUB_ID, load_hub_model
from backends.segmentation.prompts import honour_prompts
from backends.segmentation.query import Prediction, Query, SegmentationModel, parse_box, parse_points
from backends.segmentation.tasks import PRESENCE_THRESHOLD, Detection, detect, grounding_box, presence_score

HEATMAP_RGB = np.array([255, 40, 0], np.float32)


@dataclass
class Result:
    """One answered query: the prepared query, the prediction, the chosen candidate and the derived tasks."""

    query: Query
    prediction: Prediction
    candidate: int
    mask: np.ndarray
    detections: list[Detection]
    summary: dict


class SegmentationService(SegmentationAPI, Service):
    """Referring segmentation from text, clicks and a box, and the tasks derived from the mask."""

    default_model = EMBEDDED_ID
    known_models = (EMBEDDED_ID, HUB_ID)
    half_precision_safe = False
    max_cached_predictions = 8

    def __init__(self, device: str | None = None):
        super().__init__(device)
        self._predictions: LRUCache[tuple, Prediction] = LRUCache(self.max_cached_predictions)
        self.effects_cache = EffectsCache(self.panel, shipped=SHIPPED)

    def _embedded(self, model: str, what: str) -> EmbeddedSegmenter:
        """The embedded segmenter if ``model`` names it; a :class:`ServiceError` saying that ``what`` needs it."""
        key = (model or "").strip() or self.default_model
        if key != EMBEDDED_ID:
            raise ServiceError(f"{what} needs the embedded segmenter ({EMBEDDED_ID!r}): {key[:80]!r} has no head stack "
                               f"(hub models such as SAM have none)")
        return self.model(EMBEDDED_ID)

    def _heads_off(self, model: str, heads_off: str) -> list[Head]:
        """The fusion heads ``heads_off`` names, parsed before any model work (none for "" or "none")."""
        if names_no_head(heads_off):
            return []
        return self._embedded(model, "heads_off").stack.parse(heads_off)

    def _predict(self, segmenter: SegmentationModel, query: Query, heads_off: list[Head]) -> tuple[Prediction, bool]:
        """The model's candidates for ``query`` with ``heads_off`` switched off and whether they were cached: an
        identical query (only the threshold or the candidate changed) reuses the earlier answer instead of running
        the model again."""
        image_key = hashlib.blake2b(query.image.tobytes(), digest_size=16).hexdigest()
        key = (segmenter.name, image_key, query.image.size, query.expression, tuple(query.points), query.box,
               tuple(heads_off))
        cached = self._predictions.get(key)
        if cached is not None:
            return cached, True
        prediction = segmenter.predict(query, heads_off=heads_off) if heads_off else segmenter.predict(query)
        self._predictions.put(key, prediction)
        return prediction, False

    def load_model(self, model_id: str) -> SegmentationModel:
        """The embedded segmenter, or a hub model (SAM / SAM 2.1 / segment-anything + CLIPSeg, or SAM 3) for any
        other id."""
        if model_id == EMBEDDED_ID:
            try:
                return EmbeddedSegmenter.load(ASSETS, self.device)
            except FileNotFoundError as error:
                raise ServiceError(str(error)) from error
        return load_hub_model(model_id, self.device)

    def _query(self, image: Image.Image | None, expression: str, points: str, box: str) -> tuple[Query, float, list]:
        pixels, scale, notes = prepare_image(image)
        prepared, (width, height) = to_pil(pixels), image.size
        clicks, click_notes = parse_points(points or "", width, height)
        given_box = parse_box(box or "", width, height)
        expression = check_text(expression, "expression", required=False)
        if not expression and not clicks and given_box is None:
            raise ServiceError("Type an expression (e.g. 'the red bag'), click a point or give a box.")
        if scale != 1.0:
            clicks = [(x * scale, y * scale, label) for x, y, label in clicks]
            given_box = tuple(v * scale for v in given_box) if given_box else None
        return Query(prepared, expression, clicks, given_box), scale, notes + click_notes

    def _answer(self, image: Image.Image | None, expression: str, points: str, box: str, model: str,
                threshold: float = 0.5, candidate: int = -1, heads_off: str = "") -> Result:
        if not 0.0 < threshold < 1.0:
            raise ServiceError(f"threshold must lie between 0 and 1, not {threshold}")
        started = time.perf_counter()
        switched_off = self._heads_off(model, heads_off)
        query, scale, notes = self._query(image, expression, points, box)
        segmenter = self.model(model)
        prediction, answer_cached = self._predict(segmenter, query, switched_off)
        count = len(prediction.scores)
        if candidate >= count or candidate < -1:
            raise ServiceError(f"candidate must be -1 (best) or 0…{count - 1}, not {candidate}")
        chosen = int(np.argmax(prediction.scores)) if candidate == -1 else candidate
        honoured = [honour_prompts(p, query, threshold) for p in prediction.probabilities]
        probability, prompt_notes = honoured[chosen]
        mask = probability > threshold
        detections = detect(probability, threshold)
        presence = presence_score(probability, threshold)
        answered_by = prediction.extras.get("answered_by", segmenter.name)
        applied = bool(switched_off) and answered_by == segmenter.name
        if switched_off and not applied:
            prompt_notes = [*prompt_notes, f"heads_off had no effect: {answered_by} answered, and it has no "
                                           "attention heads"]
        summary = {
            "model": segmenter.name,
            "answered_by": answered_by,
            "score": round(float(prediction.scores[chosen]), 4),
            "candidate": chosen,
            "candidates": [{"index": i, "score": round(float(s), 4), "area": int((p > threshold).sum())}
                           for i, (s, (p, _)) in enumerate(zip(prediction.scores, honoured, strict=True))],
            "threshold": threshold,
            "boxes": [{"box": list(d.box), "score": round(d.score, 4)} for d in detections],
            "count": len(detections),
            "grounding_box": list(g) if (g := grounding_box(detections)) else None,
            "present": bool(detections) and presence > PRESENCE_THRESHOLD,
            "presence_score": round(presence, 4),
            "area": int(mask.sum()),
            "image_size": list(query.image.size),
            "scale": scale,
            "objects": prediction.extras.get("objects"),
            "feature_cache_hit": answer_cached or bool(prediction.extras.get("feature_cache_hit", False)),
            "answer_cache_hit": answer_cached,
            "notes": notes + prediction.extras.get("notes", []) + prompt_notes,
            "out_of_domain": prediction.extras.get("out_of_domain"),
            "heads_off": format_heads(switched_off),
            "heads_off_applied": applied,
        }
        summary["seconds"] = round(time.perf_counter() - started, 4)
        return Result(query, prediction, chosen, mask, detections, summary)

    def segment(self, image: Image.Image | None, expression: str = "", points: str = "", box: str = "",
                model: str = "", heads_off: str = "") -> tuple[Image.Image, dict]:
        result = self._answer(image, expression, points, box, model, heads_off=heads_off)
        return mask_image(result.mask), result.summary

    def segment_view(self, image: Image.Image | None, expression: str = "", points: str = "", box: str = "",
                     model: str = "", threshold: float = 0.5, candidate: int = -1, heads_off: str = ""
                     ) -> tuple[Image.Image, Image.Image, dict]:
        result = self._answer(image, expression, points, box, model, threshold, candidate, heads_off)
        summary = {**result.summary, "rle": encode_rle(result.mask)}
        picture = overlay(result.query.image, result.mask, result.detections, result.query.points, result.query.box)
        return picture, mask_image(result.mask), summary

    def segment_attention(self, image: Image.Image | None, expression: str = "", points: str = "", box: str = "",
                          layer: int = -1, head: int = -1, token: int = 1, heads_off: str = ""
                          ) -> tuple[Image.Image, dict]:
        switched_off = self._heads_off(EMBEDDED_ID, heads_off)
        query, _, _ = self._query(image, expression, points, box)
        if not query.expression:
            raise ServiceError("Type an expression to see where its words look.")
        segmenter = self.model(EMBEDDED_ID)
        prediction = segmenter.predict(query, return_attention=True, heads_off=switched_off)
        maps = prediction.extras["attention"]["words_to_objects"]  # per layer [1, heads, tokens, 1 + objects]
        tokens = prediction.extras["tokens"]
        layers, heads = len(maps), maps[0].shape[1]
        if not -layers <= layer < layers:
            raise ServiceError(f"layer must be in -{layers}…{layers - 1}, not {layer}")
        if not -1 <= head < heads:
            raise ServiceError(f"head must be -1 (mean) or 0…{heads - 1}, not {head}")
        if not 0 <= token < len(tokens):
            raise ServiceError(f"token must be 0…{len(tokens) - 1} (the expression has {len(tokens)} tokens)")
        weights = maps[layer][0].float()
        weights = (weights.mean(0) if head == -1 else weights[head])[token]
        masks = prediction.extras["object_masks"].float()
        grid = ((weights[1:, None, None] * masks).sum(0) / weights.max()).cpu().numpy()
        picture = self._heatmap(query.image, grid, prediction.extras["frame"])
        return picture, {"tokens": tokens, "token": token, "layer": layer, "head": head, "layers": layers,
                         "heads": heads, "objects": [round(float(w), 4) for w in weights[1:]],
                         "nothing": round(float(weights[0]), 4), "peak": round(float(weights.max()), 4),
                         "heads_off": format_heads(switched_off)}

    def segmentation_head_effects(self, model: str = "", tasks: str = "") -> dict:
        segmenter = self._embedded(model, "the head atlas")
        chosen = choose_tasks(tasks, ATLAS_KINDS, segmenter.name)
        atlas, cached = self.effects_cache.get_or_compute(atlas_key(segmenter), lambda: compute_head_effects(segmenter))
        return {**select_tasks(atlas, chosen), "cached": cached}

    @staticmethod
    def _heatmap(image: Image.Image, grid: np.ndarray, frame) -> Image.Image:
        """``grid`` (model frame, in [0, 1]) stretched over the image's letterboxed area and blended onto it."""
        side = frame.side
        full = np.asarray(Image.fromarray((grid.clip(0, 1) * 255).astype(np.uint8)).resize(
            (side, side), Image.BILINEAR), np.float32) / 255
        h, w = round(frame.height * frame.scale), round(frame.width * frame.scale)
        crop = full[frame.top:frame.top + max(1, h), frame.left:frame.left + max(1, w)]
        heat = np.asarray(Image.fromarray((crop * 255).astype(np.uint8)).resize(image.size, Image.BILINEAR),
                          np.float32)[..., None] / 255
        rgb = np.asarray(image, np.float32)
        return Image.fromarray((rgb * (1 - 0.6 * heat) + HEATMAP_RGB * 0.6 * heat).clip(0, 255).astype(np.uint8))
