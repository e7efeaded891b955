"""SoftPAG maths and processors on tiny DiT / PixArt / SD3 transformers built from configs (offline)."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0, JointAttnProcessor2_0
from torch.nn import functional

from backends.guidance.adapters import model_for_pipeline
from backends.guidance.sampler import branch_strengths, combine, guided_sample
from backends.guidance.softpag import (
    Perturbation,
    SoftPAGAttnProcessor,
    SoftPAGJointAttnProcessor,
    install_softpag,
    soft_attention,
    strengths_for,
)
from backends.guidance.tiny import TINY_KINDS, tiny_pipeline

torch.set_num_threads(1)


def _qkv(batch: int = 4, heads: int = 3, tokens: int = 5, dim: int = 8) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    return tuple(torch.randn(batch, heads, tokens, dim, generator=generator) for _ in range(3))


def test_u_zero_is_bit_identical_and_u_one_gives_values():
    query, key, value = _qkv()
    plain = functional.scaled_dot_product_attention(query, key, value)
    strengths = torch.tensor([[0.0] * 3] * 2 + [[0.0, 1.0, 0.0]] * 2)  # last 2 rows: head 1 fully perturbed
    soft = soft_attention(query, key, value, None, strengths, "identity")
    assert torch.equal(soft[:2], plain[:2])  # conditional rows untouched
    assert torch.equal(soft[2:, [0, 2]], plain[2:, [0, 2]])  # other heads bit-identical
    assert torch.equal(soft[2:, 1], value[2:, 1])  # the perturbed head outputs its values


def test_soft_strength_interpolates_and_uniform_target_averages_values():
    query, key, value = _qkv()
    plain = functional.scaled_dot_product_attention(query, key, value)
    half = soft_attention(query, key, value, None, torch.full((1, 3), 0.5), "identity")
    torch.testing.assert_close(half, 0.5 * plain + 0.5 * value)
    rows = torch.tensor([[0.0] * 3] * 2 + [[1.0] * 3] * 2)
    uniform = soft_attention(query, key, value, None, rows, "uniform")
    assert torch.equal(uniform[:2], plain[:2])
    torch.testing.assert_close(uniform[2:], value[2:].mean(dim=2, keepdim=True).expand_as(value[2:]))


def test_full_identity_shortcut_matches_general_path():
    query, key, value = _qkv()
    rows = torch.tensor([[0.0] * 3, [1.0] * 3, [1.0, 0.5, 0.0], [1.0] * 3])  # rows 1 and 3 take the shortcut
    shortcut = soft_attention(query, key, value, None, rows, "identity")
    plain = functional.scaled_dot_product_attention(query, key, value)
    general = torch.lerp(plain, value, rows[:, :, None, None].expand_as(value))
    torch.testing.assert_close(shortcut, general)
    assert torch.equal(shortcut[1], value[1]) and torch.equal(shortcut[0], plain[0])


def test_joint_attention_perturbs_image_queries_only():
    query, key, value = _qkv(tokens=7)
    plain = functional.scaled_dot_product_attention(query, key, value)
    rows = torch.tensor([[0.0] * 3] * 2 + [[1.0] * 3] * 2)
    soft = soft_attention(query, key, value, None, rows, "identity", perturbed_tokens=4)
    assert torch.equal(soft[2:, :, :4], value[2:, :, :4])
    assert torch.equal(soft[2:, :, 4:], plain[2:, :, 4:])


@pytest.mark.parametrize("kind", TINY_KINDS)
def test_processors_install_and_are_exact_without_perturbation(kind: str):
    transformer = tiny_pipeline(kind).transformer.eval()
    inputs = _transformer_inputs(kind, transformer)
    with torch.no_grad():
        reference = transformer(**inputs).sample
        stack = install_softpag(transformer)
        processors = {type(module.processor) for module in _attention_modules(transformer)}
        installed = transformer(**inputs).sample
    expected = SoftPAGJointAttnProcessor if kind == "sd3" else SoftPAGAttnProcessor
    assert processors == {expected}
    assert stack.layers == 2
    assert torch.equal(installed, reference)
    keyword = "joint_attention_kwargs" if kind == "sd3" else "cross_attention_kwargs"

    def run(u: float) -> torch.Tensor:
        rows = strengths_for([[], [], [(0, 0)]], u, stack.layers, stack.heads)  # only the last row is perturbed
        with torch.no_grad():
            return transformer(**inputs, **{keyword: {"perturbation": Perturbation(rows)}}).sample

    assert torch.equal(run(0.0), reference)  # u = 0 everywhere: no change at all
    perturbed = run(1.0)
    torch.testing.assert_close(perturbed[:-1], reference[:-1])  # only the last (perturbed) row changes
    assert not torch.allclose(perturbed[-1], reference[-1])
    with torch.no_grad():
        assert torch.equal(transformer(**inputs).sample, reference)  # nothing stayed switched on the model


def test_dit_processor_matches_manual_head_output():
    transformer = tiny_pipeline("dit").transformer.eval()
    stack = install_softpag(transformer)
    attention = transformer.transformer_blocks[1].attn1
    hidden = torch.randn(3, 16, attention.inner_dim, generator=torch.Generator().manual_seed(1))
    plan = Perturbation(strengths_for([[], [], [(1, 1)]], 1.0, stack.layers, stack.heads))
    with torch.no_grad():
        output = attention(hidden, perturbation=plan)
        baseline = AttnProcessor2_0()(attention, hidden)
        heads_view = attention.to_v(hidden).view(3, 16, 2, 8).transpose(1, 2)
        query = attention.to_q(hidden).view(3, 16, 2, 8).transpose(1, 2)
        key = attention.to_k(hidden).view(3, 16, 2, 8).transpose(1, 2)
        mixed = functional.scaled_dot_product_attention(query, key, heads_view)
        mixed[2, 1] = heads_view[2, 1]
        manual = attention.to_out[0](mixed.transpose(1, 2).reshape(3, 16, 16))
    torch.testing.assert_close(output[:2], baseline[:2])
    torch.testing.assert_close(output, manual)


def test_sd3_joint_processor_matches_diffusers_without_perturbation():
    transformer = tiny_pipeline("sd3").transformer.eval()
    attention = transformer.transformer_blocks[0].attn
    generator = torch.Generator().manual_seed(2)
    hidden, context = torch.randn(2, 16, 32, generator=generator), torch.randn(2, 5, 32, generator=generator)
    install_softpag(transformer)
    with torch.no_grad():
        ours = SoftPAGJointAttnProcessor(0)(attention, hidden, context)
        theirs = JointAttnProcessor2_0()(attention, hidden, context)
    for mine, reference in zip(ours, theirs, strict=True):
        assert torch.equal(mine, reference)


def test_guidance_formula():
    unconditional, conditional, perturbed = torch.tensor([1.0]), torch.tensor([3.0]), torch.tensor([2.0])
    guided = combine([unconditional, conditional, perturbed], True, True, cfg_scale=2.0, pag_scale=4.0)
    assert guided.item() == 1.0 + 2.0 * (3.0 - 1.0) + 4.0 * (3.0 - 2.0)


@pytest.mark.parametrize(("kind", "condition"), [("dit", "dog"), ("pixart", "a red fox"), ("sd3", "a red fox")])
def test_hub_adapters_sample_offline(kind: str, condition: str):
    model = model_for_pipeline(tiny_pipeline(kind), f"tiny-{kind}", "cpu", torch.float32)
    strengths = strengths_for([[(0, 1)]], 1.0, model.layers, model.heads)
    baseline = guided_sample(model, condition, [0, 1], 3, cfg_scale=2.0)
    guided = guided_sample(model, condition, [0, 1], 3, cfg_scale=2.0, pag_scale=2.0, strengths=strengths)
    no_pag = guided_sample(model, condition, [0, 1], 3, cfg_scale=2.0, pag_scale=0.0, strengths=strengths)
    assert baseline.shape[:2] == (2, 3) and baseline.abs().max() <= 1
    assert torch.equal(no_pag, baseline)  # PAG scale 0 reproduces the baseline
    assert not torch.equal(guided, baseline)
    off = strengths_for([[(1, 0)]], 1.0, model.layers, model.heads)
    ablated = guided_sample(model, condition, [0, 1], 3, cfg_scale=2.0, heads_off=off)
    assert not torch.equal(ablated, baseline)
    assert torch.equal(guided_sample(model, condition, [0, 1], 3, cfg_scale=2.0), baseline)  # nothing stayed off


def test_heads_off_is_identity_attention_in_every_branch():
    """heads_off = u 1 on every row of [unconditional, conditional, perturbed]; PAG heads add to the last branch."""
    strengths = strengths_for([[(0, 1)]], 0.5, 2, 3)
    off = strengths_for([[(1, 2)]], 1.0, 2, 3)
    plan = branch_strengths(2, True, True, strengths, off)
    assert plan.shape == (6, 2, 3)
    assert (plan[:, 1, 2] == 1).all() and (plan[:4, 0, 1] == 0).all() and (plan[4:, 0, 1] == 0.5).all()
    assert branch_strengths(2, False, False, None, None) is None


def _attention_modules(transformer: torch.nn.Module) -> list:
    return [getattr(block, "attn1", None) or block.attn for block in transformer.transformer_blocks]


def _transformer_inputs(kind: str, transformer: torch.nn.Module) -> dict:
    generator = torch.Generator().manual_seed(0)
    batch = 3
    inputs = {"hidden_states": torch.randn(batch, 4, 8, 8, generator=generator), "timestep": torch.full((batch,), 500)}
    if kind == "dit":
        return {**inputs, "class_labels": torch.tensor([0, 1, 1])}
    if kind == "pixart":
        return {**inputs, "encoder_hidden_states": torch.randn(batch, 6, 32, generator=generator),
                "added_cond_kwargs": {"resolution": None, "aspect_ratio": None}}
    return {**inputs, "encoder_hidden_states": torch.randn(batch, 6, 64, generator=generator),
            "pooled_projections": torch.randn(batch, 64, generator=generator)}
