"""A held-out evaluation set drawn in a style the training generator never produces (never used in training).

The same item categories, colours and query wordings as the generator, but drawn by other hand-coded rules:
checkerboard, polka-dot and radial-vignette backgrounds; items as flat cartoon fills with a dark outline, as flat
fills with a drop shadow (the shadow is not part of the item), as blocky pixel art (drawn at a third of the size
and enlarged without smoothing) or as plain flat fills; and, for some scenes, the whole picture blurred or
JPEG-compressed. Items are Fashion-MNIST *test* images and the shapes, 20–56 px on 128 px scenes.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFilter
from scipy import ndimage

from backends.segmentation.data import (
    CATEGORIES,
    COLOUR_KEYS,
    COLOURS,
    IMAGE_SIZE,
    TEXT_QUERIES,
    Item,
    Sample,
    class_index,
    fashion_items,
    render_item,
    scene_samples,
)

ITEM_STYLES = ("outline", "shadow", "pixel", "flat")
SIDES = (20, 57)
GAP = 5
SEED = 31_337  # first element of every scene's seed sequence, unlike any generator seed


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A checkerboard, polka dots or a radial vignette between two random colours, as float32 [S, S, 3]."""
    first, second = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    second = first + (second - first) * rng.uniform(0.15, 0.5)  # modest contrast
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    style = int(rng.integers(3))
    if style == 0:
        cell = int(rng.integers(6, 25))
        t = ((yy // cell + xx // cell) % 2).astype(np.float32)
    elif style == 1:
        spacing, radius = int(rng.integers(10, 22)), rng.uniform(1.5, 4.0)
        t = (np.hypot(yy % spacing - spacing / 2, xx % spacing - spacing / 2) < radius).astype(np.float32)
    else:
        cy, cx = rng.uniform(0.2, 0.8, 2) * size
        t = np.clip(np.hypot(yy - cy, xx - cx) / size, 0, 1)
    return (first + (second - first) * t[..., None]).astype(np.float32)


def _draw_item(rng: np.random.Generator, category: int, side: int, style: str) -> tuple[np.ndarray, np.ndarray]:
    """Shading [s, s] in [0, 1] and mask [s, s] of an item in ``style``: cartoon styles are flat fills (the outline
    dark), the shadow style keeps the item's shading, pixel art keeps it at a third of the resolution."""
    images, _ = fashion_items("test")
    by_class = class_index("test")
    if style == "pixel":
        small_shade, small_mask = render_item(category, max(6, side // 3), images, by_class, rng)
        enlarge = lambda a: np.asarray(Image.fromarray(a).resize((side, side), Image.NEAREST))  # noqa: E731
        return enlarge(small_shade), enlarge(small_mask.astype(np.uint8)) > 0
    shade, mask = render_item(category, side, images, by_class, rng)
    if style in ("outline", "flat"):
        shade = np.ones_like(shade)
    if style == "outline":
        shade[mask & ~ndimage.binary_erosion(mask, iterations=2)] = 0.3
    return shade, mask


def _contrasting_colour(rng: np.random.Generator, behind: np.ndarray) -> str:
    """A palette colour that stands out from the mean colour ``behind`` the item (the first of 8 tries that does)."""
    for _ in range(8):
        colour = COLOUR_KEYS[int(rng.integers(len(COLOUR_KEYS)))]
        if np.linalg.norm(np.array(COLOURS[colour][0]) - behind) > 90:
            break
    return colour


def out_of_style_scene(rng: np.random.Generator, size: int = IMAGE_SIZE) -> tuple[np.ndarray, list[Item]]:
    """One scene of 1–5 items drawn by the rules above."""
    canvas = _background(rng, size)
    occupied = np.zeros((size, size), bool)
    items: list[Item] = []
    for _ in range(int(rng.integers(1, 6))):
        category = int(rng.integers(len(CATEGORIES)))
        style = ITEM_STYLES[int(rng.integers(len(ITEM_STYLES)))]
        side = int(rng.integers(*SIDES) * size / IMAGE_SIZE)
        x0, y0 = (int(v) for v in rng.integers(1, size - side - 4, 2))
        if occupied[max(0, y0 - GAP):y0 + side + GAP + 4, max(0, x0 - GAP):x0 + side + GAP + 4].any():
            continue
        shade, local = _draw_item(rng, category, side, style)
        if not local.any():
            continue
        full = np.zeros((size, size), bool)
        full[y0:y0 + side, x0:x0 + side] = local
        colour = _contrasting_colour(rng, canvas[full].mean(0))
        rgb = np.clip(np.array(COLOURS[colour][0], np.float32) + rng.normal(0, 10, 3), 0, 255)
        if style == "shadow":
            shadow = np.zeros((size, size), bool)
            shadow[y0 + 3:y0 + side + 3, x0 + 3:x0 + side + 3] = local
            canvas[shadow] *= 0.45
        canvas[full] = shade[local, None] * rgb
        occupied |= ndimage.binary_dilation(full, iterations=3)
        ys, xs = np.nonzero(local)
        box = (x0 + int(xs.min()), y0 + int(ys.min()), x0 + int(xs.max()) + 1, y0 + int(ys.max()) + 1)
        items.append(Item(category, colour, "medium", box, full))
    if not items:
        return out_of_style_scene(rng, size)
    picture = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    if rng.random() < 0.4:
        picture = picture.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.0)))
    if rng.random() < 0.4:
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG", quality=int(rng.integers(25, 50)))
        picture = Image.open(buffer).convert("RGB")
    return np.asarray(picture, np.uint8).copy(), items


def out_of_style_samples(count: int, kinds: tuple[str, ...] = tuple(TEXT_QUERIES)) -> list[Sample]:
    """``count`` deterministic samples (one query per scene; text queries unless ``kinds`` says otherwise)."""
    samples = []
    for index in range(count):
        rng = np.random.default_rng([SEED, index])
        image, items = out_of_style_scene(rng)
        samples += scene_samples(image, items, rng, 1, kinds=kinds)
    return samples
