"""The Heads panel's head atlas: how much each task's loss rises when one attention head alone is mean-ablated.

Each task has a small fixed probe set of texts with *target* tokens, the ones the task is about:

* ``induction`` — a run of random tokens repeated: the targets are the repeat (copying needs induction heads);
* ``retrieval`` — a pass key, filler, then the question again: the targets are the key's tokens;
* ``successor`` — days, months, numbers in order: the targets are the later items;
* ``factual`` — "The capital of France is" → the answer's tokens.

A head is mean-ablated: its output is replaced by its mean over all probe texts (clean run), which removes what
the head says about *this* input while keeping its average contribution. For every head, all probe texts run with
that head alone ablated (heads batched as rows of one pass), and

    effect[task][layer][head] = loss on the task's targets (head off) − loss (no head off)    (nats per token)

so a positive effect means the task needs that head. Effects are single-head: they are not additive, and a head
with no effect may be redundant with another rather than useless.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.nn.functional import cross_entropy

from backends.core.head_rows import head_rows
from backends.core.heads import HeadStack, atlas_result
from backends.heads.models import LanguageModel
from backends.heads.plan import Ablation

#: bump when a probe or the effect definition changes (cached atlases are then recomputed)
ATLAS_VERSION = 1
TASKS = ("induction", "retrieval", "successor", "factual")
#: progress(done, total, message); may raise to cancel
ProgressFn = Callable[[float, float, str], None]

_FACTS = (
    ("The capital of France is", " Paris"), ("The capital of Japan is", " Tokyo"),
    ("The capital of Italy is", " Rome"), ("The capital of Germany is", " Berlin"),
    ("The capital of Spain is", " Madrid"), ("The capital of Egypt is", " Cairo"),
    ("The largest planet in the solar system is", " Jupiter"), ("Water freezes at zero degrees", " Celsius"),
)
_SEQUENCES = (
    "Monday, Tuesday, Wednesday, Thursday, Friday, Saturday, Sunday",
    "January, February, March, April, May, June, July, August",
    "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11",
    "Sunday, Monday, Tuesday, Wednesday, Thursday, Friday",
    "March, April, May, June, July, August, September",
    "10, 11, 12, 13, 14, 15, 16, 17",
)
_FILLER = ("The grass is green.", "The sky is blue.", "The sun is warm.", "Birds sing in the trees.",
           "Rivers flow to the sea.")


@dataclass(frozen=True)
class ProbeText:
    """One probe: its token ids and the positions of its target tokens (each predicted from the one before)."""

    task: str
    input_ids: tuple[int, ...]
    targets: tuple[int, ...]


def encode(lm: LanguageModel, text: str) -> list[int]:
    """The token ids of ``text`` (no special tokens)."""
    return lm.tokenizer(text, add_special_tokens=False)["input_ids"]


def prompt_and_answer(lm: LanguageModel, task: str, prompt: str, answer: str) -> ProbeText:
    """A probe whose targets are the tokens of ``answer`` after ``prompt``."""
    prompt_ids, answer_ids = encode(lm, prompt), encode(lm, answer)
    ids = prompt_ids + answer_ids
    return ProbeText(task, tuple(ids), tuple(range(len(prompt_ids), len(ids))))


def probe_texts(lm: LanguageModel, per_task: int = 3, seed: int = 0) -> list[ProbeText]:
    """``per_task`` probe texts of every task; ``seed`` picks which (held-out checks use another seed)."""
    rng = random.Random(seed)
    probes = []
    vocabulary = range(1000, min(20_000, len(lm.tokenizer)))
    for _ in range(per_task):
        run = rng.sample(vocabulary, 12)
        probes.append(ProbeText("induction", tuple(run + run), tuple(range(13, 24))))
    for _ in range(per_task):
        key = str(rng.randrange(10_000, 100_000))
        filler = " ".join(rng.choice(_FILLER) for _ in range(4))
        prompt = f"The pass key is {key}. {filler} The pass key is"
        probes.append(prompt_and_answer(lm, "retrieval", prompt, f" {key}"))
    for text in rng.sample(_SEQUENCES, min(per_task, len(_SEQUENCES))):
        ids = encode(lm, text)
        probes.append(ProbeText("successor", tuple(ids), tuple(range(len(ids) // 2, len(ids)))))
    for prompt, answer in rng.sample(_FACTS, min(per_task, len(_FACTS))):
        probes.append(prompt_and_answer(lm, "factual", prompt, answer))
    return probes


def head_means(lm: LanguageModel, probes: list[ProbeText]) -> dict[int, torch.Tensor]:
    """Every head's output averaged over all positions of all probes (clean runs): ``layer → [heads, head_dim]``."""
    every = {layer: list(range(lm.n_heads)) for layer in range(lm.n_layers)}
    total: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        for probe in probes:
            recording = Ablation("mean", every, recording=True)
            ids = torch.tensor([probe.input_ids], device=lm.device)
            lm.model(ids, use_cache=False, logits_to_keep=1, **lm.plan(ablation=recording).kwargs())
            for layer, mean in recording.means.items():
                total[layer] = total.get(layer, 0) + mean * len(probe.input_ids)
    count = sum(len(probe.input_ids) for probe in probes)
    return {layer: value / count for layer, value in total.items()}


#: model types whose forward is exactly embeddings → decoder layers (one rotary embedding) → norm → lm head
LAYER_LOOP_TYPES = ("llama",)


