"""A classical interactive segmenter for any photo: OpenCV's GrabCut seeded by the clicks and the box.

GrabCut fits two colour mixtures (object, background) and cuts the image graph between them. Seeds: a box makes
everything outside it background and its inside "probably object"; include clicks are object for sure (a small
disc) and, without a box, make a disc around them "probably object" with the rest of the image "probably
background"; exclude clicks are background for sure. The image is worked on at most WORK_SIDE pixels a side.
Three candidates come from three sizes of that prior region (or three box margins), each kept only where it is
connected to an include click (with a box: inside the box). Each is scored by how well its colours separate from
the rest of the prior region (1 − the Bhattacharyya coefficient of the two colour histograms).
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image
from scipy import ndimage

from backends.core.service import ServiceError
from backends.segmentation.query import Prediction, Query

CLASSICAL_ID = "grabcut"
WORK_SIDE = 256
ITERATIONS = 3
CLICK_PRIORS = (0.12, 0.2, 0.3)  # radius of the "probably object" disc around include clicks, share of the short side
BOX_SHRINK = (0.0, 0.04, 0.08)  # without clicks: the box shrunk by this share of its size on each side
SEED_RADIUS = 0.012  # radius of the sure object/background disc at a click, share of the short side
HISTOGRAM_BINS = 8
SOFT_EDGE_SIGMA = 1.0  # the binary cut is blurred by this many pixels so that a threshold still trims outlines


def _disc(shape: tuple[int, int], x: float, y: float, radius: float) -> np.ndarray:
    yy, xx = np.ogrid[:shape[0], :shape[1]]
    return (xx - x) ** 2 + (yy - y) ** 2 <= radius ** 2


def separation(pixels: np.ndarray, mask: np.ndarray, region: np.ndarray) -> float:
    """1 − Bhattacharyya coefficient between the colour histograms of ``mask`` and of ``region`` outside it."""
    inside, outside = mask, region & ~mask
    if not inside.any() or not outside.any():
        return 0.0
    bins = (pixels // (256 // HISTOGRAM_BINS)).reshape(-1, 3).astype(np.int64)
    codes = bins[:, 0] * HISTOGRAM_BINS ** 2 + bins[:, 1] * HISTOGRAM_BINS + bins[:, 2]
    size = HISTOGRAM_BINS ** 3
    first = np.bincount(codes[inside.ravel()], minlength=size) / inside.sum()
    second = np.bincount(codes[outside.ravel()], minlength=size) / outside.sum()
    return float(1.0 - np.sqrt(first * second).sum())


class ClassicalSegmenter:
    """GrabCut from clicks and/or a box; it does not read text."""

    name = CLASSICAL_ID

    def predict(self, query: Query) -> Prediction:
        """Three candidate maps at the image's size, scored by colour separation (see the module docstring)."""
        includes = [(x, y) for x, y, label in query.points if label == 1]
        if not includes and query.box is None:
            raise ServiceError("The classical segmenter needs an include click or a box.")
        width, height = query.image.size
        factor = min(1.0, WORK_SIDE / max(width, height))
        small = query.image.resize((max(1, round(width * factor)), max(1, round(height * factor))), Image.BILINEAR)
        pixels = np.ascontiguousarray(np.asarray(small, np.uint8))
        scaled = [(x * factor, y * factor, label) for x, y, label in query.points]
        box = tuple(v * factor for v in query.box) if query.box is not None else None
        variants = CLICK_PRIORS if includes or box is None else BOX_SHRINK
        maps, scores = [], []
        for variant in variants:
            seeds, region = self._seeds(pixels.shape[:2], scaled, box, variant, bool(includes))
            cut = self._cut(pixels, seeds, scaled, box)
            scores.append(separation(pixels, cut, region))
            soft = ndimage.gaussian_filter(cut.astype(np.float32), SOFT_EDGE_SIGMA * factor)
            full = np.asarray(Image.fromarray((soft * 255).astype(np.uint8)).resize((width, height), Image.BILINEAR))
            maps.append(full.astype(np.float32) / 255)
        return Prediction(np.stack(maps), scores, {"answered_by": CLASSICAL_ID})

    @staticmethod
    def _seeds(shape: tuple[int, int], points: list, box: tuple | None, variant: float, clicks: bool
               ) -> tuple[np.ndarray, np.ndarray]:
        """GrabCut's seed labels and the prior region (where the object may be) for one variant."""
        short = min(shape)
        if box is not None:
            x0, y0, x1, y1 = (int(round(v)) for v in box)
            shrink_x, shrink_y = 0 if clicks else int((x1 - x0) * variant), 0 if clicks else int((y1 - y0) * variant)
            seeds = np.full(shape, cv2.GC_BGD, np.uint8)
            seeds[y0 + shrink_y:max(y0 + shrink_y + 1, y1 - shrink_y), x0 + shrink_x:max(x0 + shrink_x + 1,
                                                                                         x1 - shrink_x)] = cv2.GC_PR_FGD
            region = np.zeros(shape, bool)
            region[y0:y1, x0:x1] = True
        else:
            seeds = np.full(shape, cv2.GC_PR_BGD, np.uint8)
            region = np.ones(shape, bool)
        for x, y, label in points:
            if label == 1 and box is None:
                seeds[_disc(shape, x, y, variant * short) & (seeds == cv2.GC_PR_BGD)] = cv2.GC_PR_FGD
        for x, y, label in points:
            seeds[_disc(shape, x, y, max(1.0, SEED_RADIUS * short))] = cv2.GC_FGD if label == 1 else cv2.GC_BGD
        return seeds, region

    @staticmethod
    def _cut(pixels: np.ndarray, seeds: np.ndarray, points: list, box: tuple | None) -> np.ndarray:
        """GrabCut's object mask, kept where it connects to an include click (or, with a box and no include
        click, every part inside the box)."""
        labels = seeds.copy()
        if (labels == cv2.GC_PR_FGD).any() or (labels == cv2.GC_FGD).any():
            background, foreground = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
            cv2.grabCut(pixels[..., ::-1].copy(), labels, None, background, foreground, ITERATIONS,
                        cv2.GC_INIT_WITH_MASK)
        cut = (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)
        includes = [(x, y) for x, y, label in points if label == 1]
        if not includes:
            return cut
        components, _ = ndimage.label(cut)
        keep = {int(components[min(pixels.shape[0] - 1, int(y)), min(pixels.shape[1] - 1, int(x))])
                for x, y in includes} - {0}
        return np.isin(components, list(keep))
