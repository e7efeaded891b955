"""Generated referring-segmentation scenes: Fashion-MNIST items and shapes on photo/texture backgrounds.

Every sample is fully determined by one integer seed: the scene (items, colours, sizes, positions, background),
the query (an expression and/or point and box prompts) and the ground-truth mask, which is the union of the
referred items' visible pixels (empty for expressions about something absent). Training uses seeds below
``HELDOUT_SEED_START`` and the training wordings; held-out evaluation uses seeds from ``HELDOUT_SEED_START`` on,
optionally with the held-out wordings and synonyms that training never sees.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage import data as skdata
from skimage import draw

from backends.core.fashion_mnist import load_fashion_mnist

IMAGE_SIZE = 128
MAX_PROMPTS = 6  # up to 4 clicks + the 2 corners of a box
HELDOUT_SEED_START = 2_000_000_000

# Prompt labels (as in SAM: 1 positive click, 0 negative click; 2/3 box corners; -1 padding).
PAD, NEGATIVE, POSITIVE, BOX_TOP_LEFT, BOX_BOTTOM_RIGHT = -1, 0, 1, 2, 3

TRAIN, HELDOUT = "train", "heldout"
QUERY_KINDS = (
    "category", "colour_category", "colour", "size", "position", "relation", "nearest", "ordinal", "plural",
    "absent", "points", "box",
)


@dataclass(frozen=True)
class Category:
    """An item category with its training names and held-out synonyms, each a (singular, plural) pair."""

    key: str
    names: tuple[tuple[str, str], ...]
    heldout_names: tuple[tuple[str, str], ...]
    group: str  # "clothes", "shoes", "bags" or "shapes"


# Index i < 10 is Fashion-MNIST class i; the rest are drawn shapes.
CATEGORIES = (
    Category("t-shirt", (("t-shirt", "t-shirts"), ("tee", "tees")), (("tee shirt", "tee shirts"),), "clothes"),
    Category("trousers", (("pair of trousers", "pairs of trousers"), ("trousers", "trousers")),
             (("pants", "pants"),), "clothes"),
    Category("pullover", (("pullover", "pullovers"), ("sweater", "sweaters")), (("jumper", "jumpers"),), "clothes"),
    Category("dress", (("dress", "dresses"),), (("gown", "gowns"),), "clothes"),
    Category("coat", (("coat", "coats"), ("jacket", "jackets")), (("overcoat", "overcoats"),), "clothes"),
    Category("sandal", (("sandal", "sandals"),), (("slipper", "slippers"),), "shoes"),
    Category("shirt", (("shirt", "shirts"),), (("blouse", "blouses"),), "clothes"),
    Category("sneaker", (("sneaker", "sneakers"), ("trainer", "trainers")), (("running shoe", "running shoes"),),
             "shoes"),
    Category("bag", (("bag", "bags"), ("handbag", "handbags")), (("purse", "purses"),), "bags"),
    Category("ankle boot", (("ankle boot", "ankle boots"), ("boot", "boots")), (("bootie", "booties"),), "shoes"),
    Category("circle", (("circle", "circles"), ("disc", "discs")), (("dot", "dots"),), "shapes"),
    Category("square", (("square", "squares"),), (("block", "blocks"),), "shapes"),
    Category("triangle", (("triangle", "triangles"),), (("wedge", "wedges"),), "shapes"),
    Category("cross", (("cross", "crosses"), ("plus sign", "plus signs")), (("x mark", "x marks"),), "shapes"),
)
NUM_FASHION = 10
GROUP_NAMES = {  # plural group names: training, held-out
    "clothes": (("clothes", "garments"), ("pieces of clothing",)),
    "shoes": (("shoes",), ("footwear items",)),
    "shapes": (("shapes", "geometric shapes"), ("figures",)),
}
# name → (RGB, training words, held-out words)
COLOURS = {
    "red": ((220, 35, 35), ("red",), ("crimson",)),
    "green": ((40, 175, 60), ("green",), ("emerald",)),
    "blue": ((40, 80, 235), ("blue",), ("azure",)),
    "yellow": ((245, 220, 40), ("yellow",), ("golden",)),
    "orange": ((250, 135, 20), ("orange",), ("tangerine",)),
    "purple": ((150, 55, 205), ("purple",), ("violet",)),
    "white": ((245, 245, 245), ("white",), ("snowy",)),
    "cyan": ((40, 215, 225), ("cyan", "turquoise"), ("aqua",)),
}
COLOUR_KEYS = tuple(COLOURS)
NO_COLOUR = ""  # the colour of an uncoloured item (its own grey shading): colour queries never name it
SIZE_RANGES = {"small": (18, 27), "medium": (29, 37), "large": (40, 54)}
WIDE_SIDES = (16, 65)  # item sides for the share WIDE_SIZE_SHARE of items: ⅛ to ½ of a 128-pixel image
WIDE_SIZE_SHARE = 0.3
UNCOLOURED_SHARE = 0.15  # items left in their own grey shading (as dark or light as the background allows)
TRANSLUCENT_SHARE = 0.15  # items blended over the background with opacity 0.6–0.9
PLAIN_BACKGROUND_SHARE = 0.2  # flat grey backgrounds of any brightness with optional pixel noise
GAPS = (3, 4)  # pixels kept free between items: 3 = as close as items can stand and still be told apart

# Wordings per query kind: (training templates, held-out templates).
WORDINGS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "category": (("the {c}", "{c}", "find the {c}", "segment the {c}"), ("where is the {c}?", "show me the {c}")),
    "colour_category": (("the {col} {c}", "the {c} that is {col}", "find the {col} {c}"),
                        ("the {col}-coloured {c}", "the {c} in {col}")),
    "colour": (("the {col} thing", "the {col} object", "the {col} item"), ("whatever is {col}",)),
    "largest": (("the biggest {c}", "the largest {c}", "the big {c}"), ("the {c} that is biggest",)),
    "smallest": (("the smallest {c}", "the small {c}", "the little {c}"), ("the tiniest {c}",)),
    "left": (("the leftmost {c}", "the {c} on the left", "the {c} furthest to the left"),
             ("the {c} nearest the left edge",)),
    "right": (("the rightmost {c}", "the {c} on the right", "the {c} furthest to the right"),
              ("the {c} nearest the right edge",)),
    "top": (("the top {c}", "the {c} at the top", "the highest {c}"), ("the uppermost {c}",)),
    "bottom": (("the bottom {c}", "the {c} at the bottom", "the lowest {c}"), ("the {c} closest to the bottom",)),
    "left_of": (("the {a} left of the {b}", "the {a} to the left of the {b}"),
                ("the {a} on the left side of the {b}",)),
    "right_of": (("the {a} right of the {b}", "the {a} to the right of the {b}"),
                 ("the {a} on the right side of the {b}",)),
    "above": (("the {a} above the {b}", "the {a} over the {b}"), ("the {a} higher up than the {b}",)),
    "below": (("the {a} below the {b}", "the {a} under the {b}"), ("the {a} beneath the {b}",)),
    "nearest": (("the {a} closest to the {b}", "the {a} next to the {b}", "the {a} nearest the {b}"),
                ("the {a} beside the {b}",)),
    "ordinal": (("the {n} {c} from the {side}", "the {n} {c} counting from the {side}"),
                ("the {c} that is {n} from the {side}",)),
    "plural": (("all the {cs}", "every {c}", "the {cs}", "all {cs}"), ("each {c}", "all of the {cs}")),
    "plural_colour": (("all {col} items", "everything {col}", "all the {col} things"), ("each {col} object",)),
    "plural_group": (("all the {g}", "every one of the {g}"), ("all of the {g}",)),
    "absent": (("the {c}", "the {col} {c}", "all the {cs}"), ("where is the {c}?", "show me the {col} {c}")),
}
ORDINALS = (("first", "second", "third"), ("1st", "2nd", "3rd"))
ITEM_WORDS = ((("item", "items"), ("object", "objects"), ("thing", "things")), (("element", "elements"),))
BACKGROUND_PHOTOS = (
    "astronaut", "brick", "camera", "chelsea", "coffee", "coins", "grass", "gravel", "hubble_deep_field",
    "immunohistochemistry", "moon", "page", "retina", "rocket", "text", "clock", "colorwheel",
)
# Query-kind weights for training: text-only kinds, then prompt-only kinds.
KIND_WEIGHTS = {
    "category": 1.0, "colour_category": 1.2, "colour": 0.6, "size": 0.8, "position": 1.2, "relation": 1.3,
    "nearest": 0.6, "ordinal": 1.0, "plural": 1.2, "absent": 0.8, "points": 0.9, "box": 0.5,
}


@dataclass
class Item:
    """One placed item: its category index, colour name, size class, box and visible-pixel mask."""

    category: int
    colour: str
    size: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive)
    mask: np.ndarray  # [H, W] bool

    @property
    def centre(self) -> tuple[float, float]:
        """(x, y) centre of the box."""
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2

    @property
    def area(self) -> int:
        """Number of visible pixels."""
        return int(self.mask.sum())


@dataclass
class Sample:
    """One training/evaluation example."""

    image: np.ndarray  # [H, W, 3] uint8
    mask: np.ndarray  # [H, W] bool, union of the referred items
    expression: str  # "" for prompt-only queries
    prompts: np.ndarray  # [MAX_PROMPTS, 3] float32: x, y in [0, 1], label
    kind: str
    count: int  # number of referred items
    items: list[Item] = field(default_factory=list)


@functools.lru_cache(maxsize=2)
def fashion_items(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST images and labels; training scenes use the 'train' split, held-out scenes the 'test' split."""
    return load_fashion_mnist(split)


