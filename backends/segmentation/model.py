"""HeadLab's referring segmenter, object-centric.

1. :class:`ForegroundNet`, a small U-Net, marks the pixels of items (any category) at the input resolution.
2. The foreground's connected components are the objects (:func:`find_objects`).
3. :class:`ObjectEncoder` embeds each object from a crop of its box (RGB and its mask), its geometry, its mean
   colour and a Fashion-MNIST prior: the class probabilities that HeadLab's frozen Fashion-MNIST classifier (trained
   by the Guidance panel) gives a grayscale view of the crop; auxiliary heads name its category and colour (used in
   training only).
4. :class:`FusionBlock` layers are a two-way transformer between the object tokens and the frozen MiniLM token
   states of the expression: objects attend to the words, objects attend to each other with a bias from their
   relative geometry (relations, superlatives, ordinals), and words attend to the objects. The words→objects heads
   are the ones the panel draws.
   Clicks and a box enter as exact per-object evidence (is a click inside the object, how much of it is in the box).
5. A per-object "referred" probability gives three candidate masks: the three most probable sets of objects
   (:func:`candidate_sets`), each scored by its probability.

:meth:`Segmenter.encode_image` (steps 1–3) runs once per image and is cached by the service; :meth:`Segmenter.decode`
(step 4) is all a further query costs.

How familiar a picture is: the U-Net's deepest features, pooled over the image (mean and standard deviation per
channel), have a Mahalanobis distance to their distribution over the generator's training scenes; ``scene_radius``
is the distance that only 0.5 % of held-out generator scenes exceed (fitted by :func:`fit_scene_statistics` and
stored with the weights; infinite, never exceeded, until fitted).

The fusion's attention heads form the panel's head stack (:func:`head_stack`): its layers are the three attention
modules of each block in the order they run (objects→words, objects→objects, words→objects), each with
``config.heads`` heads. ``decode(..., heads_off=...)`` switches heads off for that call only, per query row, by zero
ablation: a head that is off contributes nothing to its module's output projection (the projection's bias stays).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the usual torch alias
from safetensors.torch import load_file, save_file
from scipy import ndimage
from torch import nn

from backends.core.fashion_classifier import CLASSIFIER_CONFIG, IMAGE_SIZE, NUM_CLASSES, FashionClassifier
from backends.core.head_rows import head_rows
from backends.core.heads import Head, HeadStack
from backends.segmentation.data import (
    BOX_BOTTOM_RIGHT,
    BOX_TOP_LEFT,
    CATEGORIES,
    COLOUR_KEYS,
    HELDOUT_SEED_START,
    NEGATIVE,
    POSITIVE,
    make_samples,
)

WEIGHTS_NAME = "segmenter.safetensors"
CONFIG_NAME = "segmentation.json"
SCENE_STATISTICS_SEED = 30_000_000  # first scene seed of fit_scene_statistics (training and held-out ranges)
MIN_OBJECT_AREA = 12  # pixels (at the model's input size); smaller foreground specks are not objects
GEOMETRY_FEATURES = 7  # x0, y0, x1, y1, centre x, centre y, sqrt(area), all in [0, 1]
PAIR_FEATURES = 4  # see pairwise_geometry
PROMPT_FEATURES = 6  # see prompt_evidence
#: a fusion block's attention modules in the order they run, with the names the head stack gives them
ATTENTIONS = (("objects_to_words", "objects→words"), ("object_self", "objects→objects"),
              ("words_to_objects", "words→objects"))


@dataclass
class SegmenterConfig:
    """Hyper-parameters needed to rebuild the model (stored in segmentation.json)."""

    image_size: int = 128
    widths: tuple[int, int, int, int] = (16, 32, 64, 96)  # foreground U-Net, per level
    crop: int = 32  # side of an object's crop
    object_widths: tuple[int, int, int] = (32, 64, 128)  # object encoder CNN
    dim: int = 128
    heads: int = 4
    depth: int = 3  # fusion blocks (run per query)
    text_dim: int = 384
    num_masks: int = 3
    max_objects: int = 12
    fashion_prior: bool = True  # frozen Fashion-MNIST classifier probabilities as object features

    def to_dict(self) -> dict:
        """JSON-able form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> SegmenterConfig:
        """Inverse of :meth:`to_dict` (unknown keys are ignored)."""
        known = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()
                 if k in cls.__dataclass_fields__}
        return cls(**known)


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """3×3 conv → GroupNorm → GELU."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.GroupNorm(8, cout), nn.GELU())


class ResBlock(nn.Module):
    """Two 3×3 convs with a residual connection."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(_conv(channels, channels), nn.Conv2d(channels, channels, 3, 1, 1, bias=False),
                                  nn.GroupNorm(8, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x + body(x)."""
        return F.gelu(x + self.body(x))


class ForegroundNet(nn.Module):
    """U-Net: normalised image [B, 3, S, S] → item-pixel logits [B, S, S]."""

    def __init__(self, widths: tuple[int, int, int, int]):
        super().__init__()
        w = widths
        self.downs = nn.ModuleList([
            nn.Sequential(_conv(3, w[0]), ResBlock(w[0])),
            nn.Sequential(_conv(w[0], w[1], 2), ResBlock(w[1])),
            nn.Sequential(_conv(w[1], w[2], 2), ResBlock(w[2])),
            nn.Sequential(_conv(w[2], w[3], 2), ResBlock(w[3]), ResBlock(w[3])),
        ])
        self.ups = nn.ModuleList(_conv(w[level + 1] + w[level], w[level]) for level in range(3))
        self.head = nn.Conv2d(w[0], 1, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Per-pixel logits."""
        return self.encode(image)[0]

    def encode(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-pixel logits [B, S, S] and the deepest features pooled over the image [B, 2·widths[3]] (their mean
        and standard deviation per channel)."""
        skips = []
        x = image
        for down in self.downs:
            x = down(x)
            skips.append(x)
        summary = torch.cat([x.mean((2, 3)), x.std((2, 3))], dim=1)
        for level in (2, 1, 0):
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            x = self.ups[level](torch.cat([x, skips[level]], dim=1))
        return self.head(x)[:, 0], summary


def find_objects(foreground: np.ndarray, max_objects: int) -> np.ndarray:
    """Objects of a boolean foreground map [S, S] as boolean masks [N, S, S], largest first.

    Components closer than two pixels are one object (a strap of a sandal); specks under MIN_OBJECT_AREA are
    dropped; at most ``max_objects`` are kept.
    """
    grown = ndimage.binary_dilation(foreground, structure=np.ones((3, 3), bool))
    labels, count = ndimage.label(grown, structure=np.ones((3, 3), bool))
    labels[~foreground] = 0
    if count == 0:
        return np.zeros((0, *foreground.shape), bool)
    areas = ndimage.sum_labels(foreground, labels, np.arange(1, count + 1))
    order = [int(i) + 1 for i in np.argsort(-areas, kind="stable") if areas[i] >= MIN_OBJECT_AREA][:max_objects]
    return np.stack([labels == index for index in order]) if order else np.zeros((0, *foreground.shape), bool)


def object_geometry(masks: torch.Tensor) -> torch.Tensor:
    """Boxes, centres and sqrt(area) of masks [N, S, S] as [N, GEOMETRY_FEATURES] in [0, 1]."""
    n, side = masks.shape[0], masks.shape[-1]
    if n == 0:
        return masks.new_zeros((0, GEOMETRY_FEATURES), dtype=torch.float32)
    coords = torch.arange(side, device=masks.device, dtype=torch.float32)
    rows, cols = masks.any(2), masks.any(1)  # [N, S]
    big = torch.full_like(coords, float(side))
    y0 = torch.where(rows, coords, big).amin(1)
    y1 = torch.where(rows, coords, -big).amax(1) + 1
    x0 = torch.where(cols, coords, big).amin(1)
    x1 = torch.where(cols, coords, -big).amax(1) + 1
    area = masks.flatten(1).float().sum(1)
    boxes = torch.stack([x0, y0, x1, y1], 1) / side
    centres = torch.stack([(x0 + x1) / 2, (y0 + y1) / 2], 1) / side
    return torch.cat([boxes, centres, (area.sqrt() / side)[:, None]], 1)


def crop_objects(image: torch.Tensor, masks: torch.Tensor, geometry: torch.Tensor, crop: int) -> torch.Tensor:
    """Square crops around each object's box of [image; mask]: image [3, S, S], masks [N, S, S] → [N, 4, crop, crop]."""
    n = masks.shape[0]
    boxes = geometry[:, :4]
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = ((boxes[:, 2:] - boxes[:, :2]).amax(1) * 1.15 + 2 / image.shape[-1]) / 2
    theta = torch.zeros(n, 2, 3, device=image.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 2 * half
    theta[:, :, 2] = 2 * centre - 1
    grid = F.affine_grid(theta, [n, 4, crop, crop], align_corners=False)
    planes = torch.cat([image[None].expand(n, -1, -1, -1), masks[:, None].float()], dim=1)
    return F.grid_sample(planes, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def mean_colour(image: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """The mean RGB [N, 3] of image [3, S, S] under each of masks [N, S, S]."""
    weights = masks.flatten(1).float()
    return (weights @ image.flatten(1).T) / weights.sum(1, keepdim=True).clamp(min=1)


def fashion_view(crops: torch.Tensor) -> torch.Tensor:
    """Fashion-MNIST-like views [N, 1, 28, 28] in [-1, 1] of object crops [N, 4, c, c] (RGB in [0, 1] and mask):
    the brightest channel inside the mask, stretched to [0, 1], black outside."""
    mask = crops[:, 3]
    inside = mask > 0.5
    light = crops[:, :3].amax(1)
    low = torch.where(inside, light, torch.full_like(light, 1e4)).amin((1, 2)).clamp(max=1.0)
    high = torch.where(inside, light, torch.full_like(light, -1e4)).amax((1, 2)).clamp(min=0.0)
    gray = ((light - low[:, None, None]) / (high - low).clamp(min=1e-3)[:, None, None]).clamp(0, 1) * mask
    view = F.interpolate(gray[:, None], size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", antialias=True)
    return view * 2 - 1


class ObjectEncoder(nn.Module):
    """Object crop, geometry, mean colour (and prior) → token; plus category and colour logits (auxiliary heads)."""

    def __init__(self, widths: tuple[int, int, int], dim: int, prior_dim: int = 0):
        super().__init__()
        w = widths
        self.cnn = nn.Sequential(_conv(4, w[0]), ResBlock(w[0]), _conv(w[0], w[1], 2), ResBlock(w[1]),
                                 _conv(w[1], w[2], 2), ResBlock(w[2]), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.project = nn.Sequential(nn.Linear(w[2] + GEOMETRY_FEATURES + 3 + prior_dim, dim), nn.GELU(),
                                     nn.Linear(dim, dim), nn.LayerNorm(dim))
        self.category_head = nn.Linear(w[2], len(CATEGORIES))
        self.colour_head = nn.Linear(w[2], len(COLOUR_KEYS))

    def forward(self, crops: torch.Tensor, geometry: torch.Tensor, colour: torch.Tensor, prior: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Tokens [N, dim], category logits [N, 14] and colour logits [N, 8] (``prior`` may have 0 columns)."""
        appearance = self.cnn(crops)
        tokens = self.project(torch.cat([appearance, geometry, colour, prior], dim=1))
        return tokens, self.category_head(appearance), self.colour_head(appearance)


class FourierPositions(nn.Module):
    """SAM's random Fourier encoding of (x, y) in [0, 1]."""

    def __init__(self, dim: int, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("gaussian", torch.randn(2, dim // 2, generator=generator))

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        """[..., 2] → [..., dim]."""
        projected = (2 * coords - 1) @ self.gaussian * (2 * math.pi)
        return torch.cat([projected.sin(), projected.cos()], dim=-1)


def head_stack(config: SegmenterConfig, name: str = "fashion-refseg") -> HeadStack:
    """The fusion's attention heads: 3·depth layers (each block's :data:`ATTENTIONS` in order) × ``config.heads``."""
    return HeadStack(f"{name} fusion attention", len(ATTENTIONS) * config.depth, config.heads, layer_names=tuple(
        f"block {block} · {label}" for block in range(config.depth) for _, label in ATTENTIONS))


def heads_off_mask(head_sets: list[list[Head]], stack: HeadStack, device: torch.device | str = "cpu") -> torch.Tensor:
    """``decode``'s ``heads_off`` [len(head_sets), layers, heads]: 1 where a row switches a head off."""
    return head_rows(head_sets, stack.layers, stack.heads).to(device)


class Attention(nn.Module):
    """Multi-head attention that can hand back its weights (for inspecting heads) and switch heads off."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, query: torch.Tensor, key: torch.Tensor, key_mask: torch.Tensor,
                keep: list | None = None, bias: torch.Tensor | None = None, off: torch.Tensor | None = None
                ) -> torch.Tensor:
        """Attend from ``query`` [B, Nq, D] to ``key`` [B, Nk, D] (also the values); ``key_mask`` True = attend;
        ``bias`` [B, heads, Nq, Nk] is added to the attention logits; heads where ``off`` [B, heads] is 1 give zeros.

        When ``keep`` is a list, the attention weights [B, heads, Nq, Nk] are appended to it.
        """
        b, nq, d = query.shape
        split = lambda x: x.view(b, x.shape[1], self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q(query)), split(self.k(key)), split(self.v(key))
        mask = key_mask[:, None, None, :]
        if bias is not None:
            mask = bias.masked_fill(~mask, float("-inf"))
        if keep is None:
            mixed = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            logits = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
            weights = (logits + mask if bias is not None else logits.masked_fill(~mask, float("-inf"))).softmax(-1)
            keep.append(weights.detach())
            mixed = weights @ v
        if off is not None:
            mixed = mixed * (1 - off.to(mixed.dtype))[:, :, None, None]
        return self.out(mixed.transpose(1, 2).reshape(b, nq, d))


def _mlp(dim: int, hidden: int, out: int | None = None) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, out or dim))


def pairwise_geometry(geometry: torch.Tensor) -> torch.Tensor:
    """How object j lies relative to object i: geometry [B, N, GEOMETRY_FEATURES] → [B, N, N, PAIR_FEATURES] with
    the centre offset (dx, dy), the distance and the log ratio of the sizes."""
    centre, size = geometry[..., 4:6], geometry[..., 6]
    delta = centre[:, None, :, :] - centre[:, :, None, :]
    ratio = torch.log((size[:, None, :] + 1e-3) / (size[:, :, None] + 1e-3))
    return torch.cat([delta, delta.norm(dim=-1, keepdim=True), ratio[..., None]], dim=-1)


class FusionBlock(nn.Module):
    """Objects→words cross-attention, object self-attention (with a learned bias per head from the objects' relative
    geometry, so that "left of", "nearest" and "biggest" are easy to express), object MLP, words→objects
    cross-attention, word MLP (pre-norm, residual)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.relation_bias = _mlp(PAIR_FEATURES, 32, heads)
        self.object_self = Attention(dim, heads)
        self.objects_to_words = Attention(dim, heads)
        self.words_to_objects = Attention(dim, heads)
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(6))
        self.object_mlp, self.word_mlp = _mlp(dim, 4 * dim), _mlp(dim, 2 * dim)

    def forward(self, objects: torch.Tensor, object_mask: torch.Tensor, pairs: torch.Tensor, words: torch.Tensor,
                word_mask: torch.Tensor, attention: dict[str, list] | None, heads_off: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step (``pairs``: pairwise_geometry of the objects, "nothing" included as zeros); appends the
        cross-attention weights to ``attention`` when it is given; ``heads_off`` [B, 3, heads] switches heads of
        the block's :data:`ATTENTIONS` off."""
        n = self.norms
        off = [None] * len(ATTENTIONS) if heads_off is None else heads_off.unbind(1)
        objects = objects + self.objects_to_words(n[0](objects), n[1](words), word_mask,
                                                  attention["objects_to_words"] if attention is not None else None,
                                                  off=off[0])
        o = n[2](objects)
        objects = objects + self.object_self(o, o, object_mask, bias=self.relation_bias(pairs).permute(0, 3, 1, 2),
                                             off=off[1])
        objects = objects + self.object_mlp(n[3](objects))
        words = words + self.words_to_objects(n[4](words), objects, object_mask,
                                              attention["words_to_objects"] if attention is not None else None,
                                              off=off[2])
        return objects, words + self.word_mlp(n[5](words))


@dataclass
class ImageFeatures:
    """What the model computes from one image alone (cached per image by the service)."""

    foreground: torch.Tensor  # [S, S] item-pixel probability
    masks: torch.Tensor  # [N, S, S] bool, the objects
    geometry: torch.Tensor  # [N, GEOMETRY_FEATURES]
    tokens: torch.Tensor  # [N, dim]
    category_logits: torch.Tensor  # [N, len(CATEGORIES)]
    colour_logits: torch.Tensor  # [N, len(COLOUR_KEYS)]
    scene_distance: float = 0.0  # how far the picture is from the training scenes (see Segmenter.scene_radius)


@dataclass
class SegmenterOutput:
    """Per-object "referred" logits of a batch of queries (objects padded) and, optionally, attention weights."""

    logits: torch.Tensor  # [B, N]
    object_mask: torch.Tensor  # [B, N] True for real objects
    attention: dict[str, list[torch.Tensor]] | None = None  # per layer, "words_to_objects" [B, heads, T, 1 + N]


def prompt_evidence(masks: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
    """Exact click/box evidence per object: masks [N, S, S] bool, prompts [P, 3] (x, y in [0, 1], label) →
    [N, PROMPT_FEATURES]: positive clicks inside, negative clicks inside, any click given, a box given, the share of
    the object inside the box, and the share of the box the object fills."""
    n, side = masks.shape[0], masks.shape[-1]
    labels = prompts[:, 2]
    pixel = (prompts[:, :2] * side).long().clamp(0, side - 1)
    clicks = (labels == POSITIVE) | (labels == NEGATIVE)
    hit = masks[:, pixel[:, 1], pixel[:, 0]].float()  # [N, P]
    positive = (hit * (labels == POSITIVE).float()).sum(1)
    negative = (hit * (labels == NEGATIVE).float()).sum(1)
    out = masks.new_zeros((n, PROMPT_FEATURES), dtype=torch.float32)
    out[:, 0], out[:, 1], out[:, 2] = positive, negative, float(clicks.any())
    corners = {int(label): prompts[labels == label, :2] for label in (BOX_TOP_LEFT, BOX_BOTTOM_RIGHT)}
    if len(corners[BOX_TOP_LEFT]) and len(corners[BOX_BOTTOM_RIGHT]) and n:
        (x0, y0), (x1, y1) = (corners[BOX_TOP_LEFT][0] * side).tolist(), (corners[BOX_BOTTOM_RIGHT][0] * side).tolist()
        inside = torch.zeros(side, side, dtype=torch.bool, device=masks.device)
        inside[int(round(min(y0, y1))):int(round(max(y0, y1))), int(round(min(x0, x1))):int(round(max(x0, x1)))] = True
        overlap = (masks & inside).flatten(1).float().sum(1)
        out[:, 3] = 1.0
        out[:, 4] = overlap / masks.flatten(1).float().sum(1).clamp(min=1)
        out[:, 5] = overlap / inside.float().sum().clamp(min=1)
    return out


class Segmenter(nn.Module):
    """Image + expression token states + clicks/box → which objects are referred (and from them, masks)."""

    def __init__(self, config: SegmenterConfig):
        super().__init__()
        self.config = config
        d = config.dim
        self.foreground = ForegroundNet(config.widths)
        self.fashion = FashionClassifier(**CLASSIFIER_CONFIG).requires_grad_(False) if config.fashion_prior else None
        self.objects = ObjectEncoder(config.object_widths, d, NUM_CLASSES if config.fashion_prior else 0)
        self.positions = FourierPositions(d)
        self.prompt_proj = nn.Linear(PROMPT_FEATURES, d)
        self.null_object = nn.Parameter(torch.randn(1, d) * 0.02)  # always present: words may look at "nothing"
        self.text_proj = nn.Sequential(nn.Linear(config.text_dim, d), nn.LayerNorm(d))
        self.blocks = nn.ModuleList(FusionBlock(d, config.heads) for _ in range(config.depth))
        self.final_norm = nn.LayerNorm(d)
        self.referred_head = _mlp(d, d, 1)
        self.register_buffer("pixel_mean", torch.tensor([0.45, 0.45, 0.45]).view(1, 3, 1, 1))
        self.register_buffer("pixel_std", torch.tensor([0.25, 0.25, 0.25]).view(1, 3, 1, 1))
        summary = 2 * config.widths[3]
        self.register_buffer("scene_mean", torch.zeros(summary))
        self.register_buffer("scene_precision", torch.zeros(summary, summary))
        self.register_buffer("scene_radius", torch.tensor(math.inf))

    def train(self, mode: bool = True) -> Segmenter:
        """Like nn.Module.train, but the frozen Fashion-MNIST classifier always stays in eval mode (no dropout)."""
        super().train(mode)
        if self.fashion is not None:
            self.fashion.eval()
        return self

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, S, S] in [0, 1] → the networks' input scale."""
        return (images - self.pixel_mean) / self.pixel_std

    def embed_objects(self, image: torch.Tensor, masks: torch.Tensor) -> ImageFeatures:
        """Object tokens of given masks [N, S, S] in one image [3, S, S] in [0, 1] (foreground left empty)."""
        return self.embed_objects_of([image], [masks])[0]

    def embed_objects_of(self, images: list[torch.Tensor], masks: list[torch.Tensor]) -> list[ImageFeatures]:
        """:meth:`embed_objects` of each image and its masks, with one object-encoder pass over all the objects."""
        masks = [m.bool() for m in masks]
        geometry = [object_geometry(m) for m in masks]
        counts = [m.shape[0] for m in masks]
        first, d = images[0], self.config.dim
        if sum(counts):
            present = [i for i, count in enumerate(counts) if count]
            crops = torch.cat([crop_objects(images[i], masks[i], geometry[i], self.config.crop) for i in present])
            colour = torch.cat([mean_colour(images[i], masks[i]) for i in present])
            prior = crops.new_zeros((crops.shape[0], 0))
            if self.fashion is not None:
                with torch.no_grad():
                    prior = self.fashion(fashion_view(crops)).log_softmax(-1)
            normalised = torch.cat([self.normalise(crops[:, :3]), crops[:, 3:]], dim=1)
            places = torch.cat([geometry[i] for i in present])
            tokens, categories, colours = self.objects(normalised, places, colour, prior)
            tokens = tokens + self.positions(places[:, 4:6])
        else:
            tokens, categories, colours = (first.new_zeros((0, width)) for width in (d, len(CATEGORIES),
                                                                                     len(COLOUR_KEYS)))
        return [ImageFeatures(image.new_zeros(image.shape[-2:]), m, g, *parts)
                for image, m, g, *parts in zip(images, masks, geometry, tokens.split(counts),
                                               categories.split(counts), colours.split(counts), strict=True)]

    @torch.no_grad()
    def encode_image(self, image: torch.Tensor) -> ImageFeatures:
        """Foreground, objects and object tokens of one image [3, S, S] in [0, 1] (S = config.image_size)."""
        return self.encode_images(image[None])[0]

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> list[ImageFeatures]:
        """:meth:`encode_image` of each image of a batch [B, 3, S, S], each network running once for the batch."""
        logits, summaries = self.foreground.encode(self.normalise(images))
        foregrounds = torch.sigmoid(logits)
        masks = [torch.from_numpy(find_objects((f > 0.5).cpu().numpy(), self.config.max_objects)).to(images.device)
                 for f in foregrounds]
        found = self.embed_objects_of(list(images), masks)
        for features, foreground, distance in zip(found, foregrounds, self.scene_distances(summaries).tolist(),
                                                  strict=True):
            features.foreground, features.scene_distance = foreground, distance
        return found

    def scene_distances(self, summaries: torch.Tensor) -> torch.Tensor:
        """Mahalanobis distances [B] of pooled U-Net features [B, F] to the training scenes' distribution."""
        centred = summaries - self.scene_mean
        return torch.einsum("bf,fg,bg->b", centred, self.scene_precision, centred).clamp(min=0).sqrt()

    def decode(self, objects: list[ImageFeatures], text_tokens: torch.Tensor, text_mask: torch.Tensor,
               prompts: torch.Tensor, return_attention: bool = False, heads_off: torch.Tensor | None = None
               ) -> SegmenterOutput:
        """Per-object logits for a batch of queries: ``objects[i]`` are query i's image features (the same
        object may serve several queries), text_tokens [B, T, 384], text_mask [B, T], prompts [B, P, 3];
        ``heads_off`` [B, layers, heads] of :attr:`stack` (1 = off, see :func:`heads_off_mask`) or None."""
        b, d = len(objects), self.config.dim
        n = max(1, max(f.tokens.shape[0] for f in objects))
        tokens = text_tokens.new_zeros((b, n, d))
        geometry = text_tokens.new_zeros((b, n, GEOMETRY_FEATURES))
        valid = torch.zeros(b, n, dtype=torch.bool, device=text_tokens.device)
        for i, features in enumerate(objects):
            count = features.tokens.shape[0]
            if count:
                evidence = prompt_evidence(features.masks, prompts[i])
                tokens[i, :count] = features.tokens + self.prompt_proj(evidence)
                geometry[i, :count] = features.geometry
                valid[i, :count] = True
        pairs = F.pad(pairwise_geometry(geometry) * (valid[:, :, None] & valid[:, None, :])[..., None],
                      (0, 0, 1, 0, 1, 0))
        objects_in = torch.cat([self.null_object[None].expand(b, -1, -1), tokens], dim=1)
        object_mask = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=valid.device), valid], dim=1)
        words = self.text_proj(text_tokens)
        word_mask = text_mask.bool()
        attention = {"objects_to_words": [], "words_to_objects": []} if return_attention else None
        per_block = len(ATTENTIONS)
        for index, block in enumerate(self.blocks):
            off = None if heads_off is None else heads_off[:, per_block * index:per_block * (index + 1)]
            objects_in, words = block(objects_in, object_mask, pairs, words, word_mask, attention, off)
        logits = self.referred_head(self.final_norm(objects_in[:, 1:]))[..., 0]
        return SegmenterOutput(logits.masked_fill(~valid, -30.0), valid, attention)


def candidate_sets(probabilities: np.ndarray, count: int = 3) -> list[tuple[np.ndarray, float]]:
    """The ``count`` most probable sets of referred objects, treating the objects' decisions as independent.

    The best set takes every object with p > 0.5; the next ones flip the least certain decisions one at a time.
    Each comes with its probability (the chance that exactly this set is meant, under independence).
    """
    p = np.clip(probabilities.astype(np.float64), 1e-6, 1 - 1e-6)
    best = p > 0.5
    certainty = np.where(best, p, 1 - p)
    base = float(np.prod(certainty))
    sets = [(best, base)]
    for index in np.argsort(certainty)[:count - 1]:
        flipped = best.copy()
        flipped[index] = ~flipped[index]
        sets.append((flipped, base * (1 - certainty[index]) / certainty[index]))
    while len(sets) < count:  # fewer objects than candidates: repeat the best set
        sets.append((best, base))
    return sets


@torch.no_grad()
def fit_scene_statistics(model: Segmenter, scenes: int = 1000) -> None:
    """Fit the model's scene statistics in place: the mean and precision of the pooled U-Net features over
    ``scenes`` training scenes, and as radius the distance that 0.5 % of ``scenes // 2`` held-out scenes exceed."""
    def summaries(seeds: range) -> torch.Tensor:
        chunks = []
        for start in range(seeds.start, seeds.stop, 50):
            images = np.stack([make_samples(seed, 1)[0].image for seed in range(start, min(start + 50, seeds.stop))])
            batch = torch.from_numpy(images).to(model.pixel_mean.device).permute(0, 3, 1, 2).float() / 255
            chunks.append(model.foreground.encode(model.normalise(batch))[1])
        return torch.cat(chunks).double()

    was_training = model.training
    model.eval()
    train = summaries(range(SCENE_STATISTICS_SEED, SCENE_STATISTICS_SEED + scenes))
    covariance = torch.cov(train.T) + 1e-3 * torch.eye(train.shape[1], dtype=train.dtype, device=train.device)
    model.scene_mean.copy_(train.mean(0))
    model.scene_precision.copy_(torch.linalg.inv(covariance))
    model.scene_radius.fill_(math.inf)
    held_out = summaries(range(HELDOUT_SEED_START + SCENE_STATISTICS_SEED, HELDOUT_SEED_START + SCENE_STATISTICS_SEED
                               + max(2, scenes // 2)))
    model.scene_radius.fill_(float(torch.quantile(model.scene_distances(held_out.float()), 0.995)))
    model.train(was_training)


def load_checkpoint(path) -> tuple[Segmenter, dict]:
    """A segmenter and its metadata from a weights file and the segmentation.json beside it."""
    meta_path = path.parent / CONFIG_NAME
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    model = Segmenter(SegmenterConfig.from_dict(meta.get("config", {})))
    model.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
    return model, meta


def save_weights(model: Segmenter, path) -> None:
    """Save fp32 weights (written to a temporary file first so a crash never leaves half a file)."""
    state = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp))
    os.replace(tmp, path)


def set_map(features: ImageFeatures, chosen: np.ndarray) -> torch.Tensor:
    """Probability map [S, S] of a set of objects: the foreground probability within two pixels of the chosen
    objects' masks (zero elsewhere), so that a threshold still trims their outlines."""
    if not chosen.any():
        return torch.zeros_like(features.foreground)
    union = features.masks[torch.from_numpy(chosen).to(features.masks.device)].any(0).float()
    near = F.max_pool2d(union[None, None], 5, stride=1, padding=2)[0, 0]
    return features.foreground * near


def candidate_maps(features: ImageFeatures, logits: torch.Tensor, count: int = 3
                   ) -> tuple[torch.Tensor, list[float], list[np.ndarray]]:
    """``count`` candidate maps [count, S, S] of one query, their scores and chosen-object flags (see
    :func:`candidate_sets`); ``logits`` are the query's per-object logits (padding excluded)."""
    probabilities = torch.sigmoid(logits.detach().float()).cpu().numpy()
    sets = candidate_sets(probabilities, count)
    maps = torch.stack([set_map(features, chosen) for chosen, _ in sets])
    return maps, [score for _, score in sets], [chosen for chosen, _ in sets]
