"""The Heads panel's head atlas and per-call ``heads_off`` on the real SmolLM2: per-row ablation, the layer-skipping
pass, the shipped atlas's shape, held-out checks of its top heads, and concurrent calls."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from backends.core.head_rows import head_rows
from backends.core.heads import harm
from backends.core.service import ServiceError
from backends.heads.ablation import next_token_logits
from backends.heads.attention import tokenize
from backends.heads.effects import (
    TASKS,
    ProbeText,
    _logits_from,
    encode,
    head_means,
    probe_texts,
    prompt_and_answer,
    target_loss,
)
from backends.heads.models import LanguageModel
from backends.heads.plan import Ablation, by_layer
from backends.heads.service import HeadsService

TEXT = "The cat sat on the mat. The dog sat on the log. The cat sat on the"
#: held-out facts and ordered sequences: none is among the atlas's probes
HELD_OUT_FACTS = (("The capital of Canada is", " Ottawa"), ("The capital of Kenya is", " Nairobi"),
                  ("The capital of Australia is", " Canberra"), ("The capital of Russia is", " Moscow"))
HELD_OUT_SEQUENCES = ("Wednesday, Thursday, Friday, Saturday, Sunday, Monday", "20, 21, 22, 23, 24, 25, 26, 27",
                      "April, May, June, July, August, September, October")


@pytest.fixture(scope="module")
def service() -> HeadsService:
    """One Heads service (the embedded SmolLM2)."""
    return HeadsService()


@pytest.fixture(scope="module")
def lm(service):
    """The embedded SmolLM2-135M."""
    return service.model("")


@pytest.fixture(scope="module")
def atlas(service) -> dict:
    """The embedded model's atlas (it ships with the app, so this reads it)."""
    return service.heads_head_effects()


def test_rows_of_a_batch_ablate_their_own_heads(lm):
    """A batch whose rows switch different heads off gives each row what that ablation gives alone."""
    ids = tokenize(lm, TEXT).input_ids
    every = {layer: list(range(lm.n_heads)) for layer in range(lm.n_layers)}
    recording = Ablation("mean", every, recording=True)
    lm.model(ids[None], use_cache=False, **lm.plan(ablation=recording).kwargs())
    cases = [[], [(16, 0)], [(23, 4), (3, 1)]]
    for mode in ("zero", "mean", "uniform"):
        rows = torch.zeros(len(cases), lm.n_layers, lm.n_heads, dtype=torch.bool)
        for row, heads in enumerate(cases):
            for layer, head in heads:
                rows[row, layer, head] = True
        batched = lm.model(ids[None].repeat(len(cases), 1), use_cache=False,
                           **lm.plan(ablation=Ablation.rows(mode, rows, recording.means)).kwargs()).logits.float()
        for row, heads in enumerate(cases):
            layers = by_layer(heads)
            means = {layer: recording.means[layer][chosen] for layer, chosen in layers.items()}
            expected = next_token_logits(lm, ids, Ablation(mode, layers, means) if heads else None)
            assert torch.allclose(batched[row], expected, atol=2e-4), (mode, heads)


def test_a_pass_started_at_a_layer_equals_the_whole_model(lm):
    """The atlas's layer-skipping pass (clean hidden states up to layer L, then layers L…) matches a full forward."""
    probes = [probe for probe in probe_texts(lm, 1) if probe.task == "retrieval"]
    ids = torch.tensor([probes[0].input_ids])
    keep = torch.tensor(sorted(target - 1 for target in probes[0].targets))
    clean = lm.model(ids, use_cache=False, output_hidden_states=True, **lm.plan().kwargs())
    rows = torch.zeros(1, lm.n_layers, lm.n_heads, dtype=torch.bool)
    rows[0, 12, 5] = True
    plan = lm.plan(ablation=Ablation.rows("mean", rows, head_means(lm, probes)))
    skipped = _logits_from(lm, ids, list(clean.hidden_states), 12, plan, keep)
    whole = lm.model(ids, use_cache=False, logits_to_keep=keep, **plan.kwargs()).logits
    assert torch.allclose(skipped, whole, atol=2e-4)
    unablated = _logits_from(lm, ids, list(clean.hidden_states), 12, lm.plan(), keep)
    assert torch.allclose(unablated, clean.logits[:, keep], atol=2e-4)
    assert not torch.allclose(skipped, unablated, atol=1e-3)