@functools.lru_cache(maxsize=1)
def background_photos() -> tuple[np.ndarray, ...]:
    """The scikit-image sample photos that load offline, as RGB uint8 arrays."""
    photos = []
    for name in BACKGROUND_PHOTOS:
        try:
            photo = np.asarray(getattr(skdata, name)())
        except Exception:  # noqa: BLE001 - a photo missing from this scikit-image build is simply skipped
            continue
        if photo.ndim == 2:
            photo = np.repeat(photo[..., None], 3, axis=2)
        photos.append(np.ascontiguousarray(photo[..., :3].astype(np.uint8)))
    return tuple(photos)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random crop of a photo, a procedural texture (flat, gradient, stripes, noise) or a plain grey of any
    brightness with optional noise, as float32 [H, W, 3]."""
    if rng.random() < PLAIN_BACKGROUND_SHARE:
        level = rng.uniform(0, 255)
        noise = rng.normal(0, rng.choice([0.0, rng.uniform(2, 40)]), (size, size, 1))
        return np.repeat(np.float32(level) + noise.astype(np.float32), 3, axis=2)
    photos = background_photos()
    choice = rng.random()
    if photos and choice < 0.55:
        photo = photos[rng.integers(len(photos))]
        h, w = photo.shape[:2]
        crop = int(rng.integers(min(h, w) // 4, min(h, w) + 1))
        y0, x0 = rng.integers(0, h - crop + 1), rng.integers(0, w - crop + 1)
        patch = Image.fromarray(photo[y0:y0 + crop, x0:x0 + crop]).resize((size, size), Image.BILINEAR)
        bg = np.asarray(patch, np.float32)
        if rng.random() < 0.3:
            bg = bg.mean(axis=2, keepdims=True).repeat(3, axis=2)
    else:
        base = rng.uniform(0, 255, 3).astype(np.float32)
        other = rng.uniform(0, 255, 3).astype(np.float32)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
        if choice < 0.7:
            t = np.zeros_like(xx)
        elif choice < 0.82:
            angle = rng.uniform(0, 2 * np.pi)
            t = (np.cos(angle) * xx + np.sin(angle) * yy) % 1.0
        elif choice < 0.92:
            freq, angle = rng.uniform(3, 12), rng.uniform(0, np.pi)
            t = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (np.cos(angle) * xx + np.sin(angle) * yy))
        else:
            coarse = rng.random((8, 8)).astype(np.float32)
            t = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC),
                           np.float32) / 255
        bg = base + (other - base) * t[..., None]
    bg *= rng.uniform(0.45, 1.0)
    bg += rng.normal(0, rng.uniform(0, 8), bg.shape).astype(np.float32)
    return bg


def _shape_mask(category: int, side: int, rng: np.random.Generator) -> np.ndarray:
    """A filled shape (circle, square, triangle or cross) on a side×side canvas."""
    canvas = np.zeros((side, side), bool)
    r = side / 2
    key = CATEGORIES[category].key
    if key == "circle":
        rr, cc = draw.disk((r - 0.5, r - 0.5), r - 0.5, shape=canvas.shape)
    elif key == "square":
        inset = int(rng.integers(0, max(1, side // 10) + 1))
        rr, cc = draw.rectangle((inset, inset), (side - 1 - inset, side - 1 - inset), shape=canvas.shape)
    elif key == "triangle":
        if rng.random() < 0.5:
            rr, cc = draw.polygon([side - 1, side - 1, 0], [0, side - 1, r - 0.5], shape=canvas.shape)
        else:
            rr, cc = draw.polygon([0, 0, side - 1], [0, side - 1, r - 0.5], shape=canvas.shape)
    else:  # cross
        arm = max(2, side // 3)
        lo = (side - arm) // 2
        canvas[lo:lo + arm, :] = True
        canvas[:, lo:lo + arm] = True
        return canvas
    canvas[rr, cc] = True
    return canvas


def _item_silhouette(gray: np.ndarray) -> np.ndarray:
    """Solid silhouette of a 28×28 Fashion-MNIST item: its pixels, closed by one pixel, holes filled."""
    pixels = gray > 12
    return ndimage.binary_fill_holes(ndimage.binary_closing(pixels) | pixels)


def render_item(category: int, side: int, images: np.ndarray, by_class: list[np.ndarray],
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Shading in [0, 1] and a solid mask for one item of the given category on a side×side canvas."""
    if category < NUM_FASHION:
        pool = by_class[category]
        gray = images[pool[rng.integers(len(pool))]]
        if rng.random() < 0.5 and CATEGORIES[category].key not in ("sandal", "sneaker", "ankle boot"):
            gray = gray[:, ::-1]
        small_mask = _item_silhouette(gray)
        shade = np.asarray(Image.fromarray(gray).resize((side, side), Image.BILINEAR), np.float32) / 255
        mask = np.asarray(Image.fromarray(small_mask.astype(np.uint8) * 255).resize((side, side), Image.BILINEAR)) > 127
        shade = 0.45 + 0.55 * shade / max(shade.max(), 1e-3)
    else:
        mask = _shape_mask(category, side, rng)
        yy = np.linspace(0, 1, side, dtype=np.float32)[:, None]
        shade = np.broadcast_to(1.0 - rng.uniform(0, 0.35) * yy, (side, side)).astype(np.float32)
    return shade, mask


