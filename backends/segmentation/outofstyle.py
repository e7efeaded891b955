"""Held-out evaluation sets drawn in styles the training generator never produces (never used in training).

The same item categories, colours and query wordings as the generator, but drawn by other hand-coded rules.
*Cartoon* scenes: checkerboard, polka-dot and radial-vignette backgrounds; items as flat cartoon fills with a dark
outline, as flat fills with a drop shadow (the shadow is not part of the item), as blocky pixel art (drawn at a third
of the size and enlarged without smoothing) or as plain flat fills; and, for some scenes, the whole picture blurred or
JPEG-compressed. *Engraved* scenes: concentric-ring, fine-hatching and two-tone split backgrounds; items as their
silhouette filled with a colour gradient, with diagonal hatching over a pale tint or embossed (lit and dark rims);
the whole picture under a gamma of 0.6–1.6 and a slight colour cast. *Collage* scenes: marbled colour noise,
warped wood-grain and brick-wall backgrounds; items cut from plaid cloth, in two tones split along a line, printed
with coarse speckle or glowing (a halo of their colour around them, not part of the item); the whole picture
resampled through a smaller size or under pixel noise. Items are Fashion-MNIST *test* images and the
shapes, 20–56 px on 128 px scenes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter
from scipy import ndimage

from backends.core.images import jpeg_roundtrip, resample_through
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


Pattern = Callable[[np.random.Generator, np.ndarray, np.ndarray, int], np.ndarray]


def _two_colour_background(rng: np.random.Generator, size: int, contrast: tuple[float, float],
                           patterns: tuple[Pattern, ...]) -> np.ndarray:
    """Two random colours (the second ``contrast`` of the way towards another) mixed by one of ``patterns``:
    ``pattern(rng, yy, xx, size)`` gives the mix [S, S] in [0, 1]; float32 [S, S, 3]."""
    first, second = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    second = first + (second - first) * rng.uniform(*contrast)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    t = patterns[int(rng.integers(len(patterns)))](rng, yy, xx, size)
    return (first + (second - first) * t[..., None]).astype(np.float32)


def _checkerboard(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, size: int) -> np.ndarray:
    cell = int(rng.integers(6, 25))
    return ((yy // cell + xx // cell) % 2).astype(np.float32)


def _polka_dots(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, size: int) -> np.ndarray:
    spacing, radius = int(rng.integers(10, 22)), rng.uniform(1.5, 4.0)
    return (np.hypot(yy % spacing - spacing / 2, xx % spacing - spacing / 2) < radius).astype(np.float32)


def _vignette(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, size: int) -> np.ndarray:
    cy, cx = rng.uniform(0.2, 0.8, 2) * size
    return np.clip(np.hypot(yy - cy, xx - cx) / size, 0, 1)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A checkerboard, polka dots or a radial vignette between two random colours of modest contrast."""
    return _two_colour_background(rng, size, (0.15, 0.5), (_checkerboard, _polka_dots, _vignette))


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


Painter = Callable[[np.random.Generator, np.ndarray, int, int, int, int, int], tuple[np.ndarray, str] | None]


def _compose(rng: np.random.Generator, size: int, background: Callable[[np.random.Generator, int], np.ndarray],
             paint: Painter, variants: int, finish: Callable[[np.random.Generator, Image.Image], Image.Image]
             ) -> tuple[np.ndarray, list[Item]]:
    """1–5 items placed apart on ``background``: ``paint(rng, canvas, category, variant, side, x0, y0)`` draws
    one item (``variant`` < ``variants`` picks its drawing style) into the canvas and returns its mask [s, s] and
    colour (None: nothing drawn); ``finish`` treats the whole picture."""
    canvas = background(rng, size)
    occupied = np.zeros((size, size), bool)
    items: list[Item] = []
    for _ in range(int(rng.integers(1, 6))):
        category = int(rng.integers(len(CATEGORIES)))
        variant = int(rng.integers(variants))
        side = int(rng.integers(*SIDES) * size / IMAGE_SIZE)
        x0, y0 = (int(v) for v in rng.integers(1, size - side - 4, 2))
        if occupied[max(0, y0 - GAP):y0 + side + GAP + 4, max(0, x0 - GAP):x0 + side + GAP + 4].any():
            continue
        drawn = paint(rng, canvas, category, variant, side, x0, y0)
        if drawn is None:
            continue
        local, colour = drawn
        full = np.zeros((size, size), bool)
        full[y0:y0 + side, x0:x0 + side] = local
        occupied |= ndimage.binary_dilation(full, iterations=3)
        ys, xs = np.nonzero(local)
        box = (x0 + int(xs.min()), y0 + int(ys.min()), x0 + int(xs.max()) + 1, y0 + int(ys.max()) + 1)
        items.append(Item(category, colour, "medium", box, full))
    if not items:
        return _compose(rng, size, background, paint, variants, finish)
    picture = finish(rng, Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8)))
    return np.asarray(picture, np.uint8).copy(), items


