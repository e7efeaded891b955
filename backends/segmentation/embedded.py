"""The embedded referring segmenter (trained by HeadLab) as a service adapter, with per-image feature caching.

Any image is letterboxed to the model's square input (padded with its mean colour, aspect ratio kept); clicks and
the box are mapped into that frame, and the candidate maps are cropped back and resized to the image. The
text-independent image features and the text encodings are kept in bounded LRU caches, so a further query on the
same image (new expression, new clicks) only runs the light fusion and mask decoder.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the usual torch alias
from PIL import Image

from backends.core.text_encoder import MiniLMEncoder, TextEncoding
from backends.segmentation.data import BOX_BOTTOM_RIGHT, BOX_TOP_LEFT, MAX_PROMPTS, PAD
from backends.segmentation.model import WEIGHTS_NAME, ImageFeatures, Segmenter, load_checkpoint
from backends.segmentation.query import LRUCache, Prediction, Query

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
        self.texts: LRUCache[str, TextEncoding] = LRUCache(TEXT_CACHE_SIZE)

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
        tensor = torch.from_numpy(pixels).to(self.device).permute(2, 0, 1)[None].float() / 255
        features = self.model.encode_image(tensor)
        self.features.put(key, features)
        return features, False

    @torch.no_grad()
    def text(self, expression: str) -> TextEncoding:
        """Cached MiniLM encoding of ``expression``."""
        cached = self.texts.get(expression)
        if cached is None:
            cached = self.text_encoder([expression])
            self.texts.put(expression, cached)
        return cached

    @torch.no_grad()
    def predict(self, query: Query, return_attention: bool = False) -> Prediction:
        """Three candidate probability maps at the image's size with their predicted IoU scores."""
        pixels, frame = letterbox(query.image, self.model.config.image_size)
        features, cached = self.image_features(pixels)
        text = self.text(query.expression.strip())
        prompts = torch.from_numpy(prompt_array(query, frame)).to(self.device)[None]
        out = self.model.decode(features, text.tokens, text.mask, prompts, return_attention)
        top, left = frame.top, frame.left
        h, w = round(frame.height * frame.scale), round(frame.width * frame.scale)
        logits = out.masks[:, :, top:top + max(1, h), left:left + max(1, w)]
        logits = F.interpolate(logits, size=(frame.height, frame.width), mode="bilinear", align_corners=False)
        extras: dict = {"feature_cache_hit": cached}
        if return_attention and out.attention is not None:
            extras["attention"] = out.attention
            extras["tokens"] = self.text_encoder.tokenizer.convert_ids_to_tokens(
                self.text_encoder.tokenizer(query.expression.strip())["input_ids"])
            extras["frame"] = frame
        return Prediction(torch.sigmoid(logits[0]).cpu().numpy(), out.scores[0].tolist(), extras)