def _item_side(rng: np.random.Generator, size: int) -> tuple[int, str]:
    """An item's side in pixels of a size×size scene and its size class."""
    if rng.random() < WIDE_SIZE_SHARE:
        side = int(rng.integers(*WIDE_SIDES))
        size_class = "small" if side < SIZE_RANGES["medium"][0] else "medium" if side < SIZE_RANGES["large"][0] \
            else "large"
    else:
        size_class = ("small", "medium", "large")[int(rng.integers(3))]
        side = int(rng.integers(*SIZE_RANGES[size_class]))
    return int(side * size / IMAGE_SIZE), size_class


def _item_paint(rng: np.random.Generator, shade: np.ndarray, region: np.ndarray) -> tuple[str, np.ndarray]:
    """An item's colour name and its pixels [s, s, 3] over the background ``region``: coloured (the palette
    colour times the shading) or uncoloured (the grey shading itself, possibly inverted), opaque or translucent."""
    if rng.random() < UNCOLOURED_SHARE:
        colour, grey = NO_COLOUR, shade if rng.random() < 0.6 else 1.45 - shade
        paint = np.repeat(grey[..., None] * rng.uniform(100, 185), 3, axis=2)  # grey, never white
    else:
        colour = COLOUR_KEYS[int(rng.integers(len(COLOUR_KEYS)))]
        rgb = np.clip(np.array(COLOURS[colour][0], np.float32) + rng.normal(0, 12, 3), 0, 255)
        paint = shade[..., None] * rgb
    if rng.random() < TRANSLUCENT_SHARE:
        opacity = rng.uniform(0.6, 0.9)
        paint = opacity * paint + (1 - opacity) * region
    return colour, paint.astype(np.float32)