def _paint_cartoon(rng: np.random.Generator, canvas: np.ndarray, category: int, variant: int, side: int, x0: int,
                   y0: int) -> tuple[np.ndarray, str] | None:
    """An item as a cartoon fill with an outline, with a drop shadow, as pixel art or as a flat fill."""
    style = ITEM_STYLES[variant]
    shade, local = _draw_item(rng, category, side, style)
    if not local.any():
        return None
    window = canvas[y0:y0 + side, x0:x0 + side]
    colour = _contrasting_colour(rng, window[local].mean(0))
    rgb = np.clip(np.array(COLOURS[colour][0], np.float32) + rng.normal(0, 10, 3), 0, 255)
    if style == "shadow":
        canvas[y0 + 3:y0 + side + 3, x0 + 3:x0 + side + 3][local] *= 0.45
    window[local] = shade[local, None] * rgb
    return local, colour


def _blur_or_jpeg(rng: np.random.Generator, picture: Image.Image) -> Image.Image:
    """The picture blurred and/or JPEG-compressed, each for 40 % of the scenes."""
    if rng.random() < 0.4:
        picture = picture.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.0)))
    if rng.random() < 0.4:
        picture = jpeg_roundtrip(picture, int(rng.integers(25, 50)))
    return picture


def out_of_style_scene(rng: np.random.Generator, size: int = IMAGE_SIZE) -> tuple[np.ndarray, list[Item]]:
    """One cartoon-style scene (see the module docstring)."""
    return _compose(rng, size, _background, _paint_cartoon, len(ITEM_STYLES), _blur_or_jpeg)


def _rings(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, size: int) -> np.ndarray:
    cy, cx = rng.uniform(0, 1, 2) * size
    return (np.hypot(yy - cy, xx - cx) // rng.uniform(4, 12) % 2).astype(np.float32)


def _hatching(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, size: int) -> np.ndarray:
    period = rng.uniform(3, 7)
    return ((xx + yy * rng.choice([-1, 1])) % period < 1.2).astype(np.float32)


def _split(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, size: int) -> np.ndarray:
    angle = rng.uniform(0, np.pi)
    return (np.cos(angle) * (xx - size / 2) + np.sin(angle) * (yy - size / 2) > 0).astype(np.float32)


def _engraved_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Concentric rings, fine diagonal hatching or two tones split along a random line."""
    return _two_colour_background(rng, size, (0.2, 0.6), (_rings, _hatching, _split))


def _flat_item(rng: np.random.Generator, canvas: np.ndarray, category: int, side: int, x0: int, y0: int
               ) -> tuple[np.ndarray, np.ndarray, str, np.ndarray] | None:
    """An item's silhouette at (x0, y0): its mask [s, s], the canvas window under it, a palette colour that stands
    out there and that colour's RGB (None: an empty silhouette)."""
    _, local = _draw_item(rng, category, side, "flat")
    if not local.any():
        return None
    window = canvas[y0:y0 + side, x0:x0 + side]
    colour = _contrasting_colour(rng, window[local].mean(0))
    return local, window, colour, np.array(COLOURS[colour][0], np.float32)


def _paint_engraved(rng: np.random.Generator, canvas: np.ndarray, category: int, variant: int, side: int, x0: int,
                    y0: int) -> tuple[np.ndarray, str] | None:
    """An item's silhouette filled with its colour as a linear gradient to a darker tone, as diagonal hatching
    over a pale tint, or embossed (a lit upper-left rim and a dark lower-right rim)."""
    item = _flat_item(rng, canvas, category, side, x0, y0)
    if item is None:
        return None
    local, window, colour, rgb = item
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    if variant == 0:
        angle = rng.uniform(0, 2 * np.pi)
        t = np.clip(0.5 + (np.cos(angle) * (xx - 0.5) + np.sin(angle) * (yy - 0.5)), 0, 1)
        paint = rgb * (1 - 0.45 * t[..., None])
    elif variant == 1:
        stripes = ((xx - yy) * side % rng.uniform(3, 6) < 1.5)[..., None]
        paint = np.where(stripes, rgb * 0.7, 0.55 * rgb + 0.45 * 255)
    else:
        inner = ndimage.binary_erosion(local, iterations=2)
        lit = local & ~ndimage.shift(inner, (2, 2), order=0)
        dark = local & ~ndimage.shift(inner, (-2, -2), order=0)
        paint = np.broadcast_to(rgb, (side, side, 3)).copy()
        paint[lit] = np.minimum(rgb * 1.3 + 30, 255)
        paint[dark & ~lit] = rgb * 0.5
    window[local] = paint[local]
    return local, colour


def _gamma(rng: np.random.Generator, picture: Image.Image) -> Image.Image:
    """The picture with a gamma between 0.6 and 1.6 and a slight colour cast."""
    pixels = np.asarray(picture, np.float32) / 255
    cast = rng.uniform(0.9, 1.1, 3)
    return Image.fromarray(np.clip(255 * pixels ** rng.uniform(0.6, 1.6) * cast, 0, 255).astype(np.uint8))


def engraved_scene(rng: np.random.Generator, size: int = IMAGE_SIZE) -> tuple[np.ndarray, list[Item]]:
    """One engraved-style scene (see the module docstring)."""
    return _compose(rng, size, _engraved_background, _paint_engraved, 3, _gamma)


def _marble(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, size: int) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.normal(size=(size, size)), rng.uniform(4, 12))
    return (field - field.min()) / (np.ptp(field) + 1e-6)


