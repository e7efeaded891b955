"""Prompt-guided restorers behind one interface: the embedded TextPromptIR-style model and hub checkpoints.

An adapter embeds an instruction (cached), says which degradation it understood (probabilities over TASKS) and
restores a 1×3×H×W image in [0, 1], tile by tile for large images (see ``tiling``). Models with a head ``stack``
restore with heads switched off for one call (``heads_off``, the same heads in every tile).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch

from backends.core.head_rows import head_rows
from backends.core.heads import Head, HeadStack, names_no_head
from backends.core.service import ServiceError
from backends.core.text_encoder import MiniLMEncoder
from backends.restoration.anchors import InstructionAnchors
from backends.restoration.checkpoint import WEIGHTS_FILE, load_models
from backends.restoration.prompts import TASKS
from backends.restoration.tiling import OVERLAP, TILE, restore_tiled

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "restoration"
INSTRUCTIONS_FILE = "instructions.safetensors"  # MiniLM embeddings of the training instructions (anchors)
EMBEDDED_ID = "textprompt-ir"
TEXT_CACHE_SIZE = 256


class RestorerAdapter:
    """Base class: cached prompt embeddings, degradation probabilities and tiled restoration."""

    name: str
    device: str
    precision: str = "float32"
    #: the attention heads ``heads_off`` can switch off (None: the model exposes none)
    stack: HeadStack | None = None

    def __init__(self, name: str, device: str):
        self.name = name
        self.device = device
        self._embeddings: OrderedDict[str, torch.Tensor] = OrderedDict()

    def encode(self, prompt: str) -> torch.Tensor:
        """The model's conditioning vector for ``prompt`` (1×D on the device)."""
        raise NotImplementedError

    def task_probabilities(self, embedding: torch.Tensor) -> torch.Tensor:
        """Probabilities over TASKS (noise, haze, rain, none) from a conditioning vector."""
        raise NotImplementedError

    def restore_tile(self, tile: torch.Tensor, embedding: torch.Tensor,
                     heads_off: torch.Tensor | None = None) -> torch.Tensor:
        """Restore one tile (B×3×h×w on the device) with conditioning vectors (1 or B rows) and, for models with a
        ``stack``, per-row heads switched off ([B, layers, heads], 1 = off)."""
        raise NotImplementedError

    def parse_heads(self, spec: str) -> list[Head]:
        """The heads a head list names in this model's ``stack``; a :class:`ServiceError` for a bad list, or for any
        head at all when the model has no stack."""
        if names_no_head(spec):
            return []
        if self.stack is None:
            raise self.no_stack()
        return self.stack.parse(spec)

    def no_stack(self) -> ServiceError:
        """The error for asking a model without a head stack about its heads."""
        return ServiceError(f"{self.name} exposes no attention heads to switch off or to map (heads_off and the head "
                            f"atlas need the embedded model {EMBEDDED_ID!r}); leave heads_off empty")

    def steering(self, prompt: str) -> tuple[torch.Tensor, str | None]:
        """The conditioning vector ``restore`` uses for ``prompt`` and, for models that steer by a training
        instruction instead of the prompt's own embedding, that instruction (here: the prompt's embedding, None)."""
        return self.embed(prompt), None

    def embed(self, prompt: str) -> torch.Tensor:
        """``encode`` with a bounded LRU cache keyed by the prompt."""
        if prompt in self._embeddings:
            self._embeddings.move_to_end(prompt)
            return self._embeddings[prompt]
        embedding = self.encode(prompt)
        self._embeddings[prompt] = embedding
        while len(self._embeddings) > TEXT_CACHE_SIZE:
            self._embeddings.popitem(last=False)
        return embedding

    @torch.no_grad()
    def understand(self, prompt: str) -> dict[str, float]:
        """Degradation probabilities for ``prompt``, by task name."""
        probabilities = self.task_probabilities(self.embed(prompt)).flatten().tolist()
        return dict(zip(TASKS, probabilities, strict=True))

    @torch.no_grad()
    def restore(self, image: torch.Tensor, prompt: str, tile: int = TILE, overlap: int = OVERLAP,
                heads_off: Sequence[Head] = ()) -> torch.Tensor:
        """Restore a 1×3×H×W CPU tensor in [0, 1] following ``prompt``, with ``heads_off`` (heads of ``stack``)
        switched off in every tile; large images go tile by tile."""
        embedding, _ = self.steering(prompt)
        off = None
        if heads_off:
            if self.stack is None:
                raise self.no_stack()
            off = head_rows([heads_off], self.stack.layers, self.stack.heads).to(self.device)

        def run(part: torch.Tensor) -> torch.Tensor:
            return self.restore_tile(part.to(self.device), embedding, off).clamp(0, 1)

        return restore_tiled(run, image, tile, overlap).clamp(0, 1)


