"""Mask exports (PNG, COCO run-length encoding) and the overlay picture with contours and boxes."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from backends.segmentation.tasks import Detection

OVERLAY_RGB = np.array([30, 144, 255], np.float32)
CONTOUR_RGB = (255, 255, 0)
BOX_RGB = (255, 64, 64)


def encode_rle(mask: np.ndarray) -> dict:
    """COCO's compressed RLE of a binary mask (column-major run lengths as pycocotools' string form)."""
    flat = np.asarray(mask, bool).flatten(order="F")
    changes = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        runs = [0, *runs]  # counts start with a run of zeros
    chars = []
    for i, run in enumerate(runs):
        value = run - runs[i - 2] if i > 2 else run
        more = True
        while more:
            c = value & 0x1F
            value >>= 5
            more = value != -1 if c & 0x10 else value != 0
            if more:
                c |= 0x20
            chars.append(chr(c + 48))
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": "".join(chars)}


def decode_rle(rle: dict) -> np.ndarray:
    """Inverse of :func:`encode_rle`."""
    height, width = rle["size"]
    runs: list[int] = []
    text, i = rle["counts"], 0
    while i < len(text):
        value, shift, more = 0, 0, True
        while more:
            c = ord(text[i]) - 48
            value |= (c & 0x1F) << (5 * shift)
            more = bool(c & 0x20)
            i += 1
            shift += 1
            if not more and c & 0x10:
                value |= -1 << (5 * shift)
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    flat = np.zeros(height * width, bool)
    position = 0
    for j, run in enumerate(runs):
        if j % 2:
            flat[position:position + run] = True
        position += run
    return flat.reshape((height, width), order="F")


def mask_image(mask: np.ndarray) -> Image.Image:
    """The binary mask as a black/white PNG-ready image."""
    return Image.fromarray(np.asarray(mask, bool).astype(np.uint8) * 255, mode="L")


def overlay(image: Image.Image, mask: np.ndarray, detections: list[Detection],
            points: list[tuple[float, float, int]], box: tuple[float, float, float, float] | None) -> Image.Image:
    """``image`` with the mask tinted, its contour outlined, detection boxes, clicks (green +, red −) and the box."""
    rgb = np.asarray(image.convert("RGB"), np.float32).copy()
    mask = np.asarray(mask, bool)
    rgb[mask] = 0.55 * rgb[mask] + 0.45 * OVERLAY_RGB
    edge = mask & ~ndimage.binary_erosion(mask, iterations=max(1, min(image.size) // 256))
    rgb[edge] = CONTOUR_RGB
    picture = Image.fromarray(rgb.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    width = max(1, min(image.size) // 200)
    for det in detections:
        draw.rectangle([det.box[0], det.box[1], det.box[2] - 1, det.box[3] - 1], outline=BOX_RGB, width=width)
    if box is not None:
        draw.rectangle(list(box), outline=(255, 255, 255), width=width)
    radius = max(3, min(image.size) // 60)
    for x, y, label in points:
        colour = (0, 220, 0) if label == 1 else (230, 0, 0)
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour, outline=(255, 255, 255))
    return picture
