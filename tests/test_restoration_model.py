"""The TextPromptIR-style restorer, the prompt classifier and their safetensors round trip."""

from __future__ import annotations

from pathlib import Path

import torch

from backends.restoration.checkpoint import load_models, save_models
from backends.restoration.model import PromptClassifier, RestorationModels, RestorerConfig, TextPromptIR

TINY = RestorerConfig(width=8, blocks=(1, 1, 1, 1), heads=(1, 1, 2, 2), prompt_dim=16)


def _randomised(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter random values (the zero-initialised modulations and output included)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))
    return model


def test_a_fresh_restorer_is_the_identity_and_keeps_any_size():
    torch.manual_seed(0)
    model = TextPromptIR(TINY).eval()
    image = torch.rand(1, 3, 37, 53)
    with torch.no_grad():
        restored = model(image, torch.randn(1, 384))
    assert restored.shape == image.shape
    assert torch.allclose(restored, image)


def test_the_prompt_steers_every_block():
    model = _randomised(TextPromptIR(TINY)).eval()
    image = torch.rand(1, 3, 32, 32)
    first, second = torch.randn(2, 384).chunk(2)
    with torch.no_grad():
        assert (model(image, first) - model(image, second)).abs().mean() > 1e-4
    modulations = [name for name, _ in model.named_modules() if name.endswith("modulate_attention")]
    assert len(modulations) == sum(TINY.blocks) + sum(TINY.blocks[:3]) + TINY.refinement_blocks


def test_the_gradient_reaches_the_prompt_mlp():
    model = _randomised(TextPromptIR(TINY))
    loss = model(torch.rand(2, 3, 16, 16), torch.randn(2, 384)).abs().mean()
    loss.backward()
    assert model.prompt_mlp[0].weight.grad.abs().sum() > 0


def test_weights_round_trip_through_safetensors(tmp_path: Path):
    models = RestorationModels(_randomised(TextPromptIR(TINY)), _randomised(PromptClassifier(), 1))
    save_models(models, tmp_path / "restorer.safetensors", step=7)
    loaded = load_models(tmp_path / "restorer.safetensors")
    assert loaded.restorer.config == TINY and loaded.metadata["step"] == "7"
    for key, value in models.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    image, text = torch.rand(1, 3, 24, 24), torch.randn(1, 384)
    with torch.no_grad():
        assert torch.allclose(loaded.restorer(image, text), models.restorer.eval()(image, text))
        assert loaded.classifier(text).shape == (1, 4)


def test_the_head_stack_lists_every_mdta_in_forward_order():
    stack = TextPromptIR(TINY).head_stack()
    # encoders 1–3, latent, decoders 3–1, refinement: one block each
    assert (stack.layers, stack.heads, stack.heads_per_layer) == (8, 2, (1, 1, 2, 2, 2, 1, 1, 1))
    assert stack.layer_names == ("encoder 1 · block 0", "encoder 2 · block 0", "encoder 3 · block 0",
                                 "latent · block 0", "decoder 3 · block 0", "decoder 2 · block 0",
                                 "decoder 1 · block 0", "refinement · block 0")


def test_heads_off_and_prompt_off_act_per_row_and_zeros_change_nothing():
    model = _randomised(TextPromptIR(TINY)).eval()
    image, text = torch.rand(1, 3, 24, 24).expand(3, -1, -1, -1), torch.randn(1, 384).expand(3, -1)
    heads_off, prompt_off = torch.zeros(3, 8, 2), torch.zeros(3, 8)
    heads_off[1, 3, 1] = 1.0
    prompt_off[2, 6] = 1.0
    with torch.no_grad():
        default = model(image, text)
        rows = model(image, text, heads_off, prompt_off)
        zeros = model(image, text, torch.zeros(3, 8, 2), torch.zeros(3, 8))
    assert torch.equal(zeros, default)
    assert torch.equal(rows[0], default[0])
    assert (rows[1] - default[1]).abs().max() > 1e-4 and (rows[2] - default[2]).abs().max() > 1e-4


def test_the_body_resumes_from_any_block_of_a_trace():
    model = _randomised(TextPromptIR(TINY)).eval()
    image, text = torch.rand(2, 3, 16, 16), torch.randn(2, 384)
    with torch.no_grad():
        prompt, trace = model.prompt_mlp(text), []
        model.body(model.embed(image), (), prompt, trace=trace)
        assert len(trace) == 8
        for layer in range(8):
            heads_off = torch.zeros(2, 8, 2)
            heads_off[:, layer, 0] = 1.0
            whole = model.body(model.embed(image), (), prompt, heads_off)
            assert torch.equal(model.body(*trace[layer], prompt, heads_off, start=layer), whole)
