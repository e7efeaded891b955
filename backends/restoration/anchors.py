"""Steering by the training instruction closest in meaning: a new wording is mapped onto the instructions the network
was trained on before it conditions the restorer.

The restorer only ever saw the embeddings of its ~290 training instructions per task (slightly jittered). Its response
to an embedding far from all of them is unreliable: with the step-12,783 weights, "Defog this photo please" —
understood as haze with 100 % confidence by the classifier — left the haze in (−11 dB against a training wording on
the benchmark photos; bench/bench_restoration.py measures all held-out wordings both ways). TextPromptIR avoids
this by fine-tuning its BERT as a degradation classifier; HeadLab keeps MiniLM frozen, so it steers with the training
instruction of the understood task whose embedding is nearest (cosine) to the user's.
"""

from __future__ import annotations

from pathlib import Path

import torch

from backends.core.text_encoder import MiniLMEncoder
from backends.restoration.model import PromptClassifier
from backends.restoration.prompts import TASKS
from backends.restoration.sentences import SentenceTable


class InstructionAnchors:
    """The training instructions' MiniLM embeddings by task, and the nearest one to a new instruction."""

    def __init__(self, table: SentenceTable):
        self.sentences = {task: [table.sentences[row] for row in table.train_ids[task]] for task in TASKS}
        self.embeddings = {task: table.embeddings[table.train_ids[task]] for task in TASKS}

    @classmethod
    def load(cls, cache: Path, encoder: MiniLMEncoder | None = None) -> InstructionAnchors:
        """Anchors from the cached sentence table ``cache`` (recomputed with MiniLM and rewritten when stale)."""
        return cls(SentenceTable(cache=cache, encoder=encoder))

    def nearest(self, embedding: torch.Tensor, task: str) -> tuple[torch.Tensor, str]:
        """The training instruction of ``task`` nearest to ``embedding`` (1×384, L2-normalised): its embedding
        (1×384, on ``embedding``'s device) and its text."""
        rows = self.embeddings[task].to(embedding.device)
        index = int((rows @ embedding.flatten()).argmax())
        return rows[index].view(1, -1), self.sentences[task][index]

    @torch.no_grad()
    def steer(self, classifier: PromptClassifier, embedding: torch.Tensor) -> tuple[torch.Tensor, str]:
        """``nearest`` within the task the prompt classifier understands ``embedding`` as."""
        task = TASKS[int(classifier(embedding.view(1, -1)).argmax())]
        return self.nearest(embedding, task)
