"""TextPromptIR-style restoration network and the prompt classifier.

The restorer is a Restormer-like U-Net (levels of width C, 2C, 4C, 8C; MDTA channel attention and GDFN gated
feed-forward blocks). The instruction's sentence embedding (all-MiniLM-L6-v2, 384-d) goes through an MLP to a
prompt vector e, which every block injects before both its attention and its feed-forward branch:
e_C = Linear(e) gated by ECA channel attention of the features, then h = LN(x)·(1 + Linear(e_C)) + Linear(e_C).

The MDTA modules in forward order (encoders, latent, decoders, refinement) form the restorer's head stack
(``TextPromptIR.head_stack``). ``forward`` takes per-row interventions for one call: ``heads_off`` [B, layers, heads]
(1 = that head's output, its slice of attention @ v, is zeroed) and ``prompt_off`` [B, layers] (1 = that block's
two prompt modulations are the identity).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F  # noqa: N812 - the usual torch alias
from torch import nn

from backends.core.heads import HeadStack
from backends.core.text_encoder import EMBED_DIM
from backends.restoration.prompts import TASKS


@dataclass
class RestorerConfig:
    """Hyper-parameters needed to rebuild the restorer."""

    width: int = 24
    blocks: tuple[int, int, int, int] = (1, 2, 2, 2)
    heads: tuple[int, int, int, int] = (1, 2, 4, 8)
    refinement_blocks: int = 1
    ffn_expansion: float = 2.66
    prompt_dim: int = 128
    text_dim: int = EMBED_DIM

    def to_dict(self) -> dict:
        """JSON-able form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> RestorerConfig:
        """Inverse of ``to_dict`` (lists become tuples)."""
        return cls(**{key: tuple(value) if isinstance(value, list) else value for key, value in values.items()})


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of B×C×H×W maps."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise each pixel's channel vector."""
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class PromptModulation(nn.Module):
    """Scale/shift of features by the prompt vector, gated per channel by ECA attention of the features."""

    def __init__(self, channels: int, prompt_dim: int):
        super().__init__()
        self.to_channels = nn.Linear(prompt_dim, channels)
        self.eca = nn.Conv1d(1, 1, kernel_size=3, padding=1, bias=False)
        self.scale = nn.Linear(channels, channels)
        self.shift = nn.Linear(channels, channels)
        for layer in (self.scale, self.shift):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, prompt: torch.Tensor, off: torch.Tensor | None = None) -> torch.Tensor:
        """x: B×C×H×W features, prompt: B×prompt_dim; ``off`` [B] (1 = this row passes x through unchanged)."""
        gate = torch.sigmoid(self.eca(x.mean(dim=(2, 3)).unsqueeze(1)).squeeze(1))
        prompt_channels = self.to_channels(prompt) * gate
        scale = self.scale(prompt_channels)[..., None, None]
        shift = self.shift(prompt_channels)[..., None, None]
        if off is not None:
            keep = (1 - off).to(scale.dtype)[:, None, None, None]
            scale, shift = scale * keep, shift * keep
        return x * (1 + scale) + shift


