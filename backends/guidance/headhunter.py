"""HeadHunter: greedy selection of the attention heads whose perturbation best serves an objective.

Each round scores every head not yet chosen, together with the heads already chosen, on the same M seeds, and keeps
the top k; R rounds. All candidates of a round share one batched sampler run per chunk: every sample's perturbed
branch carries its own head set (see ``softpag.PerturbationState``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from backends.guidance.adapters import GuidedModel
from backends.guidance.objectives import group_scores
from backends.guidance.sampler import CancelledError, guided_sample
from backends.guidance.softpag import format_heads, strengths_for

Head = tuple[int, int]
#: progress(done steps, total steps, message)
ProgressFn = Callable[[int, int, str], None]


@dataclass(frozen=True)
class SearchSettings:
    """How HeadHunter samples and selects (the paper searches with u = 1, then lowers u to remove artifacts)."""

    condition: str
    objective: str = "confidence"
    seeds: int = 4
    rounds: int = 1
    top_k: int = 3
    u: float = 1.0
    pag_scale: float = 3.0
    cfg_scale: float = 1.0
    steps: int = 20
    #: most samples in one sampler run (candidates × seeds)
    max_batch: int = 144


def score_head_sets(
    model: GuidedModel, head_sets: list[list[Head]], settings: SearchSettings, on_step: Callable[[int], None]
) -> np.ndarray:
    """The objective of each head set, averaged (or set-scored) over the same ``settings.seeds`` seeds."""
    seeds = list(range(settings.seeds))
    per_run = max(1, settings.max_batch // settings.seeds)
    scores = []
    for start in range(0, len(head_sets), per_run):
        chunk = head_sets[start:start + per_run]
        rows = [pairs for pairs in chunk for _ in seeds]
        strengths = strengths_for(rows, settings.u, model.layers, model.heads)
        images = guided_sample(
            model, settings.condition, seeds * len(chunk), settings.steps, settings.cfg_scale, settings.pag_scale,
            strengths, on_step=on_step,
        )
        scores.append(group_scores(model, settings.objective, images, settings.condition, len(chunk)))
    return np.concatenate(scores)


def head_hunter(model: GuidedModel, settings: SearchSettings, progress: ProgressFn | None = None) -> dict:
    """Run the greedy search; returns the chosen heads, each round's scores and the baseline score.

    ``progress`` is called after every sampler step and may raise :class:`CancelledError`: the search then stops and
    returns what it has chosen so far, with ``cancelled`` set.
    """
    start = time.perf_counter()
    all_heads = [(layer, head) for layer in range(model.layers) for head in range(model.heads)]
    per_run = max(1, settings.max_batch // settings.seeds)
    runs = 1 + sum(-(-(len(all_heads) - settings.top_k * index) // per_run) for index in range(settings.rounds))
    total, done = runs * settings.steps, 0
    message = "baseline"

    def on_step(_: int) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total, message)

    chosen: list[Head] = []
    rounds: list[dict] = []
    result = {"objective": settings.objective, "settings": settings.__dict__, "cancelled": False}
    try:
        result["baseline_score"] = round(float(score_head_sets(model, [[]], settings, on_step)[0]), 5)
        for round_index in range(settings.rounds):
            candidates = [head for head in all_heads if head not in chosen]
            if not candidates:
                break
            message = f"round {round_index + 1}/{settings.rounds}: scoring {len(candidates)} heads"
            scores = score_head_sets(model, [[*chosen, head] for head in candidates], settings, on_step)
            best = [candidates[index] for index in np.argsort(-scores, kind="stable")[: settings.top_k]]
            chosen += best
            pairs = zip(candidates, scores, strict=True)
            named = {format_heads([head]): round(float(value), 5) for head, value in pairs}
            rounds.append({"added": format_heads(best), "best_score": round(float(scores.max()), 5), "scores": named})
    except CancelledError:
        result["cancelled"] = True
    result.update(heads=format_heads(chosen), rounds=rounds, seconds=round(time.perf_counter() - start, 2))
    return result
