"""The head-ablation lab and the generation view on the real SmolLM2, against readable reference computations."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from backends.core.heads import parse_heads
from backends.core.service import ServiceError
from backends.heads.ablation import (
    ablation,
    ablation_report,
    mean_outputs,
    next_token_logits,
)
from backends.heads.attention import CaptureLayers, run_with_attention, tokenize
from backends.heads.generation import generate_with_attention
from backends.heads.models import load_language_model

TEXT = "The cat sat on the mat. The dog sat on the log. The cat sat on the"
HEADS = [(17, 3), (18, 6), (23, 2)]


@pytest.fixture(scope="module")
def lm():
    """The embedded SmolLM2-135M (float32, CPU)."""
    return load_language_model("smollm2")


@pytest.fixture(scope="module")
def input_ids(lm):
    """TEXT's token ids."""
    return tokenize(lm, TEXT).input_ids


@pytest.fixture(scope="module")
def clean_logits(lm, input_ids):
    """The unablated logits of TEXT."""
    return next_token_logits(lm, input_ids)


def logits_with_head_outputs_replaced(lm, input_ids, heads, replacement) -> torch.Tensor:
    """Reference: a pre-hook on each o_proj overwrites the chosen heads' slices of its input with ``replacement``."""
    head_dim = lm.model.config.hidden_size // lm.n_heads
    handles = []
    for layer, head in heads:
        columns = slice(head * head_dim, (head + 1) * head_dim)

        def overwrite(_module, args, columns=columns, key=(layer, head)):
            edited = args[0].clone()
            edited[..., columns] = replacement(key, args[0][..., columns])
            return (edited,)

        handles.append(lm.model.model.layers[layer].self_attn.o_proj.register_forward_pre_hook(overwrite))
    try:
        return next_token_logits(lm, input_ids)
    finally:
        for handle in handles:
            handle.remove()


def test_no_heads_leaves_logits_bit_identical(lm, input_ids, clean_logits):
    for mode in ("zero", "uniform", "mean"):
        assert torch.equal(next_token_logits(lm, input_ids, ablation(lm, [], mode)), clean_logits)
    assert torch.equal(next_token_logits(lm, input_ids), clean_logits), "the model is unchanged afterwards"


def test_whole_layer_changes_logits(lm, input_ids, clean_logits):
    heads = parse_heads("3.*", lm.n_layers, lm.n_heads)
    assert heads == [(3, head) for head in range(lm.n_heads)]
    ablated_logits = next_token_logits(lm, input_ids, ablation(lm, heads, "zero"))
    assert (ablated_logits - clean_logits).abs().max() > 0.1


def test_concurrent_ablations_each_get_their_sequential_result(lm, input_ids):
    """Threads running different ablations at once: each gets exactly what it gets alone; the config never moves."""
    config_before = dict(lm.model.config.to_dict())
    means = mean_outputs(lm, input_ids, HEADS)
    plans = [
        None,
        ablation(lm, HEADS, "zero"),
        ablation(lm, HEADS, "uniform"),
        ablation(lm, HEADS, "mean", means),
        ablation(lm, [(3, head) for head in range(lm.n_heads)], "zero"),
        ablation(lm, [(0, 1), (29, 8)], "uniform"),
    ]
    sequential = [next_token_logits(lm, input_ids, plan) for plan in plans]
    assert all(not torch.equal(sequential[0], found) for found in sequential[1:]), "every ablation changes something"
    jobs = [index % len(plans) for index in range(3 * len(plans))]
    with ThreadPoolExecutor(max_workers=len(plans)) as pool:
        concurrent = list(pool.map(lambda index: next_token_logits(lm, input_ids, plans[index]), jobs))
    for index, found in zip(jobs, concurrent, strict=True):
        assert torch.equal(found, sequential[index]), f"plan {index} saw another call's ablation"
    assert lm.model.config.to_dict() == config_before and lm.model.config._attn_implementation == "headlab"


def test_zero_ablation_matches_reference(lm, input_ids):
    expected = logits_with_head_outputs_replaced(lm, input_ids, HEADS, lambda _key, part: torch.zeros_like(part))
    assert torch.allclose(next_token_logits(lm, input_ids, ablation(lm, HEADS, "zero")), expected, atol=1e-5)


def test_mean_ablation_matches_reference(lm, input_ids):
    head_dim = lm.model.config.hidden_size // lm.n_heads
    clean_means = {}

    def remember(key):
        layer, head = key

        def hook(_module, args):
            clean_means[key] = args[0][0, :, head * head_dim : (head + 1) * head_dim].mean(0)

        return lm.model.model.layers[layer].self_attn.o_proj.register_forward_pre_hook(hook)

    handles = [remember(key) for key in HEADS]
    next_token_logits(lm, input_ids)
    for handle in handles:
        handle.remove()
    expected = logits_with_head_outputs_replaced(
        lm, input_ids, HEADS, lambda key, part: clean_means[key].expand_as(part)
    )
    plan = ablation(lm, HEADS, "mean", mean_outputs(lm, input_ids, HEADS))
    assert torch.allclose(next_token_logits(lm, input_ids, plan), expected, atol=1e-5)


