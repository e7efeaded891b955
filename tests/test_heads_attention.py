"""The chunked attention pass and the panel's reducers, checked against direct computations on SmolLM2/MiniLM."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn.functional import adaptive_avg_pool2d

from backends.core.service import ServiceError
from backends.heads import plan
from backends.heads.attention import (
    CaptureLayers,
    HeadStats,
    PooledMaps,
    Rollout,
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
    pooled = PooledMaps(smollm2.n_layers, smollm2.n_heads)
    rollout, capture = Rollout(), CaptureLayers()
    run = run_with_attention(smollm2, TEXT, [stats, pooled, rollout, capture])
    return run, stats, pooled, rollout, capture.maps


@pytest.fixture(scope="module")
def small_chunks(smollm2):
    """The same pass computed in chunks of 2 query rows (many chunks per layer, some rows split across them)."""
    original = plan.CHUNK_VALUES
    plan.CHUNK_VALUES = 2 * smollm2.n_heads * len(tokenize(smollm2, TEXT).tokens)
    try:
        stats, capture = HeadStats(smollm2.n_layers, smollm2.n_heads, causal=True), CaptureLayers()
        pooled = PooledMaps(smollm2.n_layers, smollm2.n_heads, bins=5)
        run_with_attention(smollm2, TEXT, [stats, capture, pooled])
    finally:
        plan.CHUNK_VALUES = original
    return stats, capture.maps, pooled


class LayerLog:
    """A reducer that records what it is handed."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, torch.Size, torch.dtype, int, int]] = []

    def update(self, layer: int, chunk: plan.AttentionChunk) -> None:
        self.calls.append((layer, chunk.weights.shape, chunk.weights.dtype, chunk.input_ids.numel(), chunk.row_start))

    def result(self) -> dict:
        return {"layers": [call[0] for call in self.calls]}


def test_reducers_get_each_layer_in_order_and_nothing_stays_on_the_model(smollm2):
    log = LayerLog()
    run = run_with_attention(smollm2, TEXT, [log])
    n_tokens = len(run.tokenized.tokens)
    assert log.result()["layers"] == list(range(30))
    assert all(call[1:] == (torch.Size([9, n_tokens, n_tokens]), torch.float32, n_tokens, 0) for call in log.calls)
    assert smollm2.model.config._attn_implementation == plan.ATTENTION
    assert all(not module._forward_hooks for module in smollm2.attention_modules())
    assert run.logits is None


def test_model_output_with_reducers_equals_the_plain_pass(smollm2):
    ids = tokenize(smollm2, TEXT).input_ids
    with torch.inference_mode():
        plain = smollm2.model(ids[None], use_cache=False).logits
    run = run_with_attention(smollm2, ids, [HeadStats(30, 9, causal=True)], with_logits=True)
    torch.testing.assert_close(run.logits, plain[0], atol=1e-4, rtol=1e-4)


def test_chunked_pass_gives_the_same_maps_and_statistics(one_pass, small_chunks):
    _, stats, _, _, maps = one_pass
    chunked_stats, chunked_maps, pooled = small_chunks
    for layer in (0, 17, 29):
        torch.testing.assert_close(chunked_maps[layer], maps[layer], atol=1e-6, rtol=1e-5)
    for name, grid in stats.result().items():
        torch.testing.assert_close(torch.tensor(chunked_stats.result()[name]), torch.tensor(grid), atol=2e-4, rtol=0)
    n_tokens = maps[0].shape[-1]
    block = -(-n_tokens // 5)
    means = pooled.means(12)
    for row in range(means.shape[1]):
        for column in range(means.shape[2]):
            part = maps[12][:, row * block : (row + 1) * block, column * block : (column + 1) * block]
            torch.testing.assert_close(means[:, row, column], part.mean(dim=(1, 2)))


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
    _, _, pooled, _, maps = one_pass
    layer = 12
    torch.testing.assert_close(pooled.thumbnails(12)[layer], adaptive_avg_pool2d(maps[layer], 12))
    hidden = maps[layer].clone()
    hidden[..., 0] = 0
    torch.testing.assert_close(pooled.thumbnails(12, hide_first=True)[layer], adaptive_avg_pool2d(hidden, 12))


def test_a_window_is_kept_exactly(smollm2, one_pass):
    _, _, _, _, maps = one_pass
    window = PooledMaps(30, 9, rows=range(10, 20), columns=range(3, 15), layers=[7])
    run_with_attention(smollm2, TEXT, [window])
    assert set(window.sums) == {7}
    torch.testing.assert_close(window.means(7), maps[7][:, 10:20, 3:15])
    assert window.edges() == (list(range(10, 20)), list(range(3, 15)))


def test_rollout_is_the_product_of_mixed_layer_maps(one_pass):
    _, _, _, rollout, maps = one_pass
    n_tokens = maps[0].shape[-1]
    expected = torch.eye(n_tokens)
    for layer in range(30):
        mixed = 0.5 * maps[layer].mean(0) + 0.5 * torch.eye(n_tokens)
        expected = (mixed / mixed.sum(-1, keepdim=True)) @ expected
    torch.testing.assert_close(rollout.result()["rollout"], expected)
    torch.testing.assert_close(expected.sum(-1), torch.ones(n_tokens))


def test_long_text_is_truncated_to_the_context(smollm2):
    tokenized = tokenize(smollm2, "word " * 9000)
    assert tokenized.truncated and len(tokenized.tokens) == smollm2.max_tokens == 8192
    assert tokenized.n_input_tokens > 8192
    from_ids = tokenize(smollm2, list(range(100, 8400)))
    assert from_ids.truncated and from_ids.input_ids.numel() == 8192


def test_short_text_is_not_truncated_and_tokens_are_readable(smollm2):
    tokenized = tokenize(smollm2, "Hello world")
    assert not tokenized.truncated and tokenized.tokens == ["Hello", " world"]


def test_encoder_attention_is_full_not_causal():
    minilm = load_language_model("minilm")
    capture, stats = CaptureLayers([0]), HeadStats(6, 12, causal=False)
    run = run_with_attention(minilm, "the bank of the river", [capture, stats])
    assert set(capture.maps) == {0}
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
