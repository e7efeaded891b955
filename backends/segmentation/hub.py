"""The hub path for real photos: SAM (transformers ``SamModel``) for clicks and boxes, CLIPSeg for text.

Text → CLIPSeg's coarse probability map → a box around its confident region and a click at its peak → SAM refines
that into three candidate masks with predicted IoU; the user's own clicks and box are added to SAM's prompts. With
no expression, SAM works from the clicks and box alone. SAM's image embedding is cached per image (bounded LRU).
Model id: ``"<clipseg id>+<sam id>"`` (text, clicks and box) or a single SAM id (clicks and box only).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the usual torch alias

from backends.core.cache import LRUCache
from backends.core.service import ServiceError, hub_load_error
from backends.segmentation.query import Prediction, Query

HUB_ID = "clipseg+sam"  # short name of the default pair below
HUB_DEFAULT = "CIDAS/clipseg-rd64-refined+facebook/sam-vit-base"
COARSE_PRESENT = 0.3  # CLIPSeg peaks below this: the expression's object is taken to be absent
FEATURE_CACHE_SIZE = 8


def split_hub_id(model_id: str) -> tuple[str | None, str]:
    """(CLIPSeg id or None, SAM id) from a hub model id ("clipseg+sam" = the default pair)."""
    if model_id.strip() == HUB_ID:
        model_id = HUB_DEFAULT
    if "+" in model_id:
        clipseg_id, sam_id = (part.strip() for part in model_id.split("+", 1))
        return clipseg_id, sam_id
    return None, model_id.strip()


def coarse_prompts(coarse: np.ndarray) -> tuple[tuple[float, float, float, float], tuple[float, float]]:
    """A box around the map's confident region (above half its peak) and the (x, y) of its peak."""
    region = coarse >= 0.5 * coarse.max()
    ys, xs = np.nonzero(region)
    peak_y, peak_x = np.unravel_index(int(coarse.argmax()), coarse.shape)
    return (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)), (peak_x + 0.5, peak_y + 0.5)


class HubSegmenter:
    """SAM, optionally led by CLIPSeg for text, from loaded transformers models and processors."""

    def __init__(self, name: str, sam, sam_processor, clipseg=None, clipseg_processor=None, device: str = "cpu"):
        self.name = name
        self.sam, self.sam_processor = sam.to(device).eval(), sam_processor
        self.clipseg = clipseg.to(device).eval() if clipseg is not None else None
        self.clipseg_processor = clipseg_processor
        self.device = device
        self.embeddings: LRUCache[str, torch.Tensor] = LRUCache(FEATURE_CACHE_SIZE)

    @classmethod
    def from_pretrained(cls, model_id: str, device: str = "cpu") -> HubSegmenter:
        """Load SAM (and CLIPSeg) by hub id or local folder; needs the files locally or internet access."""
        from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor, SamModel, SamProcessor

        clipseg_id, sam_id = split_hub_id(model_id)
        try:
            sam, sam_processor = SamModel.from_pretrained(sam_id), SamProcessor.from_pretrained(sam_id)
            clipseg = clipseg_processor = None
            if clipseg_id:
                clipseg = CLIPSegForImageSegmentation.from_pretrained(clipseg_id)
                clipseg_processor = CLIPSegProcessor.from_pretrained(clipseg_id)
        except OSError as error:
            raise hub_load_error(model_id, error) from error
        return cls(model_id, sam, sam_processor, clipseg, clipseg_processor, device)

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

    @torch.no_grad()
    def image_embedding(self, image: np.ndarray, pixel_values: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """SAM's image embedding (cached per image) and whether it came from the cache."""
        key = hashlib.blake2b(image.tobytes() + str(image.shape).encode(), digest_size=16).hexdigest()
        cached = self.embeddings.get(key)
        if cached is not None:
            return cached, True
        embedding = self.sam.get_image_embeddings(pixel_values.to(self.device))
        self.embeddings.put(key, embedding)
        return embedding, False

    @torch.no_grad()
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
        prompt_args: dict = {}
        if points:
            prompt_args["input_points"] = [[[[x, y] for x, y, _ in points]]]
            prompt_args["input_labels"] = [[[label for _, _, label in points]]]
        if box is not None:
            prompt_args["input_boxes"] = [[list(box)]]
        prompts = self.sam_processor(images=image, return_tensors="pt", **prompt_args)
        embedding, extras["feature_cache_hit"] = self.image_embedding(image, prompts["pixel_values"])
        model_inputs = {k: prompts[k].to(self.device) for k in ("input_points", "input_labels", "input_boxes")
                        if k in prompts}
        out = self.sam(image_embeddings=embedding, multimask_output=True, **model_inputs)
        masks = self.sam_processor.post_process_masks(out.pred_masks.cpu(), prompts["original_sizes"],
                                                      prompts["reshaped_input_sizes"], binarize=False)[0]
        probabilities = torch.sigmoid(masks[0].float()).numpy()
        return Prediction(probabilities, out.iou_scores[0, 0].float().clamp(0, 1).tolist(), extras)