@functools.lru_cache(maxsize=2)
def class_index(split: str) -> list[np.ndarray]:
    """Indices of each Fashion-MNIST class in ``split``."""
    _, labels = fashion_items(split)
    return [np.flatnonzero(labels == c) for c in range(NUM_FASHION)]


def make_scene(rng: np.random.Generator, size: int = IMAGE_SIZE, split: str = TRAIN) -> tuple[np.ndarray, list[Item]]:
    """Compose a scene of 1–6 non-overlapping items (3 or 4 px apart) on a random background."""
    images, _ = fashion_items("train" if split == TRAIN else "test")
    by_class = class_index("train" if split == TRAIN else "test")
    canvas = _background(rng, size)
    occupied = np.zeros((size, size), bool)
    items: list[Item] = []
    wanted = int(rng.choice([1, 2, 3, 4, 5, 6], p=[0.06, 0.14, 0.22, 0.24, 0.2, 0.14]))
    gap = int(rng.choice(GAPS))
    # Repeat categories often so that size, position, ordinal and relation queries have something to tell apart.
    palette = rng.choice(len(CATEGORIES), size=int(rng.integers(1, 4)), replace=False)
    for _ in range(wanted):
        category = int(palette[rng.integers(len(palette))] if rng.random() < 0.6 else rng.integers(len(CATEGORIES)))
        side, size_class = _item_side(rng, size)
        for _attempt in range(25):
            x0, y0 = (int(v) for v in rng.integers(1, size - side, 2))
            if not occupied[max(0, y0 - gap):y0 + side + gap, max(0, x0 - gap):x0 + side + gap].any():
                break
        else:
            continue
        shade, local = render_item(category, side, images, by_class, rng)
        if not local.any():
            continue
        region = canvas[y0:y0 + side, x0:x0 + side]
        colour, paint = _item_paint(rng, shade, region)
        region[local] = paint[local]
        occupied[y0:y0 + side, x0:x0 + side] |= local
        full = np.zeros((size, size), bool)
        full[y0:y0 + side, x0:x0 + side] = local
        ys, xs = np.nonzero(local)
        box = (x0 + int(xs.min()), y0 + int(ys.min()), x0 + int(xs.max()) + 1, y0 + int(ys.max()) + 1)
        items.append(Item(category, colour, size_class, box, full))
    if not items:  # extremely rare: place nothing → retry deterministically with the same generator
        return make_scene(rng, size, split)
    return np.clip(canvas, 0, 255).astype(np.uint8), items