def _wood_grain(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, size: int) -> np.ndarray:
    warp = ndimage.gaussian_filter(rng.normal(size=(size, size)), 10) * 400
    return 0.5 + 0.5 * np.sin((yy + warp) / rng.uniform(2, 5))


def _bricks(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, size: int) -> np.ndarray:
    height, width = int(rng.integers(8, 16)), int(rng.integers(16, 32))
    row = yy // height
    return ((yy % height < 2) | ((xx + (row % 2) * width / 2) % width < 2)).astype(np.float32)


def _collage_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Marbled colour noise, warped wood grain or a brick wall with light mortar lines."""
    return _two_colour_background(rng, size, (0.2, 0.6), (_marble, _wood_grain, _bricks))


def _paint_collage(rng: np.random.Generator, canvas: np.ndarray, category: int, variant: int, side: int, x0: int,
                   y0: int) -> tuple[np.ndarray, str] | None:
    """An item's silhouette cut from plaid cloth, in two tones split along a random line (one a lighter tint),
    printed with coarse speckle, or glowing (a blurred halo of its colour around it, not part of the item)."""
    item = _flat_item(rng, canvas, category, side, x0, y0)
    if item is None:
        return None
    local, window, colour, rgb = item
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    if variant == 0:
        period = rng.uniform(4, 9)
        weave = 0.5 * ((xx % period < period / 3).astype(np.float32) + (yy % period < period / 3))
        paint = rgb * (1 - 0.3 * weave[..., None])
    elif variant == 1:
        angle = rng.uniform(0, 2 * np.pi)
        lighter = np.cos(angle) * (xx - side / 2) + np.sin(angle) * (yy - side / 2) > 0
        paint = np.where(lighter[..., None], 0.75 * rgb + 0.25 * 255, rgb)
    elif variant == 2:
        paint = rgb + rng.normal(0, 28, (side, side, 1))
    else:
        halo = ndimage.gaussian_filter(local.astype(np.float32), 2.5)[..., None] * 0.8
        window[:] = window * (1 - halo) + rgb * halo
        paint = np.broadcast_to(rgb, (side, side, 3))
    window[local] = paint[local]
    return local, colour


def _resample_or_noise(rng: np.random.Generator, picture: Image.Image) -> Image.Image:
    """The picture shrunk to 50–80 % and enlarged back (bilinear), or under Gaussian pixel noise of σ 4–12."""
    if rng.random() < 0.5:
        return resample_through(picture, max(8, int(picture.width * rng.uniform(0.5, 0.8))))
    pixels = np.asarray(picture, np.float32) + rng.normal(0, rng.uniform(4, 12), (picture.height, picture.width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def collage_scene(rng: np.random.Generator, size: int = IMAGE_SIZE) -> tuple[np.ndarray, list[Item]]:
    """One collage-style scene (see the module docstring)."""
    return _compose(rng, size, _collage_background, _paint_collage, 4, _resample_or_noise)


SCENE_STYLES = {"cartoon": (out_of_style_scene, SEED), "engraved": (engraved_scene, SEED + 1),
                "collage": (collage_scene, SEED + 2)}


def out_of_style_samples(count: int, kinds: tuple[str, ...] = tuple(TEXT_QUERIES), style: str = "cartoon"
                         ) -> list[Sample]:
    """``count`` deterministic samples of one of SCENE_STYLES (one query per scene; text queries unless ``kinds``
    says otherwise)."""
    scene, seed = SCENE_STYLES[style]
    samples = []
    for index in range(count):
        rng = np.random.default_rng([seed, index])
        image, items = scene(rng)
        samples += scene_samples(image, items, rng, 1, kinds=kinds)
    return samples
