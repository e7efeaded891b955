"""The embedded referring segmenter (trained by HeadLab) as a service adapter, with per-image feature caching.

Any image is letterboxed to the model's square input (padded with its mean colour, aspect ratio kept); clicks and
the box are mapped into that frame, and the candidate maps are cropped back and resized to the image. The
text-independent image features (foreground, objects, object tokens) and the text encodings are kept in bounded LRU
caches, so a further query on the same image (new expression, new clicks) only runs the light object–word fusion.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the usual torch alias
from PIL import Image

from backends.core.cache import LRUCache
from backends.core.text_encoder import MiniLMEncoder, TextCache
from backends.segmentation.data import BOX_BOTTOM_RIGHT, BOX_TOP_LEFT, CATEGORIES, COLOUR_KEYS, MAX_PROMPTS, PAD
from backends.segmentation.model import WEIGHTS_NAME, ImageFeatures, Segmenter, candidate_maps, load_checkpoint
from backends.segmentation.query import Prediction, Query

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "segmentation"
EMBEDDED_ID = "fashion-refseg"
FEATURE_CACHE_SIZE = 16
TEXT_CACHE_SIZE = 256


@dataclass(frozen=True)
class Frame:
    """Where an image of size (width, height) sits inside the square model input after letterboxing."""

    width: int
    height: int
    scale: float
    left: int
    top: int
    side: int

    def to_model(self, x: float, y: float) -> tuple[float, float]:
        """Image pixel coordinates → model coordinates in [0, 1]."""
        return (x * self.scale + self.left) / self.side, (y * self.scale + self.top) / self.side


def letterbox(image: Image.Image, side: int) -> tuple[np.ndarray, Frame]:
    """``image`` (RGB) scaled to fit a side×side square, centred, padded with its mean colour."""
    width, height = image.size
    scale = side / max(width, height)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    resized = np.asarray(image.resize((new_w, new_h), Image.BILINEAR), np.uint8)
    canvas = np.empty((side, side, 3), np.uint8)
    canvas[:] = resized.reshape(-1, 3).mean(0).astype(np.uint8)
    left, top = (side - new_w) // 2, (side - new_h) // 2
    canvas[top:top + new_h, left:left + new_w] = resized
    return canvas, Frame(width, height, scale, left, top, side)


def prompt_array(query: Query, frame: Frame) -> np.ndarray:
    """The model's prompt rows [MAX_PROMPTS, 3]: clicks, then the box corners, padded."""
    rows = np.full((MAX_PROMPTS, 3), [0.0, 0.0, PAD], np.float32)
    for i, (x, y, label) in enumerate(query.points):
        rows[i] = (*frame.to_model(x, y), label)
    if query.box is not None:
        x0, y0, x1, y1 = query.box
        rows[MAX_PROMPTS - 2] = (*frame.to_model(x0, y0), BOX_TOP_LEFT)
        rows[MAX_PROMPTS - 1] = (*frame.to_model(x1, y1), BOX_BOTTOM_RIGHT)
    return rows


class EmbeddedSegmenter:
    """HeadLab's segmenter + frozen MiniLM, with LRU caches of image features and text encodings."""

    name = EMBEDDED_ID

    def __init__(self, model: Segmenter, text_encoder: MiniLMEncoder, device: str = "cpu", meta: dict | None = None):
        self.model = model.to(device).eval()
        self.text_encoder = text_encoder.to(device)
        self.device = device
        self.meta = meta or {}
        self.features: LRUCache[str, ImageFeatures] = LRUCache(FEATURE_CACHE_SIZE)
        self.texts = TextCache(self.text_encoder, TEXT_CACHE_SIZE)

    @classmethod
    def load(cls, folder: Path = ASSETS, device: str = "cpu") -> EmbeddedSegmenter:
        """Load segmenter.safetensors and segmentation.json from ``folder``."""
        weights = Path(folder) / WEIGHTS_NAME
        if not weights.exists():
            raise FileNotFoundError(f"{weights} is missing: train it with `python -m backends.segmentation.train`")
        model, meta = load_checkpoint(weights)
        return cls(model, MiniLMEncoder(), device, meta)

    @torch.no_grad()
    def image_features(self, pixels: np.ndarray) -> tuple[ImageFeatures, bool]:
        """Cached features of a letterboxed uint8 image and whether they came from the cache."""
        key = hashlib.blake2b(pixels.tobytes(), digest_size=16).hexdigest()
        cached = self.features.get(key)
        if cached is not None:
            return cached, True
        features = self.model.encode_image(torch.from_numpy(pixels).to(self.device).permute(2, 0, 1).float() / 255)
        self.features.put(key, features)
        return features, False

    @torch.no_grad()
    def predict(self, query: Query, return_attention: bool = False) -> Prediction:
        """Three candidate probability maps at the image's size with their scores.

        Extras: whether the image features were cached, the objects found (category and colour guesses) and,
        when asked, the words→objects attention with the object masks and tokens."""
        pixels, frame = letterbox(query.image, self.model.config.image_size)
        features, cached = self.image_features(pixels)
        text = self.texts([query.expression.strip()])
        prompts = torch.from_numpy(prompt_array(query, frame)).to(self.device)[None]
        out = self.model.decode([features], text.tokens, text.mask, prompts, return_attention)
        count = features.tokens.shape[0]
        maps, scores, _ = candidate_maps(features, out.logits[0, :count], self.model.config.num_masks)
        top, left = frame.top, frame.left
        h, w = round(frame.height * frame.scale), round(frame.width * frame.scale)
        maps = maps[None, :, top:top + max(1, h), left:left + max(1, w)]
        maps = F.interpolate(maps, size=(frame.height, frame.width), mode="bilinear", align_corners=False)[0]
        referred = torch.sigmoid(out.logits[0, :count]).tolist()
        extras: dict = {"feature_cache_hit": cached, "objects": [
            {"category": CATEGORIES[int(c)].key, "colour": COLOUR_KEYS[int(k)], "referred": round(p, 4)}
            for c, k, p in zip(features.category_logits.argmax(1).tolist(), features.colour_logits.argmax(1).tolist(),
                               referred, strict=True)]}
        extras["notes"] = self._notes(features, query, frame)
        if return_attention and out.attention is not None:
            extras["attention"] = out.attention
            extras["object_masks"] = features.masks
            extras["tokens"] = self.text_encoder.tokenizer.convert_ids_to_tokens(
                self.text_encoder.tokenizer(query.expression.strip())["input_ids"])
            extras["frame"] = frame
        return Prediction(maps.clamp(0, 1).cpu().numpy(), scores, extras)

    @staticmethod
    def _notes(features: ImageFeatures, query: Query, frame: Frame) -> list[str]:
        """Plain-language notes when the model found nothing to work with."""
        if features.tokens.shape[0] == 0:
            return ["the embedded model found no items it knows in this image (it learned clothing items and simple "
                    "shapes on generated scenes); for real photos choose the hub model (CLIPSeg + SAM)"]
        side = features.masks.shape[-1]
        notes = []
        for x, y, label in query.points:
            mx, my = frame.to_model(x, y)
            pixel = min(side - 1, int(my * side)), min(side - 1, int(mx * side))
            if label == 1 and not features.masks[:, pixel[0], pixel[1]].any():
                notes.append(f"no item under the click at ({x:g}, {y:g}); click on an item to select it")
        return notes
