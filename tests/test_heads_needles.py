"""Long needle-in-a-haystack probes and streaming heads on the real SmolLM2 (short inputs, so it stays quick)."""

from __future__ import annotations

import pytest
import torch

from backends.heads.ablation import next_token_logits
from backends.heads.attention import tokenize
from backends.heads.models import load_language_model
from backends.heads.needles import (
    ANSWER_ROOM,
    HELD_OUT_NEEDLE,
    SCORING_NEEDLE,
    haystack_probe,
    kv_head_scores,
    streaming_for,
)
from backends.heads.plan import Streaming, by_layer

TEXT = "The river flows past the old mill, and the farmers bring apples to the market every Tuesday morning."


@pytest.fixture(scope="module")
def lm():
    """The embedded SmolLM2-135M (float32, CPU)."""
    return load_language_model("smollm2")


def logits_with(lm, input_ids, streaming: Streaming | None) -> torch.Tensor:
    with torch.no_grad():
        return lm.model(input_ids[None], use_cache=False, **lm.plan(streaming=streaming).kwargs()).logits[0]


@pytest.mark.parametrize("n_tokens", [300, 1024])
def test_haystack_fits_its_length_and_the_span_is_the_needle(lm, n_tokens):
    for needle in (SCORING_NEEDLE, HELD_OUT_NEEDLE):
        probe = haystack_probe(lm, needle, 0.5, n_tokens, seed=n_tokens)
        assert n_tokens - 80 <= len(probe.input_ids) <= n_tokens - ANSWER_ROOM
        span = lm.tokenizer.decode(probe.input_ids[probe.needle_start : probe.needle_end])
        assert needle[0] in span and len(span) < len(needle[0]) + 4
        assert 0.4 < probe.needle_start / len(probe.input_ids) < 0.6
    other = haystack_probe(lm, SCORING_NEEDLE, 0.5, n_tokens, seed=n_tokens + 1)
    assert other.input_ids != probe.input_ids, "another seed gives another haystack"


def test_streaming_heads_see_only_sink_and_window(lm):
    input_ids = tokenize(lm, TEXT).input_ids
    n_tokens = input_ids.numel()
    every_head = by_layer((layer, head) for layer in range(lm.n_layers) for head in range(lm.n_heads))
    full = next_token_logits(lm, input_ids)
    wide = logits_with(lm, input_ids, Streaming(every_head, sink=2, window=n_tokens))
    torch.testing.assert_close(wide, full, atol=1e-4, rtol=1e-4)  # the window covers everything: nothing changes
    narrow = logits_with(lm, input_ids, Streaming(every_head, sink=2, window=4))
    torch.testing.assert_close(narrow[:6], full[:6], atol=1e-4, rtol=1e-4)  # the first 6 rows see all they may
    assert (narrow[-1] - full[-1]).abs().max() > 0.5, "later rows lose what lies between the sink and the window"
    one_head = logits_with(lm, input_ids, Streaming({18: [6]}, sink=2, window=4))
    assert 0 < (one_head[-1] - full[-1]).abs().max() < (narrow[-1] - full[-1]).abs().max()


def test_streaming_split_is_by_kv_head(lm):
    scores = torch.zeros(lm.n_layers, lm.n_heads)
    scores[18, 7] = 0.9
    kv_scores = kv_head_scores(lm, scores)
    assert kv_scores.shape == (lm.n_layers, lm.n_kv_heads) and kv_scores[18, lm.kv_group(7)] == 0.9
    streaming = streaming_for(lm, {(18, lm.kv_group(7))})
    assert streaming.heads[18] == [head for head in range(lm.n_heads) if lm.kv_group(head) != lm.kv_group(7)]
    assert all(streaming.heads[layer] == list(range(lm.n_heads)) for layer in range(lm.n_layers) if layer != 18)
