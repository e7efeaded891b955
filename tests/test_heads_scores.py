"""Head-type scores on the real SmolLM2, each checked against a direct, readable reference computation."""

from __future__ import annotations

import json

import pytest
import torch

from backends.core.service import ServiceError
from backends.heads.attention import CaptureLayers, run_with_attention
from backends.heads.models import load_language_model
from backends.heads.probes import needle_prompts, ordinal_tasks, repeated_random_tokens
from backends.heads.scores import (
    WAAD_WINDOW,
    TextScores,
    needle_test,
    razor_split,
    repeated_token_scores,
    rouge1_recall,
    successor_scores,
)

TEXT = (
    "Alice met Bob at the station. Later, Alice gave Bob a small red book, and Bob thanked Alice for the book. "
    "The station was quiet; the train to the coast left at noon."
)
CHECKED_LAYERS = (0, 11, 18, 29)


@pytest.fixture(scope="module")
def lm():
    """The embedded SmolLM2-135M (float32, CPU)."""
    return load_language_model("smollm2")


@pytest.fixture(scope="module")
def text_run(lm):
    """TextScores on TEXT plus the raw maps of a few layers from the same pass."""
    scores, capture = TextScores(lm.n_layers, lm.n_heads), CaptureLayers(CHECKED_LAYERS)
    run = run_with_attention(lm, TEXT, [scores, capture])
    return scores, capture.maps, run.tokenized.input_ids.tolist()


@pytest.fixture(scope="module")
def repeated(lm):
    """The repeated random-token probe and its scores."""
    probe = repeated_random_tokens(lm.tokenizer)
    return probe, repeated_token_scores(lm, probe)


def reference_template_score(attn: torch.Tensor, ids: list[int], kind: str) -> float:
    """Σ A·D / Σ A over the rows where template D has a target, with D spelled out token by token."""
    hit = total = 0.0
    for i in range(len(ids)):
        if kind == "previous_token":
            targets = [i - 1] if i >= 1 else []
        elif kind == "duplicate":
            targets = [j for j in range(i) if ids[j] == ids[i]]
        else:  # induction: the token after each earlier copy of ids[i]
            targets = sorted({j + 1 for j in range(i) if ids[j] == ids[i]})
        if targets:
            hit += sum(float(attn[i, j]) for j in targets)
            total += float(attn[i].sum())
    return hit / total if total else 0.0


def reference_waad(attn: torch.Tensor, window: int) -> float:
    """Mean over queries t ≥ 1 of Σ_{s≤t} A[t, s]·min(t − s, W)."""
    n = attn.shape[0]
    per_query = [sum(float(attn[t, s]) * min(t - s, window) for s in range(t + 1)) for t in range(1, n)]
    return sum(per_query) / len(per_query)


def reference_fai(attn: torch.Tensor, window: int) -> tuple[float, int]:
    """max over s in [1, T−1−W] of mean over t > s of A[t, s], and the s that reaches it."""
    n = attn.shape[0]
    best, where = -1.0, -1
    for s in range(1, n - window):
        value = sum(float(attn[t, s]) for t in range(s + 1, n)) / (n - 1 - s)
        if value > best:
            best, where = value, s
    return best, where


def test_template_scores_match_reference(lm, text_run):
    scores, maps, ids = text_run
    assert len(set(ids)) < len(ids), "the text must repeat tokens for duplicate/induction to be defined"
    for layer in CHECKED_LAYERS:
        for head in range(lm.n_heads):
            for kind in ("previous_token", "duplicate", "induction"):
                expected = reference_template_score(maps[layer][head], ids, kind)
                assert float(scores.values[kind][layer, head]) == pytest.approx(expected, abs=1e-4), (kind, layer, head)