def cpu_has_native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX), where bf16 autocast is ~1.7× faster."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, check, lambda: False)() for check in checks)


class EmbeddedRestorer(RestorerAdapter):
    """HeadLab's TextPromptIR-style restorer and prompt classifier, with the frozen MiniLM text encoder.

    The restorer is steered by the training instruction nearest to the prompt within the understood task
    (``anchors``). On CPUs with native bfloat16 it runs under bf16 autocast (outputs differ from fp32 by far less
    than one 8-bit grey level: ≥ 65 dB PSNR between the two on held-out photos); elsewhere it runs in fp32.
    """

    def __init__(self, weights: str | Path, device: str = "cpu", encoder: MiniLMEncoder | None = None,
                 bfloat16: bool | None = None):
        super().__init__(EMBEDDED_ID, device)
        models = load_models(weights, device)
        self.restorer, self.classifier = models.restorer, models.classifier
        self.metadata = models.metadata
        self.encoder = (encoder or MiniLMEncoder()).to(device)
        self.anchors = InstructionAnchors.load(ASSETS / INSTRUCTIONS_FILE, self.encoder)
        self.bfloat16 = (device == "cpu" and cpu_has_native_bfloat16()) if bfloat16 is None else bfloat16
        self.precision = "bfloat16 autocast" if self.bfloat16 else "float32"
        self.stack = self.restorer.head_stack()
        self.weights_sha256 = hashlib.sha256(Path(weights).read_bytes()).hexdigest()

    def fingerprint(self) -> str:
        """What this model's results depend on: its name and the first 16 hex digits of its weights' SHA-256."""
        return f"{self.name}-{self.weights_sha256[:16]}"

    @classmethod
    def load(cls, folder: str | Path = ASSETS, device: str = "cpu") -> EmbeddedRestorer:
        """The embedded model from ``folder`` (default assets/restoration)."""
        weights = Path(folder) / WEIGHTS_FILE
        if not weights.exists():
            raise FileNotFoundError(f"embedded restoration weights are missing: {weights} (run "
                                    "`python -m backends.restoration.train --out assets/restoration`)")
        return cls(weights, device)

    def encode(self, prompt: str) -> torch.Tensor:
        """MiniLM's pooled sentence embedding (1×384)."""
        return self.encoder([prompt]).pooled

    def task_probabilities(self, embedding: torch.Tensor) -> torch.Tensor:
        """Softmax of the prompt classifier."""
        return torch.softmax(self.classifier(embedding), dim=-1)

    def steering(self, prompt: str) -> tuple[torch.Tensor, str]:
        """The embedding and text of the training instruction nearest to ``prompt`` in the understood task."""
        return self.anchors.steer(self.classifier, self.embed(prompt))

    def autocast(self) -> torch.autocast:
        """The precision the restorer runs in: bf16 autocast where the CPU supports it natively, else fp32."""
        return torch.autocast("cuda" if self.device.startswith("cuda") else "cpu", dtype=torch.bfloat16,
                              enabled=self.bfloat16)

    def restore_tile(self, tile: torch.Tensor, embedding: torch.Tensor,
                     heads_off: torch.Tensor | None = None) -> torch.Tensor:
        """One TextPromptIR forward pass (in ``autocast``'s precision)."""
        with self.autocast():
            return self.restorer(tile, embedding.expand(tile.shape[0], -1), heads_off).float()
