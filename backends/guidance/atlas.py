"""The Guidance panel's head atlas: how much each objective changes when one attention head alone is switched off.

A head is switched off by perturbing it with u = 1 (its attention becomes the identity, so it passes each token's
own value on) in every branch of the sampler, plain sampling otherwise (no CFG, no PAG). On a fixed probe set —
every class × a few seeds for class models, one prompt × a few seeds for text models — each objective is scored
with the head off and compared with the unablated samples of the same seeds:

    effect[objective][layer][head] = score(head off) − score(no head off)     (scores are "higher is better")

so a negative effect means the objective needs that head. Task specificity (``backends.core.heads``) says whether a
head matters for one objective or for all alike. Effects are single-head: they are not additive, and a head with
no effect may be redundant with another rather than useless.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from backends.core.heads import Head, atlas_result
from backends.guidance.adapters import GuidedModel
from backends.guidance.objectives import UNITS, group_scores, objectives_for
from backends.guidance.sampler import guided_sample
from backends.guidance.softpag import strengths_for

#: bump when the probe set or the effect definition changes (cached atlases are then recomputed)
ATLAS_VERSION = 1
PROBE_STEPS = 8
PROBE_SEEDS_PER_CLASS = 2
PROBE_PROMPT = "a photo of a red fox in the snow"
PROBE_PROMPT_SEEDS = 4
#: most samples in one batched sampler run
MAX_BATCH = 160
#: progress(done, total, message); may raise to cancel
ProgressFn = Callable[[float, float, str], None]


@dataclass(frozen=True)
class Probe:
    """The fixed inputs every head is measured on: one condition and one seed per sample, and the step count."""

    conditions: tuple[str, ...]
    seeds: tuple[int, ...]
    steps: int = PROBE_STEPS

    def describe(self) -> dict:
        """JSON: how many samples, of which conditions, which seeds, how many steps."""
        return {"samples": len(self.seeds), "conditions": sorted(set(self.conditions)), "seeds": list(self.seeds),
                "steps": self.steps}


def probe_for(model: GuidedModel, seed_offset: int = 0, per_class: int = PROBE_SEEDS_PER_CLASS) -> Probe:
    """The probe set of ``model``: every class (at most 10) × ``per_class`` seeds, or the probe prompt × 4 seeds.

    ``seed_offset`` moves every seed (held-out checks use a different offset than the atlas).
    """
    classes = model.describe().get("classes") or []
    if model.conditioning == "class" and classes:
        names = [str(index) for index in range(min(10, len(classes)))]
        conditions = tuple(name for _ in range(per_class) for name in names)
    else:
        conditions = (PROBE_PROMPT,) * PROBE_PROMPT_SEEDS
    return Probe(conditions, tuple(seed_offset + index for index in range(len(conditions))))


def score_heads_off(
    model: GuidedModel, head_sets: list[list[Head]], probe: Probe, objectives: list[str],
    progress: ProgressFn | None = None,
) -> dict[str, np.ndarray]:
    """Each objective's score [len(head_sets)] on ``probe`` with each head set switched off (batched runs)."""
    samples = len(probe.seeds)
    per_run = max(1, MAX_BATCH // samples)
    scores: dict[str, list[np.ndarray]] = {name: [] for name in objectives}
    for start in range(0, len(head_sets), per_run):
        chunk = head_sets[start:start + per_run]
        off = strengths_for([heads for heads in chunk for _ in probe.seeds], 1.0, model.layers, model.heads)

        def on_step(step: int, first: int = start, size: int = len(chunk)) -> None:
            if progress is not None:
                progress(first + size * (step + 1) / probe.steps, len(head_sets),
                         f"head sets {first + 1}–{first + size} of {len(head_sets)}")

        images = guided_sample(
            model, probe.conditions * len(chunk), list(probe.seeds) * len(chunk), probe.steps, heads_off=off,
            on_step=on_step,
        )
        for name in objectives:
            scores[name].append(group_scores(model, name, images, probe.conditions * len(chunk), len(chunk)))
    return {name: np.concatenate(values) for name, values in scores.items()}


def compute_head_effects(model: GuidedModel, progress: ProgressFn | None = None) -> dict:
    """The full atlas of ``model`` over all its objectives (see the module docstring); JSON-able."""
    start = time.perf_counter()
    probe = probe_for(model)
    objectives = objectives_for(model)
    scores = score_heads_off(model, [[], *[[head] for head in model.stack.all_heads()]], probe, objectives, progress)
    return atlas_result(
        model.name, model.stack, {name: UNITS[name] for name in objectives},
        {name: float(scores[name][0]) for name in objectives}, {name: scores[name][1:] for name in objectives},
        probe.describe(), ATLAS_VERSION, time.perf_counter() - start,
    )


def effect_grid_images(model: GuidedModel, condition: str, seed: int, steps: int) -> torch.Tensor:
    """[1 + layers·heads] samples of one seed: unablated first, then each head off in turn (layer by layer)."""
    heads = model.stack.all_heads()
    off = strengths_for([[], *[[head] for head in heads]], 1.0, model.layers, model.heads)
    return guided_sample(model, condition, [seed] * len(off), steps, heads_off=off)
