"""The hub path for real photos: SAM for clicks and boxes, led by CLIPSeg for text; or SAM 3 for text alone.

Text → CLIPSeg's coarse probability map → a box around its confident region and a click at its peak → SAM refines
that into three candidate masks with predicted IoU; the user's own clicks and box are added to SAM's prompts. With
no expression, SAM works from the clicks and box alone. SAM's image embedding is computed once per image (bounded
LRU). SAM comes from one of:

* transformers' ``SamModel`` or ``Sam2Model`` (SAM 2.1), chosen by the checkpoint's config: ids
  ``"<clipseg id>+<sam id>"`` (text, clicks and box) or ``"<sam id>"`` (clicks and box only);
* the ``segment_anything`` package (``sam_model_registry`` + ``SamPredictor``): ids
  ``"<clipseg id>+segment-anything:<vit_b|vit_l|vit_h>[:<checkpoint path>]"`` or ``"segment-anything:…"``, the
  checkpoint path taken from the id (e.g. listed so in spaces.yml) or from HEADLAB_SAM_CHECKPOINT.

A SAM 3 id (any checkpoint whose config is ``sam3``, e.g. ``facebook/sam3``) is served by :class:`Sam3Segmenter`:
text (and a box as an exemplar) → every matching instance.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the usual torch alias

from backends.core.cache import LRUCache
from backends.core.service import ServiceError, hub_load_error
from backends.segmentation.query import Prediction, Query

HUB_ID = "clipseg+sam"  # short name of the default pair below
HUB_DEFAULT = "CIDAS/clipseg-rd64-refined+facebook/sam-vit-base"
SEGMENT_ANYTHING = "segment-anything"  # prefix of ids served by the segment_anything package
SEGMENT_ANYTHING_KINDS = ("vit_b", "vit_l", "vit_h")
CHECKPOINT_ENV = "HEADLAB_SAM_CHECKPOINT"
COARSE_PRESENT = 0.3  # CLIPSeg peaks below this: the expression's object is taken to be absent
SAM3_THRESHOLD = 0.3  # SAM 3 instances scoring below this are dropped
FEATURE_CACHE_SIZE = 8


def split_hub_id(model_id: str) -> tuple[str | None, str]:
    """(CLIPSeg id or None, SAM id) from a hub model id ("clipseg+sam" = the default pair)."""
    if model_id.strip() == HUB_ID:
        model_id = HUB_DEFAULT
    if "+" in model_id:
        clipseg_id, sam_id = (part.strip() for part in model_id.split("+", 1))
        return clipseg_id, sam_id
    return None, model_id.strip()


def image_key(image: np.ndarray) -> str:
    """A short hash of an image's pixels and shape (the key of the per-image caches)."""
    return hashlib.blake2b(image.tobytes() + str(image.shape).encode(), digest_size=16).hexdigest()


def coarse_prompts(coarse: np.ndarray) -> tuple[tuple[float, float, float, float], tuple[float, float]]:
    """A box around the map's confident region (above half its peak) and the (x, y) of its peak."""
    region = coarse >= 0.5 * coarse.max()
    ys, xs = np.nonzero(region)
    peak_y, peak_x = np.unravel_index(int(coarse.argmax()), coarse.shape)
    return (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)), (peak_x + 0.5, peak_y + 0.5)


class TransformersSam:
    """transformers' SamModel or Sam2Model with its processor: clicks and a box → three masks and their IoU."""

    def __init__(self, model, processor, device: str = "cpu"):
        self.model, self.processor, self.device = model.to(device).eval(), processor, device
        self.embeddings: LRUCache[str, object] = LRUCache(FEATURE_CACHE_SIZE)

    @classmethod
    def from_pretrained(cls, sam_id: str, device: str = "cpu") -> TransformersSam:
        """SAM or SAM 2.1 by hub id or local folder (the config's model type decides)."""
        from transformers import AutoConfig, Sam2Model, Sam2Processor, SamModel, SamProcessor

        model_type = AutoConfig.from_pretrained(sam_id).model_type
        if model_type not in ("sam", "sam2"):
            raise ServiceError(f"{sam_id!r} is a {model_type!r} model, not SAM or SAM 2")
        model_class, processor_class = (SamModel, SamProcessor) if model_type == "sam" else (Sam2Model, Sam2Processor)
        return cls(model_class.from_pretrained(sam_id), processor_class.from_pretrained(sam_id), device)

    @torch.no_grad()
    def masks(self, image: np.ndarray, points: list, box: tuple | None) -> tuple[np.ndarray, list[float], bool]:
        """Three probability maps [3, H, W], their predicted IoU and whether the image embedding was cached."""
        prompt_args: dict = {}
        if points:
            prompt_args["input_points"] = [[[[x, y] for x, y, _ in points]]]
            prompt_args["input_labels"] = [[[label for _, _, label in points]]]
        if box is not None:
            prompt_args["input_boxes"] = [[list(box)]]
        prompts = self.processor(images=image, return_tensors="pt", **prompt_args)
        key = image_key(image)
        embedding = self.embeddings.get(key)
        cached = embedding is not None
        if not cached:
            embedding = self.model.get_image_embeddings(prompts["pixel_values"].to(self.device))
            self.embeddings.put(key, embedding)
        model_inputs = {k: prompts[k].to(self.device) for k in ("input_points", "input_labels", "input_boxes")
                        if k in prompts}
        out = self.model(image_embeddings=embedding, multimask_output=True, **model_inputs)
        sizes = {k: prompts[k] for k in ("original_sizes", "reshaped_input_sizes") if k in prompts}
        masks = self.processor.post_process_masks(out.pred_masks.cpu(), *sizes.values(), binarize=False)[0]
        probabilities = torch.sigmoid(masks[0].float()).numpy()
        return probabilities, out.iou_scores[0, 0].float().clamp(0, 1).tolist(), cached