def test_the_atlas_has_the_documented_shape(atlas, lm):
    """Every task, a layers×heads grid per task, specificity in [0, 1], five top heads each, cached on disk."""
    assert atlas["model"] == "smollm2" and atlas["tasks"] == list(TASKS) and atlas["cached"] is True
    assert (atlas["layers"], atlas["heads"]) == (lm.n_layers, lm.n_heads)
    assert set(atlas["effects"]) == set(TASKS) and atlas["better"] == dict.fromkeys(TASKS, "lower")
    for grid in (*atlas["effects"].values(), atlas["specificity"]):
        assert len(grid) == lm.n_layers and all(len(row) == lm.n_heads for row in grid)
    assert all(0.0 <= value <= 1.0 for row in atlas["specificity"] for value in row)
    assert all(len(heads) == 5 for heads in atlas["top"].values())
    assert all(baseline > 0 for baseline in atlas["baseline"].values())
    some = atlas["top"]["induction"][0]
    layer, head = map(int, some.split("."))
    assert atlas["effects"]["induction"][layer][head] == max(max(row) for row in atlas["effects"]["induction"])


def test_choosing_tasks(service):
    """``tasks`` narrows the atlas; an unknown task is refused by name."""
    narrowed = service.heads_head_effects("", "factual,induction")
    assert narrowed["tasks"] == ["factual", "induction"] and set(narrowed["effects"]) == {"factual", "induction"}
    with pytest.raises(ServiceError, match="'grammar' not available"):
        service.heads_head_effects("", "grammar")


def losses_with_heads_off(
    lm: LanguageModel, probes: list[ProbeText], head_sets: list[list[tuple[int, int]]], means: dict[int, torch.Tensor]
) -> dict[str, list[float]]:
    """Each task's mean target loss (nats) with each head set mean-ablated, one whole-model pass per task (for
    checking atlas entries on other probes)."""
    rows = head_rows(head_sets, lm.n_layers, lm.n_heads).bool()
    losses = {}
    for task in dict.fromkeys(probe.task for probe in probes):
        group = [probe for probe in probes if probe.task == task]
        length = max(len(probe.input_ids) for probe in group)
        ids = torch.tensor([list(p.input_ids) + [0] * (length - len(p.input_ids)) for p in group], device=lm.device)
        needed = sorted({target - 1 for probe in group for target in probe.targets})
        plan = lm.plan(ablation=Ablation.rows("mean", rows.repeat_interleave(len(group), dim=0), means))
        with torch.no_grad():
            logits = lm.model(ids.repeat(len(head_sets), 1), use_cache=False,
                              logits_to_keep=torch.tensor(needed, device=lm.device), **plan.kwargs()).logits
        shaped = logits.float().view(len(head_sets), len(group), len(needed), -1)
        losses[task] = [round(float(value), 5) for value in target_loss(group, needed, shaped)]
    return losses


def least_harmful(atlas: dict, task: str) -> tuple[int, int]:
    """The head whose removal hurts ``task`` least."""
    cells = [(value, (layer, head)) for layer, row in enumerate(harm(atlas, task)) for head, value in enumerate(row)]
    return min(cells)[1]


