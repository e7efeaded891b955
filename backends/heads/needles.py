"""Needle-in-a-haystack retrieval heads at long contexts, and streaming heads tested by ablation.

**Retrieval heads** (Wu et al. 2024): a key–value fact (the needle) is hidden at several depths of 1k–8k-token
haystacks, the model answers the question greedily, and at each generated token a head earns 1/|needle| when the
argmax of its attention row lies in the needle and is the very token being generated. A head's retrieval score is
its credit averaged over the tests the model answered (the needle's value appears in the answer); scores are kept
per context length and over all lengths, with a needle map (depth × length → answered or not).

**Streaming vs retrieval** (DuoAttention, RazorAttention): every KV head outside a kept set becomes a streaming head
that sees only the first ``SINK`` and the last ``WINDOW`` positions, for the prompt and every decoding step. The kept
set is the top KV heads by retrieval score, RazorAttention's set, or a random set of the same size (and the top and a
random half of all KV heads), against full attention; the answers are checked on a held-out needle (another fact,
another haystack seed) and the KV-cache share kept is reported.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass

import torch

from backends.heads.generation import greedy_steps
from backends.heads.models import LanguageModel, cache_dir
from backends.heads.plan import Streaming, by_layer
from backends.heads.probes import NeedleProbe, filler_sentences, needle_probe
from backends.heads.scores import _rounded, needle_test, rouge1_recall

#: the scoring needle and the held-out needle the streaming ablation is checked on: (sentence, question, value)
SCORING_NEEDLE = (
    "The secret passkey of the lighthouse is 58231.",
    "What is the secret passkey of the lighthouse?",
    "58231",
)
HELD_OUT_NEEDLE = ("The code of the old vault is 9362.", "What is the code of the old vault?", "9362")
SINK, WINDOW = 4, 256  # RazorAttention's streaming heads: 4 sink tokens + 256 recent ones
ANSWER_ROOM = 32  # a haystack of length L leaves this many positions of the context for the answer


@dataclass(frozen=True)
class NeedleSetup:
    """Which haystack lengths and needle depths the probe runs (scoring), and those of the held-out check."""

    lengths: tuple[int, ...] = (1024, 2048, 4096, 8192)
    depths: tuple[float, ...] = (0.25, 0.75)
    check_lengths: tuple[int, ...] = (1024, 2048)
    check_depths: tuple[float, ...] = (0.25, 0.75)

    def key(self) -> str:
        """A short name for caching."""
        return "-".join(str(value) for value in (*self.lengths, *self.depths, *self.check_lengths, *self.check_depths))


def haystack_probe(lm: LanguageModel, needle: tuple[str, str, str], depth: float, n_tokens: int, seed: int):
    """A prompt of at most ``n_tokens`` − ``ANSWER_ROOM`` tokens: varied filler with the needle at ``depth``, then the
    question (the rest of the ``n_tokens`` is room for the answer)."""
    sentence, question, _ = needle
    n_tokens -= ANSWER_ROOM
    sentences = filler_sentences(lm.tokenizer, n_tokens, seed)
    while True:
        probe = needle_probe(lm.tokenizer, sentences, sentence, question, depth)
        excess = len(probe.input_ids) - n_tokens
        if excess <= 0 or len(sentences) <= 1:
            return probe
        per_sentence = len(probe.input_ids) / len(sentences)
        sentences = sentences[: max(1, len(sentences) - int(excess / per_sentence) - 1)]


def answered(lm: LanguageModel, generated: list[int], needle: tuple[str, str, str]) -> tuple[str, bool, float]:
    """(answer text, whether it contains the needle's value, ROUGE-1 recall of the needle sentence)."""
    text = lm.tokenizer.decode(generated, skip_special_tokens=True)
    return text, needle[2] in text, rouge1_recall(text, needle[0])


def retrieval_probe(lm: LanguageModel, setup: NeedleSetup) -> dict:
    """Wu et al.'s retrieval score per head and length, the needle map and every test's answer."""
    by_length = {length: torch.zeros(lm.n_layers, lm.n_heads) for length in setup.lengths}
    counted = dict.fromkeys(setup.lengths, 0)
    tests = []
    for length in setup.lengths:
        for index, depth in enumerate(setup.depths):
            probe = haystack_probe(lm, SCORING_NEEDLE, depth, length, seed=length + index)
            credit, generated = needle_test(lm, probe)
            text, retrieved, recall = answered(lm, generated, SCORING_NEEDLE)
            if retrieved:
                by_length[length] += credit
                counted[length] += 1
            tests.append(_test_record(probe, length, depth, text, retrieved, recall))
    total = sum(by_length.values()) / max(sum(counted.values()), 1)
    return {
        "scores": total,
        "by_length": {length: by_length[length] / max(counted[length], 1) for length in setup.lengths},
        "n_retrieved": counted,
        "tests": tests,
    }


def _test_record(probe: NeedleProbe, length: int, depth: float, text: str, retrieved: bool, recall: float) -> dict:
    return {
        "length": length,
        "n_tokens": len(probe.input_ids),
        "depth": depth,
        "needle_position": probe.needle_start,
        "answer": text,
        "retrieved": retrieved,
        "recall": round(recall, 3),
    }


def kv_head_scores(lm: LanguageModel, scores: torch.Tensor) -> torch.Tensor:
    """A KV head's score: the best of the query heads that share it, ``[layers, kv_heads]``."""
    return scores.reshape(lm.n_layers, lm.n_kv_heads, lm.heads_per_kv_head).amax(-1)


def streaming_for(lm: LanguageModel, kept: set[tuple[int, int]]) -> Streaming:
    """Every query head whose KV head is not in ``kept`` (layer, kv_head) becomes a streaming head."""
    heads = [
        (layer, head)
        for layer in range(lm.n_layers)
        for head in range(lm.n_heads)
        if (layer, lm.kv_group(head)) not in kept
    ]
    return Streaming(by_layer(heads), SINK, WINDOW)


def streaming_check(lm: LanguageModel, setup: NeedleSetup, splits: dict[str, set[tuple[int, int]]]) -> dict:
    """Held-out needle accuracy and KV-cache share kept for each split of kept (full-attention) KV heads."""
    probes = [
        (length, depth, haystack_probe(lm, HELD_OUT_NEEDLE, depth, length, seed=10_000 + length + index))
        for length in setup.check_lengths
        for index, depth in enumerate(setup.check_depths)
    ]
    total_kv = lm.n_layers * lm.n_kv_heads
    found = {}
    for name, kept in splits.items():
        streaming = streaming_for(lm, kept) if len(kept) < total_kv else None
        tests, shares = [], []
        for length, depth, probe in probes:
            steps = greedy_steps(lm, probe.input_ids, 12, with_attention=False, streaming=streaming)
            text, retrieved, recall = answered(lm, [step.token_id for step in steps], HELD_OUT_NEEDLE)
            n_tokens = len(probe.input_ids)
            kept_share = (len(kept) * n_tokens + (total_kv - len(kept)) * min(n_tokens, SINK + WINDOW)) / (
                total_kv * n_tokens
            )
            shares.append(kept_share)
            tests.append({**_test_record(probe, length, depth, text, retrieved, recall), "kv_share": kept_share})
        found[name] = {
            "kept_kv_heads": sorted(f"{layer}.{kv}" for layer, kv in kept),
            "accuracy": sum(test["retrieved"] for test in tests) / len(tests),
            "kv_share": round(sum(shares) / len(shares), 4),
            "tests": tests,
        }
    return found


def needle_report(lm: LanguageModel, razor_kv_heads: list[str], setup: NeedleSetup) -> dict:
    """The ``heads_needles`` JSON: retrieval scores per length, needle map, and the streaming-vs-retrieval check."""
    start = time.perf_counter()
    probe = retrieval_probe(lm, setup)
    kv_scores = kv_head_scores(lm, probe["scores"])
    razor = {tuple(int(part) for part in name.split(".")) for name in razor_kv_heads}
    order = kv_scores.flatten().argsort(descending=True).tolist()
    shuffled = torch.randperm(kv_scores.numel(), generator=torch.Generator().manual_seed(0)).tolist()

    def kv_heads(indices: list[int]) -> set[tuple[int, int]]:
        return {(index // lm.n_kv_heads, index % lm.n_kv_heads) for index in indices}

    small, half = len(razor), kv_scores.numel() // 2
    splits = {
        "full attention": kv_heads(order),
        f"top {small} by retrieval score": kv_heads(order[:small]),
        f"RazorAttention ({small})": razor,
        f"random {small}": kv_heads(shuffled[:small]),
        f"top {half} by retrieval score": kv_heads(order[:half]),
        f"random {half}": kv_heads(shuffled[:half]),
    }
    check = streaming_check(lm, setup, splits)
    retrieved = {(test["length"], test["depth"]): test["retrieved"] for test in probe["tests"]}
    needle_map = [[retrieved[length, depth] for length in setup.lengths] for depth in setup.depths]
    return {
        "model": lm.model_id,
        "n_layers": lm.n_layers,
        "n_heads": lm.n_heads,
        "n_kv_heads": lm.n_kv_heads,
        "lengths": list(setup.lengths),
        "depths": list(setup.depths),
        "needle": SCORING_NEEDLE[0],
        "held_out_needle": HELD_OUT_NEEDLE[0],
        "retrieval": _rounded(probe["scores"]),
        "retrieval_by_length": {str(length): _rounded(grid) for length, grid in probe["by_length"].items()},
        "n_retrieved": {str(length): count for length, count in probe["n_retrieved"].items()},
        "needle_map": needle_map,
        "tests": probe["tests"],
        "streaming": {"sink": SINK, "window": WINDOW, "splits": check},
        "seconds": round(time.perf_counter() - start, 1),
    }


class NeedleCache:
    """Needle reports computed once per model and setup, kept in memory and as JSON in HeadLab's cache folder."""

    def __init__(self) -> None:
        self._found: dict[str, dict] = {}
        self._lock = threading.Lock()

    def get(self, lm: LanguageModel, razor_kv_heads: list[str], setup: NeedleSetup) -> dict:
        """The report for ``lm``: from memory, from disk, or computed now (minutes on a CPU)."""
        name = f"{lm.model_id.strip('/').replace('/', '_')}-{setup.key()}"
        path = cache_dir() / "heads" / f"needles-{name}.json"
        with self._lock:
            if name not in self._found:
                if path.is_file():
                    self._found[name] = json.loads(path.read_text())
                else:
                    report = needle_report(lm, razor_kv_heads, setup)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(json.dumps(report))
                    self._found[name] = report
            return self._found[name]
