"""Model adapters of the Heads panel: the embedded models for real, tiny random hub-style models built here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from gguf import GGUFReader
from gguf.quants import dequantize
from safetensors import safe_open
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from backends.core.service import ServiceError
from backends.core.text_encoder import minilm_dir
from backends.heads.attention import CaptureLayers, run_with_attention
from backends.heads.models import load_language_model, smollm2_gguf, smollm2_weights


@pytest.fixture(scope="module")
def smollm2():
    """The embedded SmolLM2-135M-Instruct (from the user cache, built from the GGUF if missing)."""
    return load_language_model("")


@pytest.fixture(scope="module")
def gguf_tensors() -> dict:
    """The GGUF's tensors by name (read once: opening the file takes seconds)."""
    return {tensor.name: tensor for tensor in GGUFReader(smollm2_gguf()).tensors}


def save_tiny_model(model: torch.nn.Module, folder: Path) -> Path:
    """Save a tiny random model with a real tokenizer (MiniLM's word pieces) so it loads like a hub checkpoint."""
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm_dir()).save_pretrained(folder)
    return folder


def test_smollm2_shape_and_cache(smollm2):
    assert smollm2.model_id == "smollm2" and smollm2.is_causal
    assert (smollm2.n_layers, smollm2.n_heads, smollm2.n_kv_heads) == (30, 9, 3)
    assert smollm2.heads_per_kv_head == 3 and smollm2.kv_group(4) == 1
    assert smollm2.context_length == 8192 and smollm2.max_tokens == 8192
    assert len(smollm2.attention_modules()) == 30
    assert smollm2.model.config._attn_implementation == "headlab" and not smollm2.model.training
    cached = smollm2_weights()
    assert (cached / "model.safetensors").is_file()
    assert "quantization_config" not in json.loads((cached / "config.json").read_text())


@pytest.mark.parametrize(
    ("gguf_name", "cached_name"),
    [
        ("blk.3.ffn_down.weight", "model.layers.3.mlp.down_proj.weight"),
        ("blk.17.attn_v.weight", "model.layers.17.self_attn.v_proj.weight"),
        ("token_embd.weight", "model.embed_tokens.weight"),
    ],
)
def test_cached_weights_are_the_dequantized_gguf(smollm2, gguf_tensors, gguf_name, cached_name):
    """The safetensors cache (built on the first load, as on a fresh machine) holds exactly the GGUF's weights."""
    tensor = gguf_tensors[gguf_name]
    expected = torch.from_numpy(dequantize(tensor.data, tensor.tensor_type).copy())
    with safe_open(smollm2_weights() / "model.safetensors", "pt") as cached:
        torch.testing.assert_close(
            cached.get_tensor(cached_name), expected.reshape(cached.get_slice(cached_name).get_shape())
        )
    assert not list(smollm2_weights().parent.glob(".building-*"))  # no half-written cache left behind


def test_minilm_is_an_encoder():
    lm = load_language_model("minilm")
    assert not lm.is_causal
    assert (lm.n_layers, lm.n_heads, lm.n_kv_heads, lm.context_length) == (6, 12, 12, 512)
    assert len(lm.attention_modules()) == 6


def test_tiny_gpt2_by_path(tmp_path):
    config = GPT2Config(n_layer=2, n_head=4, n_embd=32, n_positions=64, vocab_size=30522)
    folder = save_tiny_model(GPT2LMHeadModel(config), tmp_path / "gpt2")
    lm = load_language_model(str(folder))
    assert lm.is_causal and (lm.n_layers, lm.n_heads, lm.n_kv_heads, lm.max_tokens) == (2, 4, 4, 64)
    capture = CaptureLayers()
    run_with_attention(lm, "a tiny model reads a short sentence", [capture])
    attn = capture.maps[1]
    assert attn.shape[0] == 4 and attn.dtype == torch.float32
    torch.testing.assert_close(attn.sum(-1), torch.ones(attn.shape[:2]))
    assert torch.all(attn.triu(1) == 0)  # causal


def test_tiny_llama_with_gqa_by_path(tmp_path):
    config = LlamaConfig(
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        hidden_size=32,
        intermediate_size=64,
        max_position_embeddings=128,
        vocab_size=30522,
    )
    folder = save_tiny_model(LlamaForCausalLM(config), tmp_path / "llama")
    lm = load_language_model(str(folder))
    assert (lm.n_heads, lm.n_kv_heads, lm.heads_per_kv_head, lm.kv_group(3)) == (4, 2, 2, 1)
    capture = CaptureLayers([0])
    run = run_with_attention(lm, "grouped query attention", [capture], with_logits=True)
    assert capture.maps[0].shape[0] == 4
    assert run.logits is not None and run.logits.shape == (len(run.tokenized.tokens), 30522)


@pytest.mark.parametrize(
    ("model_id", "message"),
    [
        ("gpt2", "unreachable"),
        ("EleutherAI/pythia-70m", "unreachable"),
        ("../../etc/passwd", "not a model id"),
        ("a b c", "not a model id"),
        ("/no/such/folder", "config.json is missing"),
    ],
)
def test_bad_or_unreachable_model_ids(model_id, message):
    with pytest.raises(ServiceError, match=message):
        load_language_model(model_id)