class _Phrasing:
    """Chooses wordings and names from the training or the held-out vocabulary."""

    def __init__(self, rng: np.random.Generator, heldout: bool):
        self.rng, self.heldout = rng, heldout

    def pick(self, options: tuple) -> object:
        """One element of ``options`` at random."""
        return options[int(self.rng.integers(len(options)))]

    def split(self, pair: tuple[tuple, tuple]) -> tuple:
        """The training or held-out half of a (training, held-out) pair; held-out queries use it half the time."""
        return pair[1] if self.heldout and self.rng.random() < 0.5 else pair[0]

    def template(self, kind: str) -> str:
        """A wording of ``kind``; held-out queries always use a held-out wording."""
        train, held = WORDINGS[kind]
        return str(self.pick(held if self.heldout else train))

    def noun(self, category: int) -> tuple[str, str]:
        """(singular, plural) name of a category."""
        cat = CATEGORIES[category]
        return self.pick(self.split((cat.names, cat.heldout_names)))

    def item_noun(self) -> tuple[str, str]:
        """(singular, plural) of a generic word for any item."""
        return self.pick(self.split(ITEM_WORDS))

    def colour(self, colour: str) -> str:
        """A word for a colour."""
        _, train, held = COLOURS[colour]
        return str(self.pick(self.split((train, held))))


def _matching(items: list[Item], predicate) -> list[int]:
    """Indices of items satisfying ``predicate``."""
    return [i for i, item in enumerate(items) if predicate(item)]


def _query_category(items: list[Item], words: _Phrasing) -> tuple[str, list[int]] | None:
    counts = np.bincount([it.category for it in items], minlength=len(CATEGORIES))
    singles = np.flatnonzero(counts == 1)
    if not len(singles):
        return None
    category = int(words.pick(singles))
    text = words.template("category").format(c=words.noun(category)[0])
    return text, _matching(items, lambda it: it.category == category)


