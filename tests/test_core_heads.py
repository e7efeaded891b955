"""The shared head vocabulary: head-list parsing and formatting, task specificity, ranking, the effects cache."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from backends.core.heads import (
    EffectsCache,
    Head,
    HeadStack,
    format_heads,
    parse_heads,
    task_specificity,
    top_heads,
)
from backends.core.service import ServiceError

LAYERS, HEADS = 30, 9


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("18.6", [(18, 6)]),
        ("L18H6", [(18, 6)]),
        ("l18h6", [(18, 6)]),
        ("L18.H6", [(18, 6)]),
        ("18:6", [(18, 6)]),
        ("L18.6", [(18, 6)]),
        ("0.0", [(0, 0)]),
        ("29.8", [(29, 8)]),
        ("17.*", [(17, head) for head in range(HEADS)]),
        ("L17H*", [(17, head) for head in range(HEADS)]),
        ("L3", [(3, head) for head in range(HEADS)]),
        ("18.6,17.3", [(17, 3), (18, 6)]),
        (" 18.6 , 17.3 ", [(17, 3), (18, 6)]),
        ("18.6 17.3;2.0", [(2, 0), (17, 3), (18, 6)]),
        ("18.6,18.6,L18H6", [(18, 6)]),
        ("L2,2.1", [(2, head) for head in range(HEADS)]),
        ("18.6,", [(18, 6)]),
        ("none", []),
        ("NONE", []),
        ("", []),
        ("   ", []),
    ],
)
def test_every_accepted_form(spec: str, expected: list[tuple[int, int]]):
    assert parse_heads(spec, LAYERS, HEADS) == expected


def test_all_names_every_head_and_heads_are_named_tuples():
    every = parse_heads("all", 3, 2)
    assert every == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    assert every == HeadStack("tiny", 3, 2).all_heads()
    assert isinstance(every[0], Head) and str(every[-1]) == "2.1" and every[-1].layer == 2


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("30.1", "layer 30 does not exist; the SmolLM2 has layers 0–29"),
        ("L30", "layer 30 does not exist; the SmolLM2 has layers 0–29"),
        ("30.*", "layer 30 does not exist"),
        ("3.9", "head 3.9 does not exist; each layer of the SmolLM2 has heads 0–8"),
        ("L3H9", "head 3.9 does not exist"),
        ("three", "'three' is not a head"),
        ("3-4", "'3-4' is not a head"),
        ("3", "'3' is not a head"),
        ("-1.2", "'-1.2' is not a head"),
        ("3.", "'3.' is not a head"),
        (".4", "'.4' is not a head"),
        ("L", "'l' is not a head"),
        ("3.4.5", "'3.4.5' is not a head"),
        ("*.1", "'*.1' is not a head"),
        ("1.2,x", "'x' is not a head"),
        ("all,1.2", "'all' is not a head"),
    ],
)
def test_every_bad_value_is_a_service_error_naming_the_ranges(spec: str, message: str):
    with pytest.raises(ServiceError, match=message):
        parse_heads(spec, LAYERS, HEADS, "SmolLM2")


def test_stack_parse_names_the_stack():
    stack = HeadStack("DiT self-attention", 6, 6)
    assert stack.parse("L1H2") == [(1, 2)]
    assert stack.describe() == {"stack": "DiT self-attention", "layers": 6, "heads": 6}
    with pytest.raises(ServiceError, match="the DiT self-attention has layers 0–5"):
        stack.parse("6.0")


def test_format_round_trips():
    heads = [(3, 4), (2, 2), (0, 2)]
    assert format_heads(heads) == "3.4,2.2,0.2"  # in the given order
    assert format_heads([]) == "none"
    assert parse_heads(format_heads(heads), 6, 6) == sorted(heads)
    assert format_heads(parse_heads("none", 6, 6)) == "none"


def test_specificity_is_one_for_a_single_task_head_and_zero_for_an_even_one():
    effects = {
        "a": [[1.0, 2.0, 0.0]],  # head 0: equal share (after per-task scaling); head 1: only task a
        "b": [[10.0, 0.0, 0.0]],  # task b in other units: scaled by its largest |effect|
    }
    specificity = task_specificity(effects)
    assert specificity[0][1] == 1.0
    assert specificity[0][2] == 0.0  # no effect anywhere
    share_a, share_b = 0.5 / 1.5, 1.0 / 1.5
    entropy = -(share_a * math.log(share_a) + share_b * math.log(share_b)) / math.log(2)
    assert specificity[0][0] == pytest.approx(1 - entropy, abs=1e-4)
    even = task_specificity({"a": [[-1.0]], "b": [[2.0]], "c": [[0.5]]})  # signs do not matter; all at their max
    assert even == [[0.0]]
    assert task_specificity({"only": [[1.0, 2.0]]}) == [[0.0, 0.0]]
    assert task_specificity({}) == []


def test_top_heads_ranks_largest_first_with_ties_in_head_order():
    grid = [[0.1, 0.5], [0.5, -1.0]]
    assert top_heads(grid, 3) == ["0.1", "1.0", "0.0"]
    assert top_heads([[-value for value in row] for row in grid], 1) == ["1.1"]


def test_effects_cache_keeps_results_in_memory_and_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("HEADLAB_CACHE_DIR", str(tmp_path))
    cache = EffectsCache("guidance")
    assert cache.get("fashion-dit/v1") is None
    cache.put("fashion-dit/v1", {"top": {"a": ["1.2"]}})
    assert cache.get("fashion-dit/v1") == {"top": {"a": ["1.2"]}}
    assert EffectsCache("guidance").get("fashion-dit/v1") == {"top": {"a": ["1.2"]}}  # a new process reads the disk
    assert EffectsCache("guidance").get("fashion-dit/v2") is None
    assert list((tmp_path / "head_effects" / "guidance").glob("*.json"))


def test_the_vocabulary_is_torch_free():
    code = "import sys, backends.core.heads; print('torch' in sys.modules, 'numpy' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]
