"""The embedded models of the Guidance panel: a small class-conditional DiT and a Fashion-MNIST classifier.

Both are saved as safetensors whose metadata holds the JSON config needed to rebuild them, so a weights file alone
is enough to reload a model.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import DiTTransformer2DModel
from safetensors.torch import load_file, save_file
from torch import nn

from backends.core.fashion_classifier import CLASSIFIER_CONFIG, IMAGE_SIZE, NUM_CLASSES, FashionClassifier

#: the label index of the "no class" embedding used for classifier-free guidance
NULL_CLASS = NUM_CLASSES
#: DiT timesteps are embedded like diffusers' DDPM steps, so flow time t ∈ [0, 1] is scaled by this
TIMESTEP_SCALE = 1000.0

DIT_CONFIG: dict = {
    "num_attention_heads": 6,
    "attention_head_dim": 32,
    "in_channels": 1,
    "out_channels": 1,
    "num_layers": 6,
    "sample_size": IMAGE_SIZE,
    "patch_size": 4,
    "num_embeds_ada_norm": NUM_CLASSES,
}


def build_dit(config: dict | None = None, fresh_init: bool = True) -> DiTTransformer2DModel:
    """A diffusers DiT for 28×28 one-channel images; ``fresh_init`` applies DiT's adaLN-Zero initialisation."""
    dit = DiTTransformer2DModel(**(config or DIT_CONFIG))
    for block in dit.transformer_blocks:
        # diffusers drops labels independently inside every block; training drops them once, consistently
        block.norm1.emb.class_embedder.dropout_prob = 0.0
    if fresh_init:
        _init_dit_weights(dit)
    return dit


def _init_dit_weights(dit: DiTTransformer2DModel) -> None:
    """Xavier linears, N(0, 0.02) label/time embeddings, zeroed adaLN modulation and output (as in the DiT paper)."""
    for module in dit.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    for block in dit.transformer_blocks:
        embedder = block.norm1.emb
        nn.init.normal_(embedder.class_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(embedder.timestep_embedder.linear_1.weight, std=0.02)
        nn.init.normal_(embedder.timestep_embedder.linear_2.weight, std=0.02)
        nn.init.zeros_(block.norm1.linear.weight)
        nn.init.zeros_(block.norm1.linear.bias)
    for layer in (dit.proj_out_1, dit.proj_out_2):
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)


def build_classifier(config: dict | None = None) -> FashionClassifier:
    """A fresh :class:`FashionClassifier`."""
    return FashionClassifier(**(config or CLASSIFIER_CONFIG))


def save_weights(module: nn.Module, path: Path, config: dict, dtype: torch.dtype, extra: dict | None = None) -> None:
    """Write ``module``'s weights as ``dtype`` safetensors with ``config`` (and ``extra``) as JSON metadata."""
    state = {name: tensor.detach().to("cpu", dtype).contiguous() for name, tensor in module.state_dict().items()}
    metadata = {"config": json.dumps(config), **{key: json.dumps(value) for key, value in (extra or {}).items()}}
    temporary = path.with_suffix(".tmp")
    save_file(state, str(temporary), metadata=metadata)
    temporary.chmod(0o644)
    temporary.replace(path)


def read_metadata(path: Path) -> dict:
    """The JSON metadata written by :func:`save_weights`, decoded."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        return {key: json.loads(value) for key, value in (handle.metadata() or {}).items()}


def _load_state(module: nn.Module, path: Path) -> None:
    """Load safetensors weights (any float dtype) into ``module``'s float32 parameters."""
    state = {name: tensor.float() for name, tensor in load_file(str(path)).items()}
    module.load_state_dict(state)


def load_dit(path: Path) -> DiTTransformer2DModel:
    """The DiT saved at ``path``, in float32 and eval mode."""
    dit = build_dit(read_metadata(path)["config"], fresh_init=False)
    _load_state(dit, path)
    return dit.eval()


def load_classifier(path: Path) -> FashionClassifier:
    """The classifier saved at ``path``, in float32 and eval mode."""
    classifier = build_classifier(read_metadata(path)["config"])
    _load_state(classifier, path)
    return classifier.eval()