def _query_colour_category(items: list[Item], words: _Phrasing) -> tuple[str, list[int]] | None:
    pairs = [(it.category, it.colour) for it in items]
    unique = [p for p in set(pairs) if pairs.count(p) == 1 and p[1] != NO_COLOUR]
    if not unique:
        return None
    category, colour = sorted(unique)[int(words.rng.integers(len(unique)))]
    text = words.template("colour_category").format(col=words.colour(colour), c=words.noun(category)[0])
    return text, _matching(items, lambda it: (it.category, it.colour) == (category, colour))


def _query_colour(items: list[Item], words: _Phrasing) -> tuple[str, list[int]] | None:
    colours = [it.colour for it in items]
    unique = sorted(c for c in set(colours) if colours.count(c) == 1 and c != NO_COLOUR)
    if not unique:
        return None
    colour = str(words.pick(tuple(unique)))
    return words.template("colour").format(col=words.colour(colour)), _matching(items, lambda it: it.colour == colour)


def _group_pick(items: list[Item], words: _Phrasing, minimum: int) -> tuple[list[int], str] | None:
    """A set of ≥ ``minimum`` items sharing a category (or all items) and the noun naming it."""
    counts = np.bincount([it.category for it in items], minlength=len(CATEGORIES))
    options = [int(c) for c in np.flatnonzero(counts >= minimum)]
    if len(items) >= minimum:
        options.append(-1)
    if not options:
        return None
    category = int(words.pick(tuple(options)))
    if category < 0:
        return list(range(len(items))), words.item_noun()[0]
    return _matching(items, lambda it: it.category == category), words.noun(category)[0]


def _query_size(items: list[Item], words: _Phrasing) -> tuple[str, list[int]] | None:
    group = _group_pick(items, words, 2)
    if group is None:
        return None
    members, noun = group
    areas = sorted((items[i].area, i) for i in members)
    if words.rng.random() < 0.5 and areas[-1][0] >= 1.8 * areas[-2][0]:
        return words.template("largest").format(c=noun), [areas[-1][1]]
    if areas[0][0] * 1.8 <= areas[1][0]:
        return words.template("smallest").format(c=noun), [areas[0][1]]
    return None


_DIRECTIONS = {  # direction → key to maximise
    "left": lambda it: -it.centre[0], "right": lambda it: it.centre[0],
    "top": lambda it: -it.centre[1], "bottom": lambda it: it.centre[1],
}


def _query_position(items: list[Item], words: _Phrasing) -> tuple[str, list[int]] | None:
    group = _group_pick(items, words, 2)
    if group is None:
        return None
    members, noun = group
    direction = str(words.pick(tuple(_DIRECTIONS)))
    ranked = sorted(members, key=lambda i: _DIRECTIONS[direction](items[i]), reverse=True)
    if _DIRECTIONS[direction](items[ranked[0]]) - _DIRECTIONS[direction](items[ranked[1]]) < 10:
        return None
    return words.template(direction).format(c=noun), [ranked[0]]


_RELATIONS = {  # relation → does item a stand in it to anchor b?
    "left_of": lambda a, b: a.centre[0] < b.centre[0] - 8,
    "right_of": lambda a, b: a.centre[0] > b.centre[0] + 8,
    "above": lambda a, b: a.centre[1] < b.centre[1] - 8,
    "below": lambda a, b: a.centre[1] > b.centre[1] + 8,
}


def _anchor_and_targets(items: list[Item], words: _Phrasing) -> tuple[int, int, list[int]] | None:
    """An anchor item unique by category and a target category (other items) with ≥ 1 member."""
    counts = np.bincount([it.category for it in items], minlength=len(CATEGORIES))
    anchors = [i for i, it in enumerate(items) if counts[it.category] == 1]
    if not anchors or len(items) < 2:
        return None
    anchor = int(words.pick(tuple(anchors)))
    target_cats = sorted({it.category for i, it in enumerate(items) if i != anchor})
    target_cat = int(words.pick(tuple(target_cats)))
    return anchor, target_cat, _matching(items, lambda it: it.category == target_cat)


