"""Restoring one region of an image: a binary mask (from a box, a mask image or a segmentation) feathered into a
smooth weight, the restoration run on the region's bounding box only, and blended back into the input."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage.metrics import structural_similarity

from backends.core.service import ServiceError

FEATHER_FRACTION = 0.01  # Gaussian feather σ as a share of the image's shorter side
MIN_FEATHER = 2.0  # px
CONTEXT = 32  # px of context around the region's box that the restorer sees
MIN_AREA = 16  # px: smaller regions are refused


@dataclass(frozen=True)
class Region:
    """Where to restore: the binary mask (H×W bool), its feathered blending weight (H×W float in [0, 1]), where it
    came from and the feather σ in pixels."""

    mask: np.ndarray
    weight: np.ndarray
    source: str
    feather: float

    @classmethod
    def from_mask(cls, mask: np.ndarray, source: str) -> Region:
        """A region from a binary mask; raises ServiceError when the mask is (nearly) empty or covers nothing."""
        mask = np.asarray(mask, bool)
        if int(mask.sum()) < MIN_AREA:
            raise ServiceError(f"The region from the {source} is empty (under {MIN_AREA} px); give a larger box, a "
                               "mask with white where to restore, or name something visible in the image.")
        feather = max(MIN_FEATHER, FEATHER_FRACTION * min(mask.shape))
        weight = ndimage.gaussian_filter(mask.astype(np.float32), sigma=feather, mode="nearest")
        return cls(mask=mask, weight=np.clip(weight, 0, 1), source=source, feather=feather)

    @classmethod
    def from_box(cls, box: tuple[float, float, float, float], height: int, width: int) -> Region:
        """A region from a box (x0, y0, x1, y1) in pixels of the image as restored."""
        x0, y0, x1, y1 = (round(value) for value in box)
        mask = np.zeros((height, width), bool)
        mask[max(0, y0):min(height, y1), max(0, x0):min(width, x1)] = True
        return cls.from_mask(mask, "box")

    @classmethod
    def from_mask_image(cls, image: Image.Image, height: int, width: int, original_size: tuple[int, int]) -> Region:
        """A region from a mask image the size of the uploaded image (white or opaque = restore), resized to the
        image as restored when that was downscaled."""
        if image.size != original_size:
            raise ServiceError(f"The region mask ({image.size[0]}×{image.size[1]}) must have the size of the image "
                               f"({original_size[0]}×{original_size[1]}).")
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            gray = image.convert("RGBA").getchannel("A")
        else:
            gray = image.convert("L")
        if gray.size != (width, height):
            gray = gray.resize((width, height), Image.BILINEAR)
        return cls.from_mask(np.asarray(gray) >= 128, "mask image")

    def bounds(self) -> tuple[int, int, int, int]:
        """Rows and columns (top, bottom, left, right) of the region's box grown by the feather and some context."""
        rows, cols = np.flatnonzero(self.mask.any(axis=1)), np.flatnonzero(self.mask.any(axis=0))
        grow = CONTEXT + int(np.ceil(3 * self.feather))
        height, width = self.mask.shape
        return (max(0, rows[0] - grow), min(height, rows[-1] + 1 + grow),
                max(0, cols[0] - grow), min(width, cols[-1] + 1 + grow))

    def apply(self, image: np.ndarray, restore: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """``restore`` (H×W×3 → H×W×3) run on the region's grown box only, blended into ``image`` by the weight."""
        top, bottom, left, right = self.bounds()
        output = image.astype(np.float64)
        restored = restore(image[top:bottom, left:right])
        weight = self.weight[top:bottom, left:right, None]
        output[top:bottom, left:right] = weight * restored + (1 - weight) * output[top:bottom, left:right]
        return output

    def summary(self) -> dict:
        """JSON: source, share of the image, box [x0, y0, x1, y1] and feather σ in pixels."""
        rows, cols = np.flatnonzero(self.mask.any(axis=1)), np.flatnonzero(self.mask.any(axis=0))
        return {"source": self.source, "area": round(float(self.mask.mean()), 4),
                "box": [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1],
                "feather_px": round(self.feather, 1)}

    def overlay(self, image: np.ndarray) -> np.ndarray:
        """The image with everything outside the region dimmed and the region's outline drawn."""
        weight = self.weight[..., None]
        shown = image * (0.35 + 0.65 * weight)
        outline = self.mask ^ ndimage.binary_erosion(self.mask, iterations=max(1, min(self.mask.shape) // 200))
        shown[outline] = (1.0, 0.85, 0.0)
        return shown


def masked_psnr_ssim(reference: np.ndarray, image: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """RGB PSNR (dB, +inf when identical there) and mean SSIM over the pixels where ``mask`` is true."""
    error = float(np.mean((reference[mask] - image[mask]) ** 2))
    psnr = float("inf") if error == 0 else float(10 * np.log10(1.0 / error))
    _, ssim_map = structural_similarity(reference, image, data_range=1.0, channel_axis=-1, full=True)
    return psnr, float(ssim_map.mean(axis=-1)[mask].mean())
