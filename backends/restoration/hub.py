"""The hub path: InstructIR ("High-Quality Image Restoration Following Human Instructions", Conde et al. 2024).

TextPromptIR publishes no checkpoint; InstructIR is the public prompt-guided all-in-one restorer in a loadable
format: hub repo ``marcosv/InstructIR`` holds ``im_instructir-7d.pt`` (the NAFNet-based image model, state dict) and
``lm_instructir-7d.pt`` (the head on top of the frozen sentence encoder ``TaylorAI/bge-micro-v2``), configured as in
its ``configs/eval5d.yml``: width 32, encoder blocks (2, 2, 4, 8), 4 middle blocks, decoder blocks (2, 2, 2, 2),
text dim 256, 7 degradation classes. The architecture is re-implemented here with the same parameter names, so the
state dicts load strictly; state dicts are read with ``torch.load(weights_only=True)`` (no pickled code runs).

A local folder with the two .pt files (and optionally ``text_encoder/``, a sentence encoder folder) works offline.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812 - the usual torch alias
from torch import nn
from transformers import AutoModel, AutoTokenizer

from backends.core.service import hub_load_error
from backends.restoration.adapters import RestorerAdapter
from backends.restoration.prompts import TASKS

HUB_ID = "marcosv/InstructIR"
IMAGE_FILE = "im_instructir-7d.pt"
HEAD_FILE = "lm_instructir-7d.pt"
TEXT_ENCODER_ID = "TaylorAI/bge-micro-v2"
# InstructIR's degradation classes in the order of its config comment, and how they map to HeadLab's tasks
HUB_CLASSES = ("noise", "blur", "rain", "haze", "low-light", "enhancement", "upsampling")
IMAGE_CONFIG = {"width": 32, "encoder_blocks": (2, 2, 4, 8), "middle_blocks": 4, "decoder_blocks": (2, 2, 2, 2),
                "text_dim": 256}
HEAD_CONFIG = {"sentence_dim": 384, "hidden": 256}


class LayerNorm2d(nn.Module):
    """LayerNorm over channels with parameters named ``weight``/``bias`` (NAFNet layout)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise each pixel's channel vector."""
        mean = x.mean(1, keepdim=True)
        variance = (x - mean).pow(2).mean(1, keepdim=True)
        return self.weight.view(1, -1, 1, 1) * (x - mean) / (variance + self.eps).sqrt() + self.bias.view(1, -1, 1, 1)


class NAFBlock(nn.Module):
    """NAFNet block: LN → 1×1 → depthwise 3×3 → SimpleGate → simplified channel attention → 1×1, then a gated FFN."""

    def __init__(self, channels: int):
        super().__init__()
        wide = 2 * channels
        self.conv1 = nn.Conv2d(channels, wide, 1)
        self.conv2 = nn.Conv2d(wide, wide, 3, padding=1, groups=wide)
        self.conv3 = nn.Conv2d(channels, channels, 1)
        self.sca = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, channels, 1))
        self.conv4 = nn.Conv2d(channels, wide, 1)
        self.conv5 = nn.Conv2d(channels, channels, 1)
        self.norm1 = LayerNorm2d(channels)
        self.norm2 = LayerNorm2d(channels)
        self.beta = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, channels, 1, 1))

    @staticmethod
    def _gate(x: torch.Tensor) -> torch.Tensor:
        first, second = x.chunk(2, dim=1)
        return first * second

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual spatial mixing and residual feed-forward."""
        h = self._gate(self.conv2(self.conv1(self.norm1(x))))
        y = x + self.conv3(h * self.sca(h)) * self.beta
        return y + self.conv5(self._gate(self.conv4(self.norm2(y)))) * self.gamma


class InstructionBlock(nn.Module):
    """InstructIR's instruction condition block: features scaled, gated by sigmoid(Linear(text)), refined."""

    def __init__(self, channels: int, text_dim: int):
        super().__init__()
        self.fc = nn.Linear(text_dim, channels)
        self.block = NAFBlock(channels)
        self.beta = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Text-routed residual refinement."""
        gate = torch.sigmoid(self.fc(text))[..., None, None]
        return x + self.block((x * self.gamma + self.beta) * gate)


class InstructIRNet(nn.Module):
    """InstructIR's image model (NAFNet U-Net with instruction blocks after every encoder/decoder level)."""

    def __init__(self, width: int = 32, encoder_blocks: tuple[int, ...] = (2, 2, 4, 8), middle_blocks: int = 4,
                 decoder_blocks: tuple[int, ...] = (2, 2, 2, 2), text_dim: int = 256):
        super().__init__()
        self.intro = nn.Conv2d(3, width, 3, padding=1)
        self.ending = nn.Conv2d(width, 3, 3, padding=1)
        self.encoders, self.enc_cond, self.downs = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        channels = width
        for count in encoder_blocks:
            self.encoders.append(nn.Sequential(*(NAFBlock(channels) for _ in range(count))))
            self.enc_cond.append(InstructionBlock(channels, text_dim))
            self.downs.append(nn.Conv2d(channels, 2 * channels, 2, 2))
            channels *= 2
        self.middle_blks = nn.Sequential(*(NAFBlock(channels) for _ in range(middle_blocks)))
        self.ups, self.decoders, self.dec_cond = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for count in decoder_blocks:
            self.ups.append(nn.Sequential(nn.Conv2d(channels, 2 * channels, 1, bias=False), nn.PixelShuffle(2)))
            channels //= 2
            self.decoders.append(nn.Sequential(*(NAFBlock(channels) for _ in range(count))))
            self.dec_cond.append(InstructionBlock(channels, text_dim))
        self.multiple = 2 ** len(encoder_blocks)

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """image: B×3×H×W in [0, 1], text: B×text_dim instruction vector."""
        height, width = image.shape[-2:]
        padded = F.pad(image, (0, (-width) % self.multiple, 0, (-height) % self.multiple))
        x = self.intro(padded)
        skips = []
        for encoder, condition, down in zip(self.encoders, self.enc_cond, self.downs, strict=True):
            x = condition(encoder(x), text)
            skips.append(x)
            x = down(x)
        x = self.middle_blks(x)
        for decoder, up, skip, condition in zip(self.decoders, self.ups, skips[::-1], self.dec_cond, strict=True):
            x = condition(decoder(up(x) + skip), text)
        return (self.ending(x) + padded)[..., :height, :width]