def _query_relation(items: list[Item], words: _Phrasing) -> tuple[str, list[int]] | None:
    found = _anchor_and_targets(items, words)
    if found is None:
        return None
    anchor, target_cat, members = found
    relation = str(words.pick(tuple(_RELATIONS)))
    hits = [i for i in members if _RELATIONS[relation](items[i], items[anchor])]
    if len(hits) != 1:
        return None
    text = words.template(relation).format(a=words.noun(target_cat)[0], b=words.noun(items[anchor].category)[0])
    return text, hits


def _query_nearest(items: list[Item], words: _Phrasing) -> tuple[str, list[int]] | None:
    found = _anchor_and_targets(items, words)
    if found is None:
        return None
    anchor, target_cat, members = found
    if len(members) < 2:
        return None
    ax, ay = items[anchor].centre
    ranked = sorted((np.hypot(items[i].centre[0] - ax, items[i].centre[1] - ay), i) for i in members)
    if ranked[1][0] - ranked[0][0] < 12:
        return None
    text = words.template("nearest").format(a=words.noun(target_cat)[0], b=words.noun(items[anchor].category)[0])
    return text, [ranked[0][1]]


def _query_ordinal(items: list[Item], words: _Phrasing) -> tuple[str, list[int]] | None:
    group = _group_pick(items, words, 2)
    if group is None:
        return None
    members, noun = group
    side = str(words.pick(("left", "right", "top", "bottom")))
    ranked = sorted(members, key=lambda i: _DIRECTIONS[side](items[i]), reverse=True)
    keys = [_DIRECTIONS[side](items[i]) for i in ranked]
    rank = int(words.rng.integers(min(3, len(ranked))))
    gaps = [keys[j] - keys[j + 1] for j in range(max(0, rank - 1), min(rank + 1, len(keys) - 1))]
    if any(gap < 8 for gap in gaps):
        return None
    ordinal = words.split(ORDINALS)[rank]
    return words.template("ordinal").format(n=ordinal, c=noun, side=side), [ranked[rank]]


def _query_plural(items: list[Item], words: _Phrasing) -> tuple[str, list[int]] | None:
    choice = words.rng.random()
    if choice < 0.6:
        category = items[int(words.rng.integers(len(items)))].category
        singular, plural = words.noun(category)
        text = words.template("plural").format(c=singular, cs=plural)
        return text, _matching(items, lambda it: it.category == category)
    coloured = [it for it in items if it.colour != NO_COLOUR]
    if choice < 0.8 and coloured:
        colour = coloured[int(words.rng.integers(len(coloured)))].colour
        return (words.template("plural_colour").format(col=words.colour(colour)),
                _matching(items, lambda it: it.colour == colour))
    group = CATEGORIES[items[int(words.rng.integers(len(items)))].category].group
    if group not in GROUP_NAMES:
        return None
    name = str(words.pick(words.split(GROUP_NAMES[group])))
    text = words.template("plural_group").format(g=name)
    return text, _matching(items, lambda it: CATEGORIES[it.category].group == group)


def _query_absent(items: list[Item], words: _Phrasing) -> tuple[str, list[int]] | None:
    present = {it.category for it in items}
    if words.rng.random() < 0.5:  # a colour/category combination that is absent although the category is present
        category = items[int(words.rng.integers(len(items)))].category
        colours = sorted(set(COLOUR_KEYS) - {it.colour for it in items if it.category == category})
        colour = str(words.pick(tuple(colours)))
        return words.template("colour_category").format(col=words.colour(colour), c=words.noun(category)[0]), []
    absent = [c for c in range(len(CATEGORIES)) if c not in present]
    category = int(words.pick(tuple(absent)))
    singular, plural = words.noun(category)
    colour = words.colour(COLOUR_KEYS[int(words.rng.integers(len(COLOUR_KEYS)))])
    return words.template("absent").format(c=singular, cs=plural, col=colour), []


TEXT_QUERIES = {
    "category": _query_category, "colour_category": _query_colour_category, "colour": _query_colour,
    "size": _query_size, "position": _query_position, "relation": _query_relation, "nearest": _query_nearest,
    "ordinal": _query_ordinal, "plural": _query_plural, "absent": _query_absent,
}


