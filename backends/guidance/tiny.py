"""Tiny randomly initialised DiT, PixArt and SD3 pipelines built from configs, for offline tests and benches.

They exercise exactly the hub code paths (``adapters.model_for_pipeline``) without any download: the text encoders
are tiny T5 / CLIP models on the vocabulary of the locally installed MiniLM tokenizer.
"""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKL,
    DiTPipeline,
    DiTTransformer2DModel,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    PixArtSigmaPipeline,
    PixArtTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

from backends.core.text_encoder import minilm_dir

TINY_KINDS = ("dit", "pixart", "sd3")


def _vae() -> AutoencoderKL:
    return AutoencoderKL(block_out_channels=(32,), norm_num_groups=32, latent_channels=4, sample_size=16)


def _tokenizer(max_length: int) -> AutoTokenizer:
    return AutoTokenizer.from_pretrained(str(minilm_dir()), model_max_length=max_length)


def tiny_pipeline(kind: str, seed: int = 0) -> DiTPipeline | PixArtSigmaPipeline | StableDiffusion3Pipeline:
    """A tiny pipeline of ``kind`` ("dit", "pixart" or "sd3"), seeded, on the CPU."""
    torch.manual_seed(seed)
    if kind == "dit":
        transformer = DiTTransformer2DModel(
            num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2, sample_size=8,
            patch_size=2, num_embeds_ada_norm=10,
        )
        labels = {0: "cat, kitty", 1: "dog", 2: "golden retriever"}
        return DiTPipeline(transformer, _vae(), DPMSolverMultistepScheduler(), id2label=labels)
    if kind == "pixart":
        transformer = PixArtTransformer2DModel(
            sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=3,
            caption_channels=32, in_channels=4, cross_attention_dim=24, out_channels=8, norm_type="ada_norm_single",
            norm_elementwise_affine=False, norm_eps=1e-6,
        )
        tokenizer = _tokenizer(32)
        encoder = T5EncoderModel(T5Config(
            vocab_size=tokenizer.vocab_size, d_model=32, d_kv=8, d_ff=37, num_layers=1, num_heads=4,
        )).eval()
        return PixArtSigmaPipeline(tokenizer, encoder, _vae(), transformer, DPMSolverMultistepScheduler())
    if kind == "sd3":
        transformer = SD3Transformer2DModel(
            sample_size=8, patch_size=1, in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=4,
            caption_projection_dim=32, joint_attention_dim=64, pooled_projection_dim=64, out_channels=4,
        )
        tokenizer = _tokenizer(16)
        clip_config = CLIPTextConfig(
            vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=37, num_attention_heads=4,
            num_hidden_layers=2, projection_dim=32, max_position_embeddings=16, bos_token_id=tokenizer.cls_token_id,
            eos_token_id=tokenizer.sep_token_id, pad_token_id=tokenizer.pad_token_id,
        )
        return StableDiffusion3Pipeline(
            transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(), vae=_vae(),
            text_encoder=CLIPTextModelWithProjection(clip_config).eval(), tokenizer=tokenizer,
            text_encoder_2=CLIPTextModelWithProjection(clip_config).eval(), tokenizer_2=tokenizer,
            text_encoder_3=None, tokenizer_3=None,
        )
    raise ValueError(f"kind must be one of {TINY_KINDS}, not {kind!r}")
