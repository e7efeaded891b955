"""The one-pass attention capture and the panel's reducers, checked against direct computations on SmolLM2/MiniLM."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn.functional import adaptive_avg_pool2d

from backends.core.service import ServiceError
from backends.heads.attention import (
    CaptureLayers,
    HeadStats,
    Rollout,
    Thumbnails,
    pooling_bins,
    replay,
    run_with_attention,
    tokenize,
)
from backends.heads.models import load_language_model

TEXT = "The cat sat on the mat. The dog sat on the rug. The cat sat on the mat."


@pytest.fixture(scope="module")
def smollm2():
    """The embedded SmolLM2-135M-Instruct."""
    return load_language_model("smollm2")


@pytest.fixture(scope="module")
def one_pass(smollm2):
    """Every reducer of the panel plus a full capture, all from one forward pass."""
    stats = HeadStats(smollm2.n_layers, smollm2.n_heads, causal=True)
    thumbnails = Thumbnails(smollm2.n_layers, smollm2.n_heads, size=12)
    rollout, capture = Rollout(), CaptureLayers()
    run = run_with_attention(smollm2, TEXT, [stats, thumbnails, rollout, capture])
    return run, stats, thumbnails, rollout, capture.maps


class LayerLog:
    """A reducer that records what it is handed."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, torch.Size, torch.dtype, int]] = []

    def update(self, layer: int, attn: torch.Tensor, input_ids: torch.Tensor) -> None:
        self.calls.append((layer, attn.shape, attn.dtype, input_ids.numel()))

    def result(self) -> dict:
        return {"layers": [call[0] for call in self.calls]}


def test_reducers_get_each_layer_once_in_order_and_hooks_are_removed(smollm2):
    log = LayerLog()
    run = run_with_attention(smollm2, TEXT, [log])
    n_tokens = len(run.tokenized.tokens)
    assert log.result()["layers"] == list(range(30))
    assert all(call[1:] == (torch.Size([9, n_tokens, n_tokens]), torch.float32, n_tokens) for call in log.calls)
    assert all(not module._forward_hooks for module in smollm2.attention_modules())
    assert run.logits is None


def test_attention_rows_are_distributions_and_causal(one_pass):
    _, _, _, _, maps = one_pass
    for attn in maps.values():
        torch.testing.assert_close(attn.sum(-1), torch.ones(attn.shape[:2]))
        assert torch.all(attn.triu(1) == 0)


def test_head_stats_match_a_direct_computation(one_pass):
    _, stats, _, _, maps = one_pass
    result = stats.result()
    layer, head = 7, 4
    attn = maps[layer][head].double()
    n_tokens = attn.shape[0]
    rows = [-(row[row > 0] * row[row > 0].log()).sum().item() for row in attn]
    assert result["entropy"][layer][head] == pytest.approx(sum(rows) / n_tokens, abs=1e-3)
    fractions = [rows[i] / torch.log(torch.tensor(i + 1.0)).item() for i in range(1, n_tokens)]
    assert result["entropy_fraction"][layer][head] == pytest.approx(sum(fractions) / len(fractions), abs=1e-3)
    assert result["max_weight"][layer][head] == pytest.approx(attn.max(-1).values.mean().item(), abs=1e-3)
    assert result["first_token"][layer][head] == pytest.approx(attn[1:, 0].mean().item(), abs=1e-3)
    assert len(result["entropy"]) == 30 and len(result["entropy"][0]) == 9


def test_thumbnails_equal_adaptive_average_pooling(one_pass):
    _, _, thumbnails, _, maps = one_pass
    layer = 12
    torch.testing.assert_close(thumbnails.full[layer], adaptive_avg_pool2d(maps[layer], 12))
    hidden = maps[layer].clone()
    hidden[..., 0] = 0
    torch.testing.assert_close(thumbnails.without_first[layer], adaptive_avg_pool2d(hidden, 12))


@pytest.mark.parametrize(("n_tokens", "size"), [(7, 12), (12, 12), (100, 36), (1000, 36)])
def test_pooling_bins_rows_average_their_bin(n_tokens, size):
    bins = pooling_bins(n_tokens, size)
    torch.testing.assert_close(bins.sum(-1), torch.ones(size))
    signal = torch.rand(1, n_tokens, n_tokens)
    torch.testing.assert_close(bins @ signal @ bins.T, adaptive_avg_pool2d(signal, size))


def test_rollout_is_the_product_of_mixed_layer_maps(one_pass):
    _, _, _, rollout, maps = one_pass
    n_tokens = maps[0].shape[-1]
    expected = torch.eye(n_tokens)
    for layer in range(30):
        mixed = 0.5 * maps[layer].mean(0) + 0.5 * torch.eye(n_tokens)
        expected = (mixed / mixed.sum(-1, keepdim=True)) @ expected
    torch.testing.assert_close(rollout.result()["rollout"], expected)
    torch.testing.assert_close(expected.sum(-1), torch.ones(n_tokens))


def test_replay_feeds_reducers_like_a_pass(one_pass):
    run, stats, _, _, maps = one_pass
    replayed = HeadStats(30, 9, causal=True)
    replay(maps, run.tokenized.input_ids, [replayed])
    assert replayed.result() == stats.result()


def test_long_text_is_truncated_to_the_limit(smollm2):
    tokenized = tokenize(smollm2, "word " * 3000)
    assert tokenized.truncated and len(tokenized.tokens) == smollm2.max_tokens == 1024
    assert tokenized.n_input_tokens > 1024
    from_ids = tokenize(smollm2, list(range(100, 1200)))
    assert from_ids.truncated and from_ids.input_ids.numel() == 1024


def test_short_text_is_not_truncated_and_tokens_are_readable(smollm2):
    tokenized = tokenize(smollm2, "Hello world")
    assert not tokenized.truncated and tokenized.tokens == ["Hello", " world"]


def test_encoder_attention_is_full_not_causal():
    minilm = load_language_model("minilm")
    capture, stats = CaptureLayers([0]), HeadStats(6, 12, causal=False)
    run = run_with_attention(minilm, "the bank of the river", [capture, stats])
    assert run.tokenized.tokens[0] == "[CLS]" and run.tokenized.tokens[-1] == "[SEP]"
    attn = capture.maps[0]
    assert attn.triu(1).sum() > 0
    result = stats.result()
    entropy = torch.special.entr(attn.double()).sum(-1)
    assert result["entropy"][0][5] == pytest.approx(entropy[5].mean().item(), abs=1e-3)
    assert result["entropy_fraction"][0][5] == pytest.approx(entropy[5].mean().item() / math.log(7), abs=1e-3)
    assert result["max_weight"][0][5] == pytest.approx(attn[5].amax(-1).mean().item(), abs=1e-3)
    assert result["first_token"][0][5] == pytest.approx(attn[5, :, 0].mean().item(), abs=1e-3)


def test_empty_ids_are_refused(smollm2):
    with pytest.raises(ServiceError, match="no tokens"):
        tokenize(smollm2, [])
