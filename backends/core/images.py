"""Turning whatever image a user gives into float RGB in [0, 1], the same way and with the same limits in every panel,
with notes on every conversion."""

from __future__ import annotations

import io
from typing import NamedTuple

import numpy as np
from PIL import Image

from backends.core.service import ServiceError

MIN_SIDE = 16  # smallest side accepted, before and after downscaling
MAX_SIDE = 2048  # larger images are downscaled to this longest side
MAX_PIXELS_ACCEPTED = 100_000_000  # beyond this even decoding is refused


class PreparedImage(NamedTuple):
    """An image as the models see it: RGB float32 H×W×3 in [0, 1], the downscaling factor (1.0 when none) and notes
    on what was changed."""

    pixels: np.ndarray
    scale: float
    notes: list[str]


def prepare_image(image: Image.Image | None, what: str = "image") -> PreparedImage:
    """Any PIL image (grayscale, RGBA, 16-bit, float, palette) as RGB floats, downscaled to MAX_SIDE if larger (same
    factor on both axes). Raises ServiceError for a missing, non-image, huge, tiny or too elongated one."""
    if image is None:
        raise ServiceError(f"Please upload an {what} or pick an example.")
    if not isinstance(image, Image.Image):
        raise ServiceError(f"The {what} could not be read as a picture (got {type(image).__name__}).")
    width, height = image.size
    if width * height > MAX_PIXELS_ACCEPTED:
        raise ServiceError(f"The {what} is far too large ({width}×{height}); give one under 100 megapixels.")
    if min(width, height) < MIN_SIDE:
        raise ServiceError(f"The {what} is too small ({width}×{height}); give one at least {MIN_SIDE} px a side.")
    scale = min(1.0, MAX_SIDE / max(width, height))
    size = (round(width * scale), round(height * scale))
    if min(size) < MIN_SIDE:
        raise ServiceError(f"The {what} is too elongated ({width}×{height}): downscaled to {MAX_SIDE} px on its long "
                           f"side it would be {size[0]}×{size[1]}, under {MIN_SIDE} px; crop it first.")
    notes = []
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, np.float32)
        if image.mode == "F":
            divisor = 1.0 if values.max() <= 1.0 else float(values.max())
        else:
            divisor = 65535.0 if values.max() > 255 else 255.0
        notes.append(f"{image.mode} image scaled to [0, 1] (divided by {divisor:g}) and converted to RGB")
        array = np.repeat(np.clip(values / divisor, 0, 1)[..., None], 3, axis=-1)
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
    if scale < 1.0:
        array = np.asarray(to_pil(array).resize(size, Image.LANCZOS), np.float32) / 255.0
        notes.append(f"{what} downscaled from {width}×{height} to {size[0]}×{size[1]} (scale {scale:.4f}); sizes "
                     "and coordinates in the answer refer to the downscaled image")
    return PreparedImage(np.ascontiguousarray(array), scale, notes)


def to_pil(array: np.ndarray) -> Image.Image:
    """Float H×W×3 in [0, 1] → 8-bit RGB PIL image."""
    return Image.fromarray((np.clip(array, 0, 1) * 255).round().astype(np.uint8))


def jpeg_roundtrip(picture: Image.Image, quality: int) -> Image.Image:
    """``picture`` saved as JPEG at ``quality`` and decoded again (RGB)."""
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=quality)
    return Image.open(buffer).convert("RGB")


def resample_through(picture: Image.Image, side: int) -> Image.Image:
    """``picture`` shrunk to ``side``×``side`` and enlarged back to its size, both bilinear."""
    return picture.resize((side, side), Image.BILINEAR).resize(picture.size, Image.BILINEAR)
