"""Turning whatever image the user gives into float RGB in [0, 1], with notes on every conversion."""

from __future__ import annotations

import numpy as np
from PIL import Image

from backends.core.service import ServiceError

MIN_SIDE = 16
MAX_SIDE = 2048
MAX_PIXELS_ACCEPTED = 100_000_000  # beyond this even decoding is refused


def prepare_image(image: Image.Image | None, what: str = "image") -> tuple[np.ndarray, list[str]]:
    """RGB float32 H×W×3 in [0, 1] from any PIL image (grayscale, RGBA, 16-bit, float, palette), downscaled to
    MAX_SIDE if larger, plus notes on what was changed. Raises ServiceError for a missing, non-image or tiny one."""
    if image is None:
        raise ServiceError(f"Please upload an {what} or pick an example.")
    if not isinstance(image, Image.Image):
        raise ServiceError(f"The {what} could not be read as a picture (got {type(image).__name__}).")
    width, height = image.size
    if width * height > MAX_PIXELS_ACCEPTED:
        raise ServiceError(f"The {what} is far too large ({width}×{height}); give one under 100 megapixels.")
    if min(width, height) < MIN_SIDE:
        raise ServiceError(f"The {what} is too small ({width}×{height}); give one at least {MIN_SIDE} px a side.")
    notes = []
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, np.float32)
        if image.mode == "F":
            scale = 1.0 if values.max() <= 1.0 else float(values.max())
        else:
            scale = 65535.0 if values.max() > 255 else 255.0
        notes.append(f"{image.mode} image scaled to [0, 1] (divided by {scale:g}) and converted to RGB")
        array = np.repeat(np.clip(values / scale, 0, 1)[..., None], 3, axis=-1)
    else:
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            background = Image.new("RGBA", image.size, (255, 255, 255, 255))
            image = Image.alpha_composite(background, image.convert("RGBA"))
            notes.append("transparent parts were put on white")
        elif image.mode in ("L", "1"):
            notes.append("grayscale image converted to RGB")
        elif image.mode not in ("RGB", "P"):
            notes.append(f"{image.mode} image converted to RGB")
        array = np.asarray(image.convert("RGB"), np.float32) / 255.0
    if max(width, height) > MAX_SIDE:
        scale = MAX_SIDE / max(width, height)
        size = (max(MIN_SIDE, round(width * scale)), max(MIN_SIDE, round(height * scale)))
        resized = Image.fromarray((array * 255).round().astype(np.uint8)).resize(size, Image.LANCZOS)
        array = np.asarray(resized, np.float32) / 255.0
        notes.append(f"downscaled from {width}×{height} to {size[0]}×{size[1]} (larger images are processed in tiles "
                     f"up to {MAX_SIDE} px a side)")
    return np.ascontiguousarray(array), notes


def to_pil(array: np.ndarray) -> Image.Image:
    """Float H×W×3 in [0, 1] → 8-bit RGB PIL image."""
    return Image.fromarray((np.clip(array, 0, 1) * 255).round().astype(np.uint8))