class MDTA(nn.Module):
    """Multi-Dconv head transposed attention: attention across channels (C_h × C_h per head)."""

    def __init__(self, channels: int, heads: int):
        super().__init__()
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Conv2d(channels, channels * 3, 1, bias=False)
        self.qkv_dw = nn.Conv2d(channels * 3, channels * 3, 3, padding=1, groups=channels * 3, bias=False)
        self.project = nn.Conv2d(channels, channels, 1, bias=False)

    def forward(self, x: torch.Tensor, heads_off: torch.Tensor | None = None) -> torch.Tensor:
        """Channel attention over all pixels; ``heads_off`` [B, ≥ heads] (1 = zero that head's output in that row)."""
        batch, channels, height, width = x.shape
        q, k, v = self.qkv_dw(self.qkv(x)).chunk(3, dim=1)
        q, k, v = (t.reshape(batch, self.heads, channels // self.heads, height * width) for t in (q, k, v))
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        attention = torch.softmax((q @ k.transpose(-2, -1)) * self.temperature, dim=-1)
        heads = attention @ v
        if heads_off is not None:
            heads = heads * (1 - heads_off[:, :self.heads]).to(heads.dtype)[:, :, None, None]
        return self.project(heads.reshape(batch, channels, height, width))


class GDFN(nn.Module):
    """Gated-Dconv feed-forward network: GELU(x1)·x2 after a depthwise 3×3."""

    def __init__(self, channels: int, expansion: float):
        super().__init__()
        hidden = int(channels * expansion)
        self.expand = nn.Conv2d(channels, hidden * 2, 1, bias=False)
        self.depthwise = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden * 2, bias=False)
        self.project = nn.Conv2d(hidden, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Gated feed-forward."""
        gate, value = self.depthwise(self.expand(x)).chunk(2, dim=1)
        return self.project(F.gelu(gate) * value)


class PromptBlock(nn.Module):
    """Transformer block: x += MDTA(mod(LN(x), e)); x += GDFN(mod(LN(x), e))."""

    def __init__(self, channels: int, heads: int, expansion: float, prompt_dim: int):
        super().__init__()
        self.norm_attention = ChannelLayerNorm(channels)
        self.modulate_attention = PromptModulation(channels, prompt_dim)
        self.attention = MDTA(channels, heads)
        self.norm_ffn = ChannelLayerNorm(channels)
        self.modulate_ffn = PromptModulation(channels, prompt_dim)
        self.ffn = GDFN(channels, expansion)

    def forward(self, x: torch.Tensor, prompt: torch.Tensor, heads_off: torch.Tensor | None = None,
                prompt_off: torch.Tensor | None = None) -> torch.Tensor:
        """One prompt-conditioned block; ``heads_off`` [B, heads] and ``prompt_off`` [B] are this block's rows."""
        x = x + self.attention(self.modulate_attention(self.norm_attention(x), prompt, prompt_off), heads_off)
        return x + self.ffn(self.modulate_ffn(self.norm_ffn(x), prompt, prompt_off))


class PromptStage(nn.Module):
    """A sequence of prompt blocks at one resolution (``TextPromptIR.body`` runs them)."""

    def __init__(self, channels: int, depth: int, heads: int, expansion: float, prompt_dim: int):
        super().__init__()
        self.blocks = nn.ModuleList(PromptBlock(channels, heads, expansion, prompt_dim) for _ in range(depth))


#: the U-Net's state before one block: the features and the encoder skips not yet used
Trace = tuple[torch.Tensor, tuple[torch.Tensor, ...]]


def _downsample(channels: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(channels, channels // 2, 3, padding=1, bias=False), nn.PixelUnshuffle(2))


def _upsample(channels: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(channels, channels * 2, 3, padding=1, bias=False), nn.PixelShuffle(2))


class TextPromptIR(nn.Module):
    """Prompt-guided all-in-one restorer: (degraded image, sentence embedding) → restored image."""

    PAD_MULTIPLE = 8

    def __init__(self, config: RestorerConfig | None = None):
        super().__init__()
        self.config = config = config or RestorerConfig()
        c, expansion, prompt_dim = config.width, config.ffn_expansion, config.prompt_dim
        widths = (c, 2 * c, 4 * c, 8 * c)
        self.prompt_mlp = nn.Sequential(
            nn.Linear(config.text_dim, prompt_dim), nn.GELU(), nn.Linear(prompt_dim, prompt_dim)
        )

        def stage(channels: int, level: int, depth: int | None = None) -> PromptStage:
            count = config.blocks[level] if depth is None else depth
            return PromptStage(channels, count, config.heads[level], expansion, prompt_dim)

        self.embed = nn.Conv2d(3, c, 3, padding=1, bias=False)
        self.encoders = nn.ModuleList(stage(widths[level], level) for level in range(3))
        self.downs = nn.ModuleList(_downsample(widths[level]) for level in range(3))
        self.latent = stage(widths[3], 3)
        self.ups = nn.ModuleList(_upsample(widths[level + 1]) for level in range(3))
        # every decoder level reduces the skip concatenation back to its width (Restormer keeps 2C at full
        # resolution; C keeps 512×512 inference within the CPU budget)
        self.reduces = nn.ModuleList(nn.Conv2d(widths[level] * 2, widths[level], 1, bias=False) for level in range(3))
        self.decoders = nn.ModuleList(stage(widths[level], level) for level in range(3))
        self.refinement = stage(c, 0, config.refinement_blocks)
        self.output = nn.Conv2d(c, 3, 3, padding=1, bias=False)
        nn.init.zeros_(self.output.weight)  # start as the identity (global residual), learn the correction

    def named_blocks(self) -> list[tuple[str, PromptBlock]]:
        """Every block in forward order (encoders, latent, decoders, refinement), named like "encoder 1 · block 0"."""
        return [(f"{name} · block {index}", block) for name, stage in self._stages()
                for index, block in enumerate(stage.blocks)]

    def _stages(self) -> list[tuple[str, PromptStage]]:
        return [*((f"encoder {level + 1}", stage) for level, stage in enumerate(self.encoders)),
                ("latent", self.latent), *((f"decoder {level + 1}", self.decoders[level]) for level in (2, 1, 0)),
                ("refinement", self.refinement)]

    def head_stack(self) -> HeadStack:
        """The MDTA attention of every block as a head stack (layers in forward order, of uneven width)."""
        named = self.named_blocks()
        widths = tuple(block.attention.heads for _, block in named)
        return HeadStack("TextPromptIR MDTA channel attention", len(named), max(widths), widths,
                         tuple(name for name, _ in named))

    def pad(self, image: torch.Tensor) -> torch.Tensor:
        """``image`` reflect-padded at the bottom and right to a multiple of ``PAD_MULTIPLE``."""
        height, width = image.shape[-2:]
        pad_h, pad_w = (-height) % self.PAD_MULTIPLE, (-width) % self.PAD_MULTIPLE
        return F.pad(image, (0, pad_w, 0, pad_h), mode="reflect") if pad_h or pad_w else image

    def forward(self, image: torch.Tensor, text_embedding: torch.Tensor, heads_off: torch.Tensor | None = None,
                prompt_off: torch.Tensor | None = None) -> torch.Tensor:
        """image: B×3×H×W in [0, 1]; text_embedding: B×384 pooled MiniLM embedding. Returns B×3×H×W.

        ``heads_off`` [B, layers, heads] and ``prompt_off`` [B, layers] (see the module docstring) act on this call
        only; None (the default) changes nothing.
        """
        padded = self.pad(image)
        x = self.body(self.embed(padded), (), self.prompt_mlp(text_embedding), heads_off, prompt_off)
        return (self.output(x) + padded)[..., :image.shape[-2], :image.shape[-1]]

    def body(self, x: torch.Tensor, skips: tuple[torch.Tensor, ...], prompt: torch.Tensor,
             heads_off: torch.Tensor | None = None, prompt_off: torch.Tensor | None = None, start: int = 0,
             trace: list[Trace] | None = None) -> torch.Tensor:
        """The U-Net from the input of block ``start`` (its features ``x`` and the ``skips`` then held; block 0: the
        embedded image and no skips) to the refinement's output. ``prompt`` is the prompt MLP's output; ``trace``,
        when given, receives the state before each block run (a later call can resume from it)."""
        done, pending = 0, list(skips)

        def run(stage: PromptStage, x: torch.Tensor) -> torch.Tensor:
            nonlocal done
            for block in stage.blocks:
                if done >= start:
                    if trace is not None:
                        trace.append((x, tuple(pending)))
                    x = block(x, prompt, None if heads_off is None else heads_off[:, done],
                              None if prompt_off is None else prompt_off[:, done])
                done += 1
            return x

        for encoder, down in zip(self.encoders, self.downs, strict=True):
            x = run(encoder, x)
            if done > start:
                pending.append(x)
                x = down(x)
        x = run(self.latent, x)
        for level in (2, 1, 0):
            if done > start:
                x = self.reduces[level](torch.cat([self.ups[level](x), pending.pop()], dim=1))
            x = run(self.decoders[level], x)
        return run(self.refinement, x)


class PromptClassifier(nn.Module):
    """Sentence embedding → logits over TASKS (noise, haze, rain, none)."""

    def __init__(self, text_dim: int = EMBED_DIM, hidden: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(text_dim, hidden), nn.GELU(), nn.Dropout(0.2), nn.Linear(hidden, len(TASKS)))

    def forward(self, text_embedding: torch.Tensor) -> torch.Tensor:
        """Logits B×4."""
        return self.net(text_embedding)


@dataclass
class RestorationModels:
    """The restorer and the prompt classifier that ship together in one safetensors file."""

    restorer: TextPromptIR
    classifier: PromptClassifier
    metadata: dict = field(default_factory=dict)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flat state dict with 'restorer.' and 'classifier.' prefixes."""
        state = {f"restorer.{k}": v for k, v in self.restorer.state_dict().items()}
        state.update({f"classifier.{k}": v for k, v in self.classifier.state_dict().items()})
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load a flat prefixed state dict (strict)."""
        for prefix, module in (("restorer.", self.restorer), ("classifier.", self.classifier)):
            module.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