@pytest.fixture(scope="module")
def held_out(lm) -> list[ProbeText]:
    """Probe texts of every task that the atlas never saw: other random runs and pass keys (another seed), other
    facts, other sequences."""
    drawn = [probe for probe in probe_texts(lm, 4, seed=11) if probe.task in ("induction", "retrieval")]
    facts = [prompt_and_answer(lm, "factual", prompt, answer) for prompt, answer in HELD_OUT_FACTS]
    sequences = []
    for text in HELD_OUT_SEQUENCES:
        ids = encode(lm, text)
        sequences.append(ProbeText("successor", tuple(ids), tuple(range(len(ids) // 2, len(ids)))))
    return drawn + facts + sequences


def test_top_heads_hurt_their_task_on_held_out_probes_more_than_the_least_effective_heads(lm, atlas, held_out):
    """On probes the atlas never saw, mean-ablating a task's top head raises that task's target loss more than
    ablating the head the atlas says matters least for it, for every task. (Prints the full task × head matrix,
    from which double dissociations can be read.)"""
    tops = {task: tuple(int(part) for part in atlas["top"][task][0].split(".")) for task in TASKS}
    least = {task: least_harmful(atlas, task) for task in TASKS}
    head_sets = [[], *([tops[task]] for task in TASKS), *([least[task]] for task in TASKS)]
    losses = losses_with_heads_off(lm, held_out, head_sets, head_means(lm, held_out))
    rise = {task: [value - values[0] for value in values[1:]] for task, values in losses.items()}
    print("rise of each task's loss (rows) with each task's top head off (columns):")
    for task in TASKS:
        print(f"  {task:>10}: " + "  ".join(f"{value:+.3f}" for value in rise[task][: len(TASKS)]))
    for index, task in enumerate(TASKS):
        assert rise[task][index] > rise[task][len(TASKS) + index] + 0.05, (task, rise[task])


def test_heads_off_changes_the_analysis_of_later_layers_only(service, atlas):
    """``heads_off`` mean-ablates for that call: layers before the head are unchanged, later ones change; "" is
    the default analysis."""
    plain = service.heads_analyze("", TEXT)
    assert service.heads_analyze("", TEXT, "")["stats"] == plain["stats"]
    off = service.heads_analyze("", TEXT, "L16H0")
    assert off["heads_off"] == "16.0" and plain["heads_off"] == "none"
    entropy, entropy_off = plain["stats"]["entropy"], off["stats"]["entropy"]
    assert entropy[:17] == entropy_off[:17]
    assert entropy[17:] != entropy_off[17:]


@pytest.mark.parametrize(("heads_off", "message"), [
    ("30.0", "layer 30 does not exist; the smollm2 attention has layers 0–29"),
    ("2.9", "head 2.9 does not exist; each layer of the smollm2 attention has heads 0–8"),
    ("two", "'two' is not a head"),
])
def test_bad_heads_off_is_refused_before_any_work(service, heads_off, message):
    """A malformed or out-of-range head list names the valid ranges, for analysis and generation alike."""
    for call in (lambda: service.heads_analyze("", TEXT, heads_off),
                 lambda: service.heads_generate("", TEXT, 2, heads_off)):
        with pytest.raises(ServiceError, match=message):
            call()


def test_heads_off_is_refused_for_encoders(service):
    """MiniLM is an encoder: switching its heads off is refused with the reason."""
    with pytest.raises(ServiceError, match="encoder"):
        service.heads_analyze("minilm", TEXT, "1.1")


def test_concurrent_generations_with_different_heads_off(service):
    """Threads generating with different heads off at once each get exactly their sequential result."""
    cases = ["", "16.0", "23.4,0.6", "L18", ""]
    sequential = [service.heads_generate("", TEXT, 4, heads_off)["tokens"] for heads_off in cases]
    assert sequential[1] != sequential[0] or sequential[3] != sequential[0]
    with ThreadPoolExecutor(max_workers=len(cases)) as pool:
        concurrent = list(pool.map(lambda heads_off: service.heads_generate("", TEXT, 4, heads_off)["tokens"], cases))
    assert concurrent == sequential