class InstructionHead(nn.Module):
    """InstructIR's head on the sentence embedding: normalised instruction vector and degradation logits."""

    def __init__(self, sentence_dim: int = 384, hidden: int = 256, classes: int = len(HUB_CLASSES)):
        super().__init__()
        self.fc1 = nn.Linear(sentence_dim, hidden)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, sentence: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(instruction vector, class logits)."""
        vector = F.normalize(self.fc1(sentence), dim=-1)
        return vector, self.fc2(vector)


def _resolve(source: str, filename: str) -> Path:
    """``filename`` inside a local folder ``source``, else downloaded from the hub repo ``source``."""
    folder = Path(source)
    if folder.is_dir():
        return folder / filename
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(repo_id=source, filename=filename))


class InstructIRRestorer(RestorerAdapter):
    """InstructIR behind the adapter interface: its own head gives the understood degradation."""

    def __init__(self, name: str, image_model: InstructIRNet, head: InstructionHead, tokenizer, text_model,
                 device: str = "cpu"):
        super().__init__(name, device)
        self.image_model = image_model.to(device).eval()
        self.head = head.to(device).eval()
        self.tokenizer, self.text_model = tokenizer, text_model.to(device).eval()
        # HUB_CLASSES → TASKS: noise, haze and rain map to themselves, every other class counts as "none"
        mapping = torch.zeros(len(HUB_CLASSES), len(TASKS))
        for index, label in enumerate(HUB_CLASSES):
            mapping[index, TASKS.index(label) if label in TASKS else TASKS.index("none")] = 1.0
        self.class_to_task = mapping.to(device)

    @classmethod
    def from_pretrained(cls, source: str = HUB_ID, device: str = "cpu") -> InstructIRRestorer:
        """Load from the hub id or a local folder (with ``text_encoder/`` used instead of bge-micro-v2 if present)."""
        try:
            image_model, head = InstructIRNet(**IMAGE_CONFIG), InstructionHead(**HEAD_CONFIG)
            image_model.load_state_dict(torch.load(_resolve(source, IMAGE_FILE), map_location="cpu",
                                                   weights_only=True))
            head.load_state_dict(torch.load(_resolve(source, HEAD_FILE), map_location="cpu", weights_only=True))
            local_encoder = Path(source) / "text_encoder"
            encoder_source = str(local_encoder) if local_encoder.is_dir() else TEXT_ENCODER_ID
            tokenizer = AutoTokenizer.from_pretrained(encoder_source)
            text_model = AutoModel.from_pretrained(encoder_source)
        except Exception as error:  # offline, missing files or a mismatching checkpoint
            raise hub_load_error(source, error) from error
        return cls(source, image_model, head, tokenizer, text_model, device)

    @torch.no_grad()
    def encode(self, prompt: str) -> torch.Tensor:
        """Mean-pooled, L2-normalised sentence embedding → InstructIR's 256-d instruction vector."""
        batch = self.tokenizer([prompt], padding=True, truncation=True, return_tensors="pt").to(self.device)
        states = self.text_model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        sentence = F.normalize((states * mask).sum(1) / mask.sum(1).clamp(min=1e-9), dim=-1)
        return self.head(sentence)[0]

    def task_probabilities(self, embedding: torch.Tensor) -> torch.Tensor:
        """InstructIR's own degradation classifier, folded onto TASKS."""
        return torch.softmax(self.head.fc2(embedding), dim=-1) @ self.class_to_task

    def restore_tile(self, tile: torch.Tensor, embedding: torch.Tensor,
                     heads_off: torch.Tensor | None = None) -> torch.Tensor:
        """One InstructIR forward pass (InstructIR has no head stack: ``heads_off`` must be None)."""
        if heads_off is not None:
            raise ValueError("InstructIR has no head stack to switch heads off in")
        return self.image_model(tile, embedding.expand(tile.shape[0], -1))
