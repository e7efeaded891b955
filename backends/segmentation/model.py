"""HeadLab's referring segmenter: a small conv vision encoder, frozen MiniLM token states as the text side,
a SAM-style prompt encoder (clicks and box), a fusion transformer with inspectable text↔image attention heads
and a mask decoder that returns three candidate masks with predicted IoU scores.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812 - the usual torch alias
from safetensors.torch import load_file, save_file
from torch import nn

from backends.segmentation.data import BOX_BOTTOM_RIGHT, MAX_PROMPTS

WEIGHTS_NAME = "segmenter.safetensors"
CONFIG_NAME = "segmentation.json"


@dataclass
class SegmenterConfig:
    """Hyper-parameters needed to rebuild the model (stored in segmentation.json)."""

    image_size: int = 128
    dim: int = 128
    heads: int = 4
    depth: int = 3  # fusion blocks (run per query)
    encoder_depth: int = 2  # image-only transformer layers (run once per image, cached)
    text_dim: int = 384
    widths: tuple[int, int, int] = (32, 64, 128)
    num_masks: int = 3
    max_prompts: int = MAX_PROMPTS

    def to_dict(self) -> dict:
        """JSON-able form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> SegmenterConfig:
        """Inverse of :meth:`to_dict` (unknown keys are ignored)."""
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
        if "widths" in known:
            known["widths"] = tuple(known["widths"])
        return cls(**known)


@dataclass
class SegmenterOutput:
    """Candidate mask logits at the input resolution, predicted IoU scores and (optionally) attention maps."""

    masks: torch.Tensor  # [B, num_masks, H, W] logits
    scores: torch.Tensor  # [B, num_masks] predicted IoU in [0, 1]
    attention: dict[str, list[torch.Tensor]] | None = None  # "tokens_to_image"/"image_to_tokens": per layer


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


