"""The embedded referring segmenter (trained by HeadLab) as a service adapter, with per-image feature caching.

Images unlike the model's world get an out-of-domain note: pictures far from the generator's scenes (their
pooled U-Net features beyond the model's ``scene_radius``, see :mod:`backends.segmentation.model`) and pictures
whose objects the model does not recognise confidently (mean top category probability below KNOWN_CONFIDENCE).
When include clicks or a box are given and the image is out of domain, or none of the model's objects lies under an
include click or mostly inside the box, the classical GrabCut segmenter answers instead (``answered_by`` says so).

Any image is letterboxed to the model's square input (padded with its mean colour, aspect ratio kept); clicks and
the box are mapped into that frame, and the candidate maps are cropped back and resized to the image. The
text-independent image features (foreground, objects, object tokens) and the text encodings are kept in bounded LRU
caches, so a further query on the same image (new expression, new clicks) only runs the light object–word fusion.
``predict(..., heads_off=...)`` switches fusion heads off for that query only (zero ablation, see
:mod:`backends.segmentation.model`); the GrabCut fallback has no heads, so they have no effect on its answers.
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
from backends.core.heads import Head, HeadStack
from backends.core.text_encoder import MiniLMEncoder, TextCache
from backends.segmentation.classical import ClassicalSegmenter
from backends.segmentation.data import BOX_BOTTOM_RIGHT, BOX_TOP_LEFT, CATEGORIES, COLOUR_KEYS, MAX_PROMPTS, PAD
from backends.segmentation.model import (
    WEIGHTS_NAME,
    ImageFeatures,
    Segmenter,
    candidate_maps,
    head_stack,
    heads_off_mask,
    load_checkpoint,
    prompt_evidence,
)
from backends.segmentation.query import Prediction, Query

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "segmentation"
EMBEDDED_ID = "fashion-refseg"
FEATURE_CACHE_SIZE = 16
TEXT_CACHE_SIZE = 256
KNOWN_CONFIDENCE = 0.6  # mean top category probability of the objects below which the image is out of domain
BOX_SHARE = 0.5  # an object with at least this share of its pixels inside the box is one the box points at
OUT_OF_DOMAIN_NOTE = ("This image looks unlike the embedded model's world: it learned clothing items and simple "
                      "shapes on generated scenes, and this picture is unlike those scenes or shows none of those "
                      "items clearly. Clicks and a box "
                      "still get an answer (from the classical GrabCut segmenter when the model has no item "
                      "there); for text on real photos choose the hub model (CLIPSeg + SAM).")


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
        self.classical = ClassicalSegmenter()
        self.stack: HeadStack = head_stack(model.config, self.name)
        self._fingerprint: str | None = None

    def fingerprint(self) -> str:
        """A hash of the segmenter's weights (the frozen Fashion-MNIST prior included)."""
        if self._fingerprint is None:
            digest = hashlib.blake2b(digest_size=8)
            for name, tensor in sorted(self.model.state_dict().items()):
                digest.update(name.encode())
                digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

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
    def predict(self, query: Query, return_attention: bool = False, fallback: bool = True,
                heads_off: list[Head] | None = None) -> Prediction:
        """Three candidate probability maps at the image's size with their scores, with the fusion heads
        ``heads_off`` (of :attr:`stack`) switched off.

        Extras: who answered (this model or the classical fallback), whether the image features were cached, the
        objects found (category and colour guesses), notes, an out-of-domain note and, when asked, the
        words→objects attention with the object masks and tokens (the fallback is never used then, nor when
        ``fallback`` is False)."""
        pixels, frame = letterbox(query.image, self.model.config.image_size)
        features, cached = self.image_features(pixels)
        prompts = torch.from_numpy(prompt_array(query, frame)).to(self.device)[None]
        out_of_domain = self._out_of_domain(features)
        prompted = query.box is not None or any(label == 1 for _, _, label in query.points)
        if prompted and fallback and not return_attention and (out_of_domain or
                                                  not self._prompts_meet_objects(features, prompts[0])):
            prediction = self.classical.predict(query)
            reason = "recognises no item in this image" if out_of_domain else \
                "has no item under the include clicks or in the box"
            note = f"the embedded model {reason}, so the classical GrabCut segmenter answered from the clicks and box"
            if query.expression.strip():
                note += " (it does not read the expression)"
            prediction.extras.update(feature_cache_hit=cached, objects=[], notes=[note],
                                     out_of_domain=OUT_OF_DOMAIN_NOTE if out_of_domain else None)
            return prediction
        expression, notes = self._truncate(query.expression.strip())
        text = self.texts([expression])
        off = heads_off_mask([heads_off], self.stack, self.device) if heads_off else None
        out = self.model.decode([features], text.tokens, text.mask, prompts, return_attention, off)
        count = features.tokens.shape[0]
        maps, scores, _ = candidate_maps(features, out.logits[0, :count], self.model.config.num_masks)
        top, left = frame.top, frame.left
        h, w = round(frame.height * frame.scale), round(frame.width * frame.scale)
        maps = maps[None, :, top:top + max(1, h), left:left + max(1, w)]
        maps = F.interpolate(maps, size=(frame.height, frame.width), mode="bilinear", align_corners=False)[0]
        referred = torch.sigmoid(out.logits[0, :count]).tolist()
        extras: dict = {"answered_by": EMBEDDED_ID, "feature_cache_hit": cached, "objects": [
            {"category": CATEGORIES[int(c)].key, "colour": COLOUR_KEYS[int(k)], "referred": round(p, 4)}
            for c, k, p in zip(features.category_logits.argmax(1).tolist(), features.colour_logits.argmax(1).tolist(),
                               referred, strict=True)]}
        extras["notes"] = notes + self._notes(features, query, frame)
        extras["out_of_domain"] = OUT_OF_DOMAIN_NOTE if out_of_domain else None
        if return_attention and out.attention is not None:
            extras["attention"] = out.attention
            extras["object_masks"] = features.masks
            extras["tokens"] = self.text_encoder.tokenizer.convert_ids_to_tokens(self._token_ids(expression))
            extras["frame"] = frame
        return Prediction(maps.clamp(0, 1).cpu().numpy(), scores, extras)

    def _token_ids(self, expression: str) -> list[int]:
        """The text encoder's token ids of ``expression`` (with [CLS] and [SEP]), not truncated."""
        return self.text_encoder.tokenizer(expression)["input_ids"]

    def _truncate(self, expression: str) -> tuple[str, list[str]]:
        """``expression`` cut to what the text encoder reads (its first max_length tokens) and a note if it was."""
        ids = self._token_ids(expression)
        limit = self.text_encoder.max_length
        if len(ids) <= limit:
            return expression, []
        kept = self.text_encoder.tokenizer.decode(ids[1:limit - 1])
        return kept, [f"the expression has {len(ids)} tokens; the text encoder reads {limit}, so only "
                      f"\"{kept}\" was used"]

    def _out_of_domain(self, features: ImageFeatures) -> bool:
        """Whether the picture is far from the training scenes, or its objects are ones the model does not
        recognise (mean top category probability)."""
        if features.tokens.shape[0] == 0 or features.scene_distance > float(self.model.scene_radius):
            return True
        confidence = features.category_logits.softmax(-1).amax(-1).mean()
        return bool(confidence < KNOWN_CONFIDENCE)

    @staticmethod
    def _prompts_meet_objects(features: ImageFeatures, prompts: torch.Tensor) -> bool:
        """Whether an object lies under an include click or mostly inside the box (prompt rows [P, 3])."""
        if features.tokens.shape[0] == 0:
            return False
        evidence = prompt_evidence(features.masks, prompts)
        return bool((evidence[:, 0] > 0).any() or (evidence[:, 4] >= BOX_SHARE).any())

    @staticmethod
    def _notes(features: ImageFeatures, query: Query, frame: Frame) -> list[str]:
        """Notes on include clicks that fall on no object."""
        side = features.masks.shape[-1]
        notes = []
        for x, y, label in query.points:
            mx, my = frame.to_model(x, y)
            pixel = min(side - 1, int(my * side)), min(side - 1, int(mx * side))
            if label == 1 and not features.masks[:, pixel[0], pixel[1]].any():
                notes.append(f"no item under the click at ({x:g}, {y:g}); click on an item to select it")
        return notes