def _decoder_parts(lm: LanguageModel) -> tuple | None:
    """(decoder layers, final norm, rotary embedding, lm head) of a Llama causal model, else None."""
    if getattr(lm.model.config, "model_type", None) not in LAYER_LOOP_TYPES:
        return None
    backbone = getattr(lm.model, "model", None)
    parts = (*(getattr(backbone, name, None) for name in ("layers", "norm", "rotary_emb")),
             getattr(lm.model, "lm_head", None))
    return None if any(part is None for part in parts) else parts


def _logits_from(
    lm: LanguageModel, ids: torch.Tensor, hidden: list[torch.Tensor] | None, first: int, plan, keep: torch.Tensor
) -> torch.Tensor:
    """Logits at positions ``keep`` of every row, running only layers ``first…`` from the clean ``hidden`` states
    (Llama-style models; others run the whole model)."""
    parts = _decoder_parts(lm)
    if parts is None or hidden is None:
        return lm.model(ids, use_cache=False, logits_to_keep=keep, **plan.kwargs()).logits
    layers, norm, rotary, lm_head = parts
    states = hidden[first].repeat(ids.shape[0] // hidden[first].shape[0], 1, 1)
    positions = torch.arange(ids.shape[1], device=ids.device)[None]
    embeddings = rotary(states, position_ids=positions)
    for layer in layers[first:]:
        states = layer(states, attention_mask=None, position_embeddings=embeddings, position_ids=positions,
                       use_cache=False, **plan.kwargs())
    return lm_head(norm(states[:, keep]))


def target_losses(
    lm: LanguageModel, probes: list[ProbeText], means: dict[int, torch.Tensor], progress: ProgressFn | None = None,
) -> dict[str, torch.Tensor]:
    """Each task's mean target loss (nats): ``[1 + layers·heads]``, first with no head off, then each head alone off
    (layer by layer). Probes of one task run together; a pass holds rows (head, probe) of one layer and starts at
    that layer from the clean run's hidden states."""
    losses: dict[str, torch.Tensor] = {}
    tasks = list(dict.fromkeys(probe.task for probe in probes))
    for task_index, task in enumerate(tasks):
        group = [probe for probe in probes if probe.task == task]
        length = max(len(probe.input_ids) for probe in group)
        ids = torch.tensor([list(p.input_ids) + [0] * (length - len(p.input_ids)) for p in group], device=lm.device)
        needed = sorted({target - 1 for probe in group for target in probe.targets})
        keep = torch.tensor(needed, device=lm.device)
        with torch.no_grad():
            clean = lm.model(ids, use_cache=False, output_hidden_states=True, **lm.plan().kwargs())
        hidden = list(clean.hidden_states) if _decoder_parts(lm) is not None else None
        results = [target_loss(group, needed, clean.logits[:, keep].float()[None])]
        for layer in range(lm.n_layers):
            rows = head_rows([[(layer, head)] for head in range(lm.n_heads) for _ in group], lm.n_layers,
                             lm.n_heads).bool()
            plan = lm.plan(ablation=Ablation.rows("mean", rows, means))
            with torch.no_grad():
                logits = _logits_from(lm, ids.repeat(lm.n_heads, 1), hidden, layer, plan, keep)
            results.append(target_loss(group, needed, logits.float().view(lm.n_heads, len(group), len(needed), -1)))
            if progress is not None:
                progress(task_index * lm.n_layers + layer + 1, len(tasks) * lm.n_layers, f"{task}: layer {layer}")
        losses[task] = torch.cat(results)
    return losses


def target_loss(group: list[ProbeText], needed: list[int], logits: torch.Tensor) -> torch.Tensor:
    """Mean over ``group`` of each probe's target cross-entropy, for every head set: logits ``[S, probes, kept,
    vocab]`` (kept positions = ``needed``) → ``[S]``."""
    column = {position: index for index, position in enumerate(needed)}
    loss = torch.zeros(logits.shape[0])
    for index, probe in enumerate(group):
        picked = [column[target - 1] for target in probe.targets]
        targets = torch.tensor([probe.input_ids[t] for t in probe.targets], device=logits.device)
        chosen = logits[:, index, picked]  # [S, targets, vocab]
        loss += cross_entropy(chosen.transpose(1, 2), targets.expand(len(chosen), -1), reduction="none").mean(1).cpu()
    return loss / len(group)


def head_stack(lm: LanguageModel) -> HeadStack:
    """The model's self-attention heads as a head stack."""
    return HeadStack(f"{lm.model_id} attention", lm.n_layers, lm.n_heads)


def compute_head_effects(lm: LanguageModel, per_task: int = 3, progress: ProgressFn | None = None) -> dict:
    """The atlas of ``lm`` over :data:`TASKS` (see the module docstring); JSON-able."""
    start = time.perf_counter()
    stack = head_stack(lm)
    probes = probe_texts(lm, per_task)
    losses = target_losses(lm, probes, head_means(lm, probes), progress)
    described = {"texts": len(probes), "per_task": per_task, "ablation": "mean over the probe texts",
                 "tokens": sum(len(probe.input_ids) for probe in probes)}
    return atlas_result(
        lm.model_id, stack, dict.fromkeys(losses, "nats per target token"),
        {task: float(loss[0]) for task, loss in losses.items()},
        {task: loss[1:].tolist() for task, loss in losses.items()},
        described, ATLAS_VERSION, time.perf_counter() - start, lower_is_better=losses,
    )