def test_sink_waad_fai_match_reference(lm, text_run):
    scores, maps, _ = text_run
    for layer in CHECKED_LAYERS:
        for head in range(lm.n_heads):
            attn = maps[layer][head]
            sink = sum(float(attn[t, 0]) for t in range(1, attn.shape[0])) / (attn.shape[0] - 1)
            assert float(scores.values["sink"][layer, head]) == pytest.approx(sink, abs=1e-5)
            assert float(scores.values["waad"][layer, head]) == pytest.approx(
                reference_waad(attn, WAAD_WINDOW), abs=1e-4
            )
            fai, anchor = reference_fai(attn, WAAD_WINDOW)
            assert float(scores.values["fai"][layer, head]) == pytest.approx(fai, abs=1e-5)
            assert int(scores.fai_anchor[layer, head]) == anchor
    result = scores.result()
    assert len(result["waad"]) == lm.n_layers and all(len(row) == lm.n_heads for row in result["waad"])


def test_repeated_random_tokens_show_clear_induction_heads(lm, repeated):
    probe, found = repeated
    induction = found["templates"]["induction"]
    assert len(probe.input_ids) == probe.offset + probe.period * probe.repeats
    assert float(induction.max()) > 0.7, "a clear induction head attends > 70 % to the token after the copy"
    assert float(induction.median()) < 0.1, "most heads are not induction heads"
    assert int((induction > 0.5).sum()) >= 3


def test_repeated_probe_templates_match_reference(lm, repeated):
    probe, found = repeated
    capture = CaptureLayers([18])
    run_with_attention(lm, probe.input_ids, [capture])
    for head in range(lm.n_heads):
        for kind in ("previous_token", "duplicate", "induction"):
            expected = reference_template_score(capture.maps[18][head], probe.input_ids, kind)
            assert float(found["templates"][kind][18, head]) == pytest.approx(expected, abs=1e-4)


def test_razor_split_groups_query_heads_per_kv_head(lm, repeated):
    _, found = repeated
    razor = found["razor"]
    echo, induction = found["templates"]["duplicate"], found["templates"]["induction"]
    group = lm.n_heads // lm.n_kv_heads
    for layer in range(lm.n_layers):
        for kv_head in range(lm.n_kv_heads):
            members = range(kv_head * group, (kv_head + 1) * group)
            assert razor["echo"][layer][kv_head] == pytest.approx(max(float(echo[layer, h]) for h in members), abs=1e-4)
            assert razor["induction"][layer][kv_head] == pytest.approx(
                max(float(induction[layer, h]) for h in members), abs=1e-4
            )
    total = lm.n_layers * lm.n_kv_heads
    assert round(0.14 * total) <= len(razor["retrieval_kv_heads"]) <= round(0.14 * total) + round(0.01 * total)
    best = max(
        ((layer, kv) for layer in range(lm.n_layers) for kv in range(lm.n_kv_heads)),
        key=lambda pair: razor["induction"][pair[0]][pair[1]],
    )
    assert f"{best[0]}.{best[1]}" in razor["retrieval_kv_heads"]
    assert razor_split(lm, echo, induction) == razor


def test_retrieval_credit_matches_reference(lm):
    probe = needle_prompts(lm.tokenizer)[0]
    credit, generated = needle_test(lm, probe)
    assert rouge1_recall(lm.tokenizer.decode(generated), probe.needle) > 0.5, "SmolLM2 should find this needle"
    needle = probe.input_ids[probe.needle_start : probe.needle_end]
    expected = torch.zeros(lm.n_layers, lm.n_heads)
    sequence = list(probe.input_ids)
    for token in generated:  # recompute every step with a full, uncached forward pass
        last_row = CaptureLayers(rows=range(len(sequence) - 1, len(sequence)))
        run_with_attention(lm, sequence, [last_row])
        for layer in range(lm.n_layers):
            for head in range(lm.n_heads):
                j = int(last_row.maps[layer][head, -1].argmax())
                if probe.needle_start <= j < probe.needle_end and sequence[j] == token:
                    expected[layer, head] += 1 / len(needle)
        sequence.append(token)
    assert torch.allclose(credit, expected, atol=1e-6)
    assert float(credit.max()) > 0.3, "some head copies most of the needle"


