"""Every training and held-out instruction embedded once with MiniLM, as a lookup table for training.

The table can be written to a safetensors file (``python -m backends.restoration.sentences FILE``) and read back
where MiniLM is not installed, e.g. on a lent GPU machine that gets only the repository and this file.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from backends.core.text_encoder import MiniLMEncoder
from backends.restoration.prompts import TASKS, heldout_paraphrases, training_templates


def _sentences() -> tuple[list[str], dict[str, list[int]]]:
    """All sentences (training templates by task, then held-out paraphrases) and the training rows per task."""
    templates = training_templates()
    heldout = heldout_paraphrases()
    sentences = [s for task in TASKS for s in templates[task]] + [s for task in TASKS for s in heldout[task]]
    train_ids, offset = {}, 0
    for task in TASKS:
        train_ids[task] = list(range(offset, offset + len(templates[task])))
        offset += len(templates[task])
    return sentences, train_ids


def _read(path: Path) -> tuple[list[str], torch.Tensor]:
    with safe_open(str(path), framework="pt") as stored:
        return json.loads(stored.metadata()["sentences"]), stored.get_tensor("embeddings")


class SentenceTable:
    """MiniLM sentence embeddings (N×384) of all instructions; lookups by sentence or by row index.

    With ``cache``, embeddings are read from that file when it holds exactly these sentences; otherwise they are
    computed with MiniLM (``encoder``, or a new one) and, with ``cache``, written there.
    """

    def __init__(self, device: torch.device | str = "cpu", cache: Path | None = None,
                 encoder: MiniLMEncoder | None = None):
        self.sentences, self.train_ids = _sentences()
        self.row = {sentence: index for index, sentence in enumerate(self.sentences)}
        stored_sentences, stored = _read(cache) if cache is not None and cache.exists() else (None, None)
        if stored_sentences == self.sentences:
            self.embeddings = stored.to(device)
            return
        encoder = encoder or MiniLMEncoder()
        chunks = [encoder(self.sentences[i:i + 256]).pooled for i in range(0, len(self.sentences), 256)]
        self.embeddings = torch.cat(chunks).to(device)
        if cache is not None:
            self.save(cache)

    def save(self, path: Path) -> Path:
        """Write the table (embeddings and their sentences) to a safetensors file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tensor = self.embeddings.detach().cpu().contiguous()
        save_file({"embeddings": tensor}, str(path), metadata={"sentences": json.dumps(self.sentences)})
        return path

    def embed(self, sentences: list[str]) -> torch.Tensor:
        """Embeddings of known sentences (N×384)."""
        return self.embeddings[[self.row[s] for s in sentences]]


if __name__ == "__main__":
    import sys

    target = Path(sys.argv[1] if len(sys.argv) > 1 else "restoration_sentences.safetensors")
    SentenceTable().save(target)
    print(f"wrote {target} ({target.stat().st_size / 2**20:.1f} MiB)")