def test_uniform_ablation_makes_the_head_uniform(lm, input_ids):
    clean = CaptureLayers([18])
    run_with_attention(lm, input_ids, [clean])
    capture = CaptureLayers([18])
    run_with_attention(lm, input_ids, [capture], ablation=ablation(lm, [(18, 6)], "uniform"))
    weights = capture.maps[18]
    n = weights.shape[-1]
    expected = torch.tril(torch.ones(n, n)) / torch.arange(1, n + 1)[:, None]  # row t: 1/(t+1) on keys 0…t
    assert torch.allclose(weights[6], expected, atol=1e-6)
    others = [head for head in range(lm.n_heads) if head != 6]
    assert torch.equal(weights[others], clean.maps[18][others]), "the other heads of the layer are untouched"


def test_ablation_report(lm):
    retrieval = torch.zeros(lm.n_layers, lm.n_heads)
    retrieval[18, 6] = retrieval[17, 3] = 1.0
    report = ablation_report(lm, TEXT, "L18H6, 17.3", "uniform", retrieval, n_generate=6)
    assert report["heads"] == ["17.3", "18.6"]
    for key in ("kl", "loss_before", "loss_after", "top_before", "top_after", "generation_before", "generation_after"):
        assert key in report
    assert report["kl"] > 0 and report["loss_after"] != report["loss_before"]
    assert len(report["top_before"]) == 5 and 0 < sum(t["prob"] for t in report["top_before"]) <= 1.0001
    assert report["generation_before"].strip(), "SmolLM2 continues the text"
    influence = report["attention_influence"]
    assert influence["heads"][:2] in (["18.6", "17.3"], ["17.3", "18.6"])
    expected = (influence["loss_masked"] - influence["loss"]) / influence["loss"]
    assert influence["relative_change"] == pytest.approx(expected, abs=1e-4)
    empty = ablation_report(lm, TEXT, "", "zero", retrieval, n_generate=4)
    assert empty["kl"] == 0 and empty["loss_after"] == empty["loss_before"]
    assert empty["generation_after"] == empty["generation_before"]


@pytest.mark.parametrize("spec", ["30.1", "3.9", "three", "3-4"])
def test_bad_head_lists_are_rejected(lm, spec):
    with pytest.raises(ServiceError):
        parse_heads(spec, lm.n_layers, lm.n_heads)


def test_bad_mode_is_rejected(lm):
    with pytest.raises(ServiceError, match="mode"):
        ablation(lm, HEADS, "scramble")


def test_generation_steps_match_full_forward(lm):
    found = generate_with_attention(lm, TEXT, n_tokens=3, top_k=2)
    assert len(found["steps"]) == 3
    ids = tokenize(lm, TEXT).input_ids.tolist()
    for step in found["steps"]:
        capture = CaptureLayers([0, 18], rows=range(len(ids) - 1, len(ids)))
        run = run_with_attention(lm, ids, [capture], with_logits=True)
        assert lm.tokenizer.decode([int(run.logits[-1].argmax())]) == step["token"]
        for layer in (0, 18):
            weights, positions = capture.maps[layer][:, -1].topk(2, dim=-1)
            assert step["top_positions"][layer] == positions.tolist()
            assert torch.allclose(torch.tensor(step["top_weights"][layer]), weights, atol=1e-4)
        ids.append(int(run.logits[-1].argmax()))
    assert found["tokens"][found["n_prompt"] :] == [step["token"] for step in found["steps"]]


@pytest.fixture(scope="module")
def service():
    """The Heads panel's service on the CPU."""
    from backends.heads.service import HeadsService

    return HeadsService(device="cpu")


def test_heads_ablate_endpoint(service):
    found = service.call("heads_ablate", "", TEXT, "18.*", "zero")
    assert json.loads(json.dumps(found)) == found, "the result is plain JSON"
    assert found["heads"] == [f"18.{head}" for head in range(9)]
    assert found["kl"] > 0 and found["loss_after"] != found["loss_before"]
    assert len(found["attention_influence"]["heads"]) == round(0.05 * 30 * 9)


def test_heads_generate_endpoint(service):
    found = service.call("heads_generate", "", TEXT, 4)
    assert len(found["steps"]) == 4 and found["n_prompt"] + 4 == len(found["tokens"])
    for step in found["steps"]:
        assert len(step["top_positions"]) == 30 and len(step["top_positions"][0]) == 9
        assert all(position < step["position"] for row in step["top_positions"] for head in row for position in head)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("minilm", TEXT, "1.1", "zero"), "encoder"),
        (("", TEXT, "1.1", "scramble"), "mode"),
        (("", TEXT, "40.1", "zero"), "layer 40"),
        (("", "", "1.1", "zero"), "empty"),
    ],
)
def test_heads_ablate_rejects_bad_input(service, args, message):
    with pytest.raises(ServiceError, match=message):
        service.call("heads_ablate", *args)