class SegmentAnythingSam:
    """The ``segment_anything`` package: ``SamPredictor.set_image`` once per image, then ``predict`` per query."""

    def __init__(self, sam, device: str = "cpu"):
        self.sam = sam.to(device).eval()
        self.predictors: LRUCache[str, object] = LRUCache(FEATURE_CACHE_SIZE)
        self.lock = threading.Lock()  # one image embedding is computed at a time

    @classmethod
    def from_id(cls, sam_id: str, device: str = "cpu") -> SegmentAnythingSam:
        """Build ``segment-anything:<kind>[:<checkpoint>]`` with ``sam_model_registry`` (checkpoint from the id or
        HEADLAB_SAM_CHECKPOINT)."""
        _, _, rest = sam_id.partition(":")
        kind, _, checkpoint = rest.partition(":")
        kind = kind or "vit_b"
        if kind not in SEGMENT_ANYTHING_KINDS:
            raise ServiceError(f"segment-anything model kind must be one of {', '.join(SEGMENT_ANYTHING_KINDS)}, "
                               f"not {kind!r}")
        checkpoint = checkpoint or os.environ.get(CHECKPOINT_ENV, "")
        if not checkpoint or not Path(checkpoint).is_file():
            raise ServiceError(f"no segment-anything {kind} checkpoint: give its path as "
                               f"'{SEGMENT_ANYTHING}:{kind}:/path/to/sam_{kind}.pth' or in {CHECKPOINT_ENV} "
                               f"(not found: {checkpoint or 'none given'})")
        try:
            from segment_anything import sam_model_registry
        except ImportError as error:
            raise ServiceError(f"the segment_anything package cannot be imported here ({error})") from error
        return cls(sam_model_registry[kind](checkpoint=checkpoint), device)

    def predictor(self, image: np.ndarray) -> tuple[object, bool]:
        """The predictor holding ``image``'s embedding (``set_image`` runs once per image) and whether it was cached."""
        from segment_anything import SamPredictor

        key = image_key(image)
        with self.lock:
            predictor = self.predictors.get(key)
            if predictor is not None:
                return predictor, True
            predictor = SamPredictor(self.sam)
            predictor.set_image(image)
            self.predictors.put(key, predictor)
            return predictor, False

    @torch.no_grad()
    def masks(self, image: np.ndarray, points: list, box: tuple | None) -> tuple[np.ndarray, list[float], bool]:
        """Three probability maps [3, H, W], their predicted IoU and whether the image embedding was cached."""
        predictor, cached = self.predictor(image)
        coords = np.array([[x, y] for x, y, _ in points], np.float32) if points else None
        labels = np.array([label for _, _, label in points], np.int64) if points else None
        logits, scores, _ = predictor.predict(point_coords=coords, point_labels=labels,
                                              box=np.array(box, np.float32) if box is not None else None,
                                              mask_input=None, multimask_output=True, return_logits=True)
        probabilities = 1 / (1 + np.exp(-np.asarray(logits, np.float32)))
        return probabilities, np.clip(np.asarray(scores, np.float32), 0, 1).tolist(), cached