class ConvEncoder(nn.Module):
    """Conv encoder: features at strides 2, 4 and 8 (text-independent, so they can be cached per image)."""

    def __init__(self, widths: tuple[int, int, int]):
        super().__init__()
        w2, w4, w8 = widths
        self.stage2 = nn.Sequential(_conv(3, w2, 2), ResBlock(w2))
        self.stage4 = nn.Sequential(_conv(w2, w4, 2), ResBlock(w4), ResBlock(w4))
        self.stage8 = nn.Sequential(_conv(w4, w8, 2), ResBlock(w8), ResBlock(w8))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Features (f2, f4, f8) of a normalised image batch."""
        f2 = self.stage2(image)
        f4 = self.stage4(f2)
        return f2, f4, self.stage8(f4)


class FourierPositions(nn.Module):
    """SAM's random Fourier encoding of (x, y) in [0, 1], shared by the image grid and the prompts."""

    def __init__(self, dim: int, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("gaussian", torch.randn(2, dim // 2, generator=generator))

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        """[..., 2] → [..., dim]."""
        projected = (2 * coords - 1) @ self.gaussian * (2 * math.pi)
        return torch.cat([projected.sin(), projected.cos()], dim=-1)

    def grid(self, height: int, width: int) -> torch.Tensor:
        """Encoding of pixel centres of a height×width grid, [height·width, dim]."""
        ys = (torch.arange(height, device=self.gaussian.device) + 0.5) / height
        xs = (torch.arange(width, device=self.gaussian.device) + 0.5) / width
        coords = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)
        return self(coords.reshape(-1, 2))


class Attention(nn.Module):
    """Multi-head attention that can hand back its weights (for inspecting heads)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_mask: torch.Tensor | None = None, keep: list | None = None) -> torch.Tensor:
        """Attend from ``query`` [B, Nq, D] to ``key``/``value`` [B, Nk, D]; ``key_mask`` True = attend.

        When ``keep`` is a list, the attention weights [B, heads, Nq, Nk] are appended to it.
        """
        b, nq, d = query.shape
        split = lambda x: x.view(b, x.shape[1], self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q(query)), split(self.k(key)), split(self.v(value))
        mask = key_mask[:, None, None, :] if key_mask is not None else None
        if keep is None:
            mixed = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            logits = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
            if mask is not None:
                logits = logits.masked_fill(~mask, float("-inf"))
            weights = logits.float().softmax(-1).to(v.dtype)
            keep.append(weights.detach())
            mixed = weights @ v
        return self.out(mixed.transpose(1, 2).reshape(b, nq, d))


def _mlp(dim: int, hidden: int, out: int | None = None) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, out or dim))


class ImageBlock(nn.Module):
    """Pre-norm transformer layer over the image tokens (self-attention with positions, then an MLP)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.attn = Attention(dim, heads)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.mlp = _mlp(dim, 4 * dim)

    def forward(self, image: torch.Tensor, image_pos: torch.Tensor) -> torch.Tensor:
        """One layer."""
        x = self.norm1(image)
        image = image + self.attn(x + image_pos, x + image_pos, x)
        return image + self.mlp(self.norm2(image))


class FusionBlock(nn.Module):
    """Token self-attention, tokens→image cross-attention, token MLP, image→tokens cross-attention, image
    self-attention and a small image MLP.

    Tokens are the output tokens, the prompt tokens and the text tokens; image positions are re-added to the
    image queries/keys at every attention, as in SAM's two-way transformer.
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.token_self, self.image_self = Attention(dim, heads), Attention(dim, heads)
        self.token_to_image, self.image_to_token = Attention(dim, heads), Attention(dim, heads)
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(7))
        self.token_mlp, self.image_mlp = _mlp(dim, 4 * dim), _mlp(dim, 2 * dim)

    def forward(self, image: torch.Tensor, image_pos: torch.Tensor, tokens: torch.Tensor, token_mask: torch.Tensor,
                attention: dict[str, list] | None) -> tuple[torch.Tensor, torch.Tensor]:
        """One fusion step; appends the cross-attention weights to ``attention`` when it is given."""
        n = self.norms
        t = n[0](tokens)
        tokens = tokens + self.token_self(t, t, t, token_mask)
        t, x = n[1](tokens), n[2](image)
        tokens = tokens + self.token_to_image(t, x + image_pos, x, None,
                                              attention["tokens_to_image"] if attention is not None else None)
        tokens = tokens + self.token_mlp(n[3](tokens))
        t = n[4](tokens)
        image = image + self.image_to_token(x + image_pos, t, t, token_mask,
                                            attention["image_to_tokens"] if attention is not None else None)
        x = n[5](image)
        image = image + self.image_self(x + image_pos, x + image_pos, x)
        return image + self.image_mlp(n[6](image)), tokens


@dataclass
class ImageFeatures:
    """Everything the model computes from the image alone (cached per image by the service)."""

    tokens: torch.Tensor  # [B, h·w, dim] after the image-only transformer layers
    skip4: torch.Tensor  # [B, dim/2, 2h, 2w] projected stride-4 features
    skip2: torch.Tensor  # [B, dim/4, 4h, 4w] projected stride-2 features
    grid: tuple[int, int]  # (h, w)
    size: tuple[int, int]  # input (H, W)


class Segmenter(nn.Module):
    """Image + text token states + clicks/box → three candidate masks and their predicted IoU.

    SAM's split: :meth:`encode_image` (conv stages and image transformer layers, text-independent) runs once per
    image; :meth:`decode` (prompt encoder, text↔image fusion, mask decoder) runs per query.
    """

    def __init__(self, config: SegmenterConfig):
        super().__init__()
        self.config = config
        d = config.dim
        w2, w4, w8 = config.widths
        self.encoder = ConvEncoder(config.widths)
        self.image_proj = nn.Conv2d(w8, d, 1)
        self.image_blocks = nn.ModuleList(ImageBlock(d, config.heads) for _ in range(config.encoder_depth))
        self.skip4 = nn.Conv2d(w4, d // 2, 1)
        self.skip2 = nn.Conv2d(w2, d // 4, 1)
        self.positions = FourierPositions(d)
        self.text_proj = nn.Sequential(nn.Linear(config.text_dim, d), nn.LayerNorm(d))
        self.prompt_labels = nn.Embedding(BOX_BOTTOM_RIGHT + 1, d)
        self.output_tokens = nn.Parameter(torch.randn(1 + config.num_masks, d) * 0.02)
        self.blocks = nn.ModuleList(FusionBlock(d, config.heads) for _ in range(config.depth))
        self.final_norm = nn.LayerNorm(d)
        self.up4 = nn.ConvTranspose2d(d, d // 2, 2, 2)
        self.norm4 = nn.GroupNorm(8, d // 2)
        self.up2 = nn.ConvTranspose2d(d // 2, d // 4, 2, 2)
        self.refine2 = _conv(d // 4, d // 4)
        self.hyper = nn.ModuleList(_mlp(d, d, d // 4) for _ in range(config.num_masks))
        self.score_head = _mlp(d, d, config.num_masks)
        self.register_buffer("pixel_mean", torch.tensor([0.45, 0.45, 0.45]).view(1, 3, 1, 1))
        self.register_buffer("pixel_std", torch.tensor([0.25, 0.25, 0.25]).view(1, 3, 1, 1))

    def encode_image(self, image: torch.Tensor) -> ImageFeatures:
        """Image-only features of images [B, 3, S, S] in [0, 1] (S = config.image_size)."""
        f2, f4, f8 = self.encoder((image - self.pixel_mean) / self.pixel_std)
        h, w = f8.shape[-2:]
        tokens = self.image_proj(f8).flatten(2).transpose(1, 2)
        image_pos = self.positions.grid(h, w).to(tokens.dtype)[None]
        for block in self.image_blocks:
            tokens = block(tokens, image_pos)
        return ImageFeatures(tokens, self.skip4(f4), self.skip2(f2), (h, w), tuple(image.shape[-2:]))

    def decode(self, features: ImageFeatures, text_tokens: torch.Tensor, text_mask: torch.Tensor,
               prompts: torch.Tensor, return_attention: bool = False) -> SegmenterOutput:
        """Masks and scores for one query per image (features may be broadcast from a batch of one)."""
        img = features.tokens
        b = text_tokens.shape[0]
        if img.shape[0] != b:
            img = img.expand(b, -1, -1)
        h, w = features.grid
        image_pos = self.positions.grid(h, w).to(img.dtype)[None]
        labels = prompts[..., 2].long()
        prompt_tokens = (self.positions(prompts[..., :2]) + self.prompt_labels(labels.clamp(min=0))).to(img.dtype)
        out_tokens = self.output_tokens[None].expand(b, -1, -1).to(img.dtype)
        tokens = torch.cat([out_tokens, prompt_tokens, self.text_proj(text_tokens).to(img.dtype)], dim=1)
        token_mask = torch.cat([torch.ones(b, out_tokens.shape[1], dtype=torch.bool, device=img.device),
                                labels >= 0, text_mask.bool()], dim=1)
        attention = {"tokens_to_image": [], "image_to_tokens": []} if return_attention else None
        for block in self.blocks:
            img, tokens = block(img, image_pos, tokens, token_mask, attention)
        tokens = self.final_norm(tokens)
        grid = img.transpose(1, 2).reshape(b, -1, h, w)
        up = F.gelu(self.norm4(self.up4(grid) + features.skip4))
        up = self.refine2(self.up2(up) + features.skip2)
        weights = torch.stack([mlp(tokens[:, 1 + i]) for i, mlp in enumerate(self.hyper)], dim=1)
        masks = torch.einsum("bkc,bchw->bkhw", weights, up)
        masks = F.interpolate(masks.float(), size=features.size, mode="bilinear", align_corners=False)
        scores = torch.sigmoid(self.score_head(tokens[:, 0]).float())
        return SegmenterOutput(masks, scores, attention)

    def forward(self, image: torch.Tensor, text_tokens: torch.Tensor, text_mask: torch.Tensor,
                prompts: torch.Tensor, return_attention: bool = False) -> SegmenterOutput:
        """Segment.

        image [B, 3, S, S] in [0, 1]; text_tokens [B, T, 384]; text_mask [B, T] (True = real token); prompts
        [B, P, 3] as (x, y) in [0, 1] and a label (-1 pad, 0 negative click, 1 positive click, 2/3 box corners).
        Token order in the fusion: score token, mask tokens, prompts, text.
        """
        return self.decode(self.encode_image(image), text_tokens, text_mask, prompts, return_attention)


def load_checkpoint(path: Path) -> tuple[Segmenter, dict]:
    """A segmenter and its metadata from a weights file and the segmentation.json beside it."""
    meta_path = path.parent / CONFIG_NAME
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    model = Segmenter(SegmenterConfig.from_dict(meta.get("config", {})))
    state = {k: v.float() for k, v in load_file(str(path)).items()}
    model.load_state_dict(state)
    return model, meta


def save_weights(model: Segmenter, path: Path) -> None:
    """Save fp32 weights (written to a temporary file first so a crash never leaves half a file)."""
    state = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp))
    os.replace(tmp, path)
