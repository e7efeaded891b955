"""HeadHunter: greedy selection of the attention heads whose perturbation best serves an objective.

Each round scores every head not yet chosen, together with the heads already chosen, on the same M seeds, and keeps
the top k; R rounds. All candidates of a round share one batched sampler run per chunk: every sample's perturbed
branch carries its own head set (see ``softpag.Perturbation``). Progress is counted in head sets scored.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from backends.core.heads import Head, format_heads
from backends.guidance.adapters import GuidedModel
from backends.guidance.objectives import group_scores
from backends.guidance.sampler import CancelledError, guided_sample
from backends.guidance.softpag import strengths_for

#: progress(head sets scored, head sets in all, message)
ProgressFn = Callable[[float, float, str], None]


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
    model: GuidedModel, head_sets: list[list[Head]], settings: SearchSettings, on_scored: Callable[[float], None]
) -> np.ndarray:
    """The objective of each head set, averaged (or set-scored) over the same ``settings.seeds`` seeds.

    ``on_scored(n)`` is called after every sampler step with the (fractional) number of head sets scored so far.
    """
    seeds = list(range(settings.seeds))
    per_run = max(1, settings.max_batch // settings.seeds)
    scores = []
    for start in range(0, len(head_sets), per_run):
        chunk = head_sets[start:start + per_run]
        rows = [pairs for pairs in chunk for _ in seeds]
        strengths = strengths_for(rows, settings.u, model.layers, model.heads)

        def on_step(step: int, first: int = start, size: int = len(chunk)) -> None:
            on_scored(first + size * (step + 1) / settings.steps)

        images = guided_sample(
            model, settings.condition, seeds * len(chunk), settings.steps, settings.cfg_scale, settings.pag_scale,
            strengths, on_step=on_step,
        )
        scores.append(group_scores(model, settings.objective, images, settings.condition, len(chunk)))
    return np.concatenate(scores)


def head_hunter(model: GuidedModel, settings: SearchSettings, progress: ProgressFn | None = None) -> dict:
    """Run the greedy search; returns the chosen heads, each round's scores and the baseline score.

    ``progress(head sets scored, head sets in all, message)`` is called after every sampler step and may raise
    :class:`CancelledError`: the search then stops and returns what it has chosen so far, with ``cancelled`` set.
    """
    start = time.perf_counter()
    all_heads = model.stack.all_heads()
    total = 1 + sum(max(0, len(all_heads) - settings.top_k * index) for index in range(settings.rounds))
    finished, message = 0, "baseline"

    def on_scored(scored: float) -> None:
        if progress is not None:
            progress(finished + scored, total, f"{message}: {int(finished + scored)}/{total} head sets scored")

    chosen: list[Head] = []
    rounds: list[dict] = []
    result = {"objective": settings.objective, "settings": settings.__dict__, "cancelled": False}
    try:
        result["baseline_score"] = round(float(score_head_sets(model, [[]], settings, on_scored)[0]), 5)
        finished = 1
        for round_index in range(settings.rounds):
            candidates = [head for head in all_heads if head not in chosen]
            if not candidates:
                break
            message = f"round {round_index + 1}/{settings.rounds}"
            scores = score_head_sets(model, [[*chosen, head] for head in candidates], settings, on_scored)
            finished += len(candidates)
            best = [candidates[index] for index in np.argsort(-scores, kind="stable")[: settings.top_k]]
            chosen += best
            pairs = zip(candidates, scores, strict=True)
            named = {format_heads([head]): round(float(value), 5) for head, value in pairs}
            rounds.append({"added": format_heads(best), "best_score": round(float(scores.max()), 5), "scores": named})
    except CancelledError:
        result["cancelled"] = True
    result.update(heads=format_heads(chosen), rounds=rounds, seconds=round(time.perf_counter() - start, 2))
    return result