def _random_point(mask: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    """A uniformly drawn (x, y) pixel centre of ``mask``, normalised to [0, 1]."""
    ys, xs = np.nonzero(mask)
    j = int(rng.integers(len(xs)))
    size = mask.shape[0]
    return (xs[j] + 0.5) / size, (ys[j] + 0.5) / size


def _prompts(items: list[Item], targets: list[int], rng: np.random.Generator, clicks: bool, box: bool,
             size: int) -> np.ndarray:
    """Prompt array: positive clicks on targets, negative clicks elsewhere, and/or the targets' union box."""
    prompts = np.full((MAX_PROMPTS, 3), [0.0, 0.0, PAD], np.float32)
    row = 0
    if clicks:
        for _ in range(int(rng.integers(1, 3))):
            target = items[targets[int(rng.integers(len(targets)))]]
            prompts[row] = (*_random_point(target.mask, rng), POSITIVE)
            row += 1
        others = [i for i in range(len(items)) if i not in targets]
        for _ in range(int(rng.choice([0, 1, 2], p=[0.5, 0.3, 0.2]))):
            if others and rng.random() < 0.7:
                region = items[others[int(rng.integers(len(others)))]].mask
            else:
                region = ~np.logical_or.reduce([items[i].mask for i in targets])
            prompts[row] = (*_random_point(region, rng), NEGATIVE)
            row += 1
    if box:
        x0 = min(items[i].box[0] for i in targets)
        y0 = min(items[i].box[1] for i in targets)
        x1 = max(items[i].box[2] for i in targets)
        y1 = max(items[i].box[3] for i in targets)
        jitter = rng.integers(-3, 4, 4)
        corners = np.clip(np.array([x0, y0, x1, y1]) + jitter, 0, size) / size
        prompts[row] = (corners[0], corners[1], BOX_TOP_LEFT)
        prompts[row + 1] = (corners[2], corners[3], BOX_BOTTOM_RIGHT)
    return prompts


def _make_query(items: list[Item], rng: np.random.Generator, words: _Phrasing, kinds: tuple[str, ...] | None,
                size: int) -> tuple[str, list[int], np.ndarray, str]:
    """Expression, referred item indices, prompt array and kind of one query on a scene."""
    names = list(kinds or QUERY_KINDS)
    weights = np.array([KIND_WEIGHTS[k] for k in names])
    no_prompts = np.full((MAX_PROMPTS, 3), [0.0, 0.0, PAD], np.float32)
    for _attempt in range(12):
        kind = names[int(rng.choice(len(names), p=weights / weights.sum()))]
        if kind in ("points", "box"):
            target = [int(rng.integers(len(items)))]
            return "", target, _prompts(items, target, rng, kind == "points", kind == "box", size), kind
        query = TEXT_QUERIES[kind](items, words)
        if query is None:
            continue
        expression, target = query
        if target and kinds is None and not words.heldout and rng.random() < 0.15:
            return expression, target, _prompts(items, target, rng, clicks=True, box=False, size=size), kind
        return expression, target, no_prompts, kind
    # No requested kind fits this scene: fall back to a plural query, which always fits.
    singular, plural = words.noun(items[0].category)
    target = _matching(items, lambda it: it.category == items[0].category)
    return words.template("plural").format(c=singular, cs=plural), target, no_prompts, "plural"


def make_samples(seed: int, queries: int = 1, size: int = IMAGE_SIZE, heldout_wording: bool = False,
                 kinds: tuple[str, ...] | None = None) -> list[Sample]:
    """The samples determined by ``seed``: one scene and ``queries`` queries on it (``kinds`` restricts them)."""
    rng = np.random.default_rng(seed)
    image, items = make_scene(rng, size, HELDOUT if seed >= HELDOUT_SEED_START else TRAIN)
    return scene_samples(image, items, rng, queries, heldout_wording, kinds)


def scene_samples(image: np.ndarray, items: list[Item], rng: np.random.Generator, queries: int = 1,
                  heldout_wording: bool = False, kinds: tuple[str, ...] | None = None) -> list[Sample]:
    """``queries`` queries drawn by ``rng`` on a composed scene (``image`` and its ``items``)."""
    size = image.shape[0]
    words = _Phrasing(rng, heldout_wording)
    samples = []
    for _ in range(queries):
        expression, target, prompts, kind = _make_query(items, rng, words, kinds, size)
        mask = np.zeros(image.shape[:2], bool)
        for i in target:
            mask |= items[i].mask
        samples.append(Sample(image, mask, expression, prompts, kind, len(target), items))
    return samples