def test_successor_scores_match_reference(lm):
    found = successor_scores(lm)
    tasks = ordinal_tasks(lm.tokenizer)
    assert {"days", "months", "letters"} <= set(found["tasks"])
    model = lm.model.model
    head_dim = lm.model.config.hidden_size // lm.n_heads
    group = lm.n_heads // lm.n_kv_heads
    residual_after_layer0 = {}  # each task token run on its own; the residual stream after layer 0
    for task in tasks:
        for token in task.token_ids:
            with torch.no_grad():
                hidden = lm.model(torch.tensor([[token]]), output_hidden_states=True).hidden_states
            residual_after_layer0[token] = hidden[1][0, 0]
    for layer in (5, 23):
        block = model.layers[layer]
        for head in (0, 3, 8):
            kv = head // group
            w_v = block.self_attn.v_proj.weight[kv * head_dim : (kv + 1) * head_dim]  # [d, d_model]
            w_o = block.self_attn.o_proj.weight[:, head * head_dim : (head + 1) * head_dim]  # [d_model, d]
            hits = pairs = 0
            for task in tasks:
                unembed = lm.model.lm_head.weight[list(task.token_ids)]
                for item, successor in task.successor_pairs():
                    with torch.no_grad():
                        residual = residual_after_layer0[task.token_ids[item]]
                        head_out = w_o @ (w_v @ block.input_layernorm(residual))
                        logits = unembed @ model.norm(head_out)
                    hits += int(logits.argmax()) == successor
                    pairs += 1
            assert float(found["scores"][layer, head]) == pytest.approx(hits / pairs, abs=1e-6), (layer, head)


def test_rouge1_recall():
    assert rouge1_recall("The magic number is 7294.", "The magic number is 7294.") == 1.0
    assert rouge1_recall("I do not know", "The magic number is 7294.") == 0.0
    assert rouge1_recall("the number 7294", "The magic number is 7294.") == pytest.approx(0.6)


@pytest.fixture(scope="module")
def service():
    """The Heads panel's service on the CPU."""
    from backends.heads.service import HeadsService

    return HeadsService(device="cpu")


def test_heads_scores_endpoint(service):
    found = service.call("heads_scores", "", TEXT)
    assert json.loads(json.dumps(found)) == found, "the result is plain JSON"
    assert (found["n_layers"], found["n_heads"]) == (30, 9)
    assert list(found["scores"]) == [
        "previous_token",
        "duplicate",
        "induction",
        "retrieval",
        "successor",
        "sink",
        "waad",
        "fai",
    ]
    for name, grid in found["scores"].items():
        assert len(grid) == 30 and all(len(row) == 9 for row in grid), name
        assert all(isinstance(value, float) for row in grid for value in row), name
    assert found["unavailable"] == {}
    assert set(found["explanations"]) >= set(found["scores"])
    assert found["details"]["retrieval"]["n_retrieved"] >= 4, "SmolLM2 answers most needle questions"
    assert max(max(row) for row in found["scores"]["retrieval"]) > 0.3
    again = service.call("heads_scores", "", TEXT + " The end.")
    assert again["scores"]["retrieval"] == found["scores"]["retrieval"], "probe-based scores are cached per model"
    assert again["scores"]["sink"] != found["scores"]["sink"], "text-based scores follow the text"


def test_heads_scores_on_an_encoder(service):
    found = service.call("heads_scores", "minilm", TEXT)
    assert (found["n_layers"], found["n_heads"]) == (6, 12)
    assert set(found["unavailable"]) == {"retrieval", "successor"}
    assert all(value == 0.0 for row in found["scores"]["retrieval"] for value in row)


@pytest.mark.parametrize("text", ["", "   ", "\x00\x01\x02\x03"])
def test_heads_scores_rejects_non_text(service, text):
    with pytest.raises(ServiceError):
        service.call("heads_scores", "", text)