class HubSegmenter:
    """SAM (either source above), optionally led by CLIPSeg for text."""

    def __init__(self, name: str, sam: TransformersSam | SegmentAnythingSam, clipseg=None, clipseg_processor=None,
                 device: str = "cpu"):
        self.name, self.sam, self.device = name, sam, device
        self.clipseg = clipseg.to(device).eval() if clipseg is not None else None
        self.clipseg_processor = clipseg_processor

    @classmethod
    def from_pretrained(cls, model_id: str, device: str = "cpu") -> HubSegmenter:
        """Load SAM (and CLIPSeg) by id; hub ids need the files locally or internet access."""
        from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

        clipseg_id, sam_id = split_hub_id(model_id)
        try:
            if sam_id.split(":", 1)[0] == SEGMENT_ANYTHING:
                sam = SegmentAnythingSam.from_id(sam_id, device)
            else:
                sam = TransformersSam.from_pretrained(sam_id, device)
            clipseg = clipseg_processor = None
            if clipseg_id:
                clipseg = CLIPSegForImageSegmentation.from_pretrained(clipseg_id)
                clipseg_processor = CLIPSegProcessor.from_pretrained(clipseg_id)
        except OSError as error:
            raise hub_load_error(model_id, error) from error
        return cls(model_id, sam, clipseg, clipseg_processor, device)

    @torch.no_grad()
    def coarse_map(self, image: np.ndarray, expression: str) -> np.ndarray:
        """CLIPSeg's probability map for ``expression`` at the image's size."""
        inputs = self.clipseg_processor(text=[expression], images=[image], return_tensors="pt", padding=True,
                                        truncation=True)
        inputs = {k: v.to(self.device) for k, v in inputs.items() if k in ("input_ids", "attention_mask",
                                                                           "pixel_values")}
        logits = self.clipseg(**inputs).logits.reshape(1, 1, *inputs["pixel_values"].shape[-2:])
        logits = F.interpolate(logits.float(), size=image.shape[:2], mode="bilinear", align_corners=False)
        return torch.sigmoid(logits)[0, 0].cpu().numpy()

    def predict(self, query: Query) -> Prediction:
        """Three candidate probability maps at the image's size and SAM's predicted IoU for each."""
        image = np.asarray(query.image.convert("RGB"))
        points, box = list(query.points), query.box
        extras: dict = {}
        if query.expression.strip():
            if self.clipseg is None:
                raise ServiceError(f"{self.name} takes clicks and boxes only; use a 'clipseg+sam' id for text")
            coarse = self.coarse_map(image, query.expression.strip())
            extras["coarse_peak"] = float(coarse.max())
            if coarse.max() < COARSE_PRESENT and not points and box is None:
                return Prediction(np.repeat(coarse[None] * 0, 3, axis=0), [0.0, 0.0, 0.0], extras)
            coarse_box, peak = coarse_prompts(coarse)
            box = box or coarse_box
            points = [*points, (*peak, 1)]
        probabilities, scores, extras["feature_cache_hit"] = self.sam.masks(image, points, box)
        return Prediction(probabilities, scores, extras)


class Sam3Segmenter:
    """transformers' SAM 3: an expression (and optionally a box as an exemplar) → every matching instance.

    Candidates: all instances together (the answer to "all the boats"), the best instance alone, the two best."""

    def __init__(self, name: str, model, processor, device: str = "cpu"):
        self.name, self.model, self.processor, self.device = name, model.to(device).eval(), processor, device

    @classmethod
    def from_pretrained(cls, model_id: str, device: str = "cpu") -> Sam3Segmenter:
        """Load SAM 3 by hub id or local folder."""
        from transformers import Sam3Model, Sam3Processor

        try:
            return cls(model_id, Sam3Model.from_pretrained(model_id), Sam3Processor.from_pretrained(model_id), device)
        except OSError as error:
            raise hub_load_error(model_id, error) from error

    @torch.no_grad()
    def predict(self, query: Query) -> Prediction:
        """Three candidate maps (see the class docstring) and their instance scores."""
        if query.points:
            raise ServiceError(f"{self.name} (SAM 3) takes an expression and a box, not clicks; use SAM or SAM 2 "
                               "for clicks")
        if not query.expression.strip():
            raise ServiceError(f"{self.name} (SAM 3) needs an expression naming what to find")
        width, height = query.image.size
        box_args = {"input_boxes": [[list(query.box)]], "input_boxes_labels": [[1]]} if query.box else {}
        inputs = self.processor(images=query.image, text=query.expression.strip(), return_tensors="pt", **box_args)
        outputs = self.model(**{k: v.to(self.device) for k, v in inputs.items() if torch.is_tensor(v)})
        found = self.processor.post_process_instance_segmentation(outputs, threshold=SAM3_THRESHOLD,
                                                                  target_sizes=[(height, width)])[0]
        masks = found["masks"].float().cpu().numpy().reshape(-1, height, width)
        scores = found["scores"].float().cpu().numpy().reshape(-1)
        order = np.argsort(-scores)
        empty = np.zeros((height, width), np.float32)
        sets = (order, order[:1], order[:2])
        maps = [masks[chosen].max(0) if len(chosen) else empty for chosen in sets]
        return Prediction(np.stack(maps), [float(scores[chosen].mean()) if len(chosen) else 0.0 for chosen in sets],
                          {"instances": len(order), "feature_cache_hit": False})


def load_hub_model(model_id: str, device: str = "cpu") -> HubSegmenter | Sam3Segmenter:
    """The adapter for a hub id: SAM 3 when the checkpoint's config says so, else SAM (+ CLIPSeg)."""
    from transformers import AutoConfig

    clipseg_id, sam_id = split_hub_id(model_id)
    if clipseg_id is None and sam_id.split(":", 1)[0] != SEGMENT_ANYTHING:
        try:
            model_type = AutoConfig.from_pretrained(sam_id).model_type
        except (OSError, ValueError) as error:
            raise hub_load_error(model_id, error) from error
        if model_type == "sam3":
            return Sam3Segmenter.from_pretrained(sam_id, device)
    return HubSegmenter.from_pretrained(model_id, device)
