"""Greedy generation that can report, at each generated token, where every head looked.

The prompt minus its last token is run once to fill the key/value cache; then every step feeds one token, so a step's
attention is a single row per head ([layers, heads, keys]) and nothing of size T×T is ever kept.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from backends.core.service import ServiceError
from backends.heads.attention import CaptureLayers, token_labels, tokenize
from backends.heads.models import LanguageModel
from backends.heads.plan import Ablation, Streaming


@dataclass
class Step:
    """One greedy step: the logits that chose ``token_id`` and, when asked for, each head's attention row."""

    token_id: int
    logits: torch.Tensor  # [vocab]
    attention: torch.Tensor | None  # [layers, heads, keys]: the query is the token fed at this step


def greedy_steps(
    lm: LanguageModel,
    input_ids: list[int],
    n_tokens: int,
    with_attention: bool,
    ablation: Ablation | None = None,
    streaming: Streaming | None = None,
) -> Iterator[Step]:
    """Yield ``n_tokens`` greedy steps after ``input_ids`` (stops early at end-of-sequence), with the heads of
    ``ablation`` and ``streaming`` changed for the prompt and every step."""
    if not lm.is_causal:
        raise ServiceError(f"{lm.model_id} is an encoder: it does not generate text; pick a causal model")
    if not input_ids:
        raise ServiceError("the text is empty: type something for the model to continue")
    if len(input_ids) + n_tokens > lm.context_length:
        raise ServiceError(
            f"{len(input_ids)} + {n_tokens} tokens exceed {lm.model_id}'s context of {lm.context_length} tokens"
        )
    ids = torch.tensor([input_ids], device=lm.device)
    eos = lm.tokenizer.eos_token_id
    with torch.no_grad():
        cache = None
        if ids.shape[1] > 1:
            prompt_plan = lm.plan(ablation=ablation, streaming=streaming)
            cache = lm.model(ids[:, :-1], use_cache=True, **prompt_plan.kwargs()).cache
        next_input = ids[:, -1:]
        for _ in range(n_tokens):
            capture = CaptureLayers() if with_attention else None
            plan = lm.plan(reducers=[capture] if capture else [], ablation=ablation, streaming=streaming)
            output = lm.model(next_input, cache=cache, use_cache=True, **plan.kwargs())
            cache = output.cache
            logits = output.logits[0, -1].float()
            token_id = int(logits.argmax())
            attention = None
            if capture is not None:
                attention = torch.stack([capture.maps[layer][:, -1] for layer in range(lm.n_layers)])
            yield Step(token_id=token_id, logits=logits, attention=attention)
            if token_id == eos:
                return
            next_input = torch.tensor([[token_id]], device=lm.device)


def generate_with_attention(
    lm: LanguageModel, text: str, n_tokens: int, top_k: int = 3, ablation: Ablation | None = None
) -> dict:
    """Generate ``n_tokens`` greedily after ``text`` and, per step, each head's ``top_k`` attended positions.

    Returns ``tokens`` (the prompt's then the generated tokens, as text), ``n_prompt``, and ``steps``: for each
    generated token its ``position``, ``token``, and ``top_positions`` / ``top_weights`` as
    [layers][heads][top_k] lists (positions index ``tokens``; at step s the query is the token before the new one).
    The heads of ``ablation`` are ablated for the prompt and every step.
    """
    if not 1 <= n_tokens <= 64:
        raise ServiceError("generate between 1 and 64 tokens")
    tokenized = tokenize(lm, text)
    input_ids = tokenized.input_ids[: max(1, lm.max_tokens - n_tokens)].tolist()
    tokens = tokenized.tokens[: len(input_ids)]
    steps = []
    for step in greedy_steps(lm, input_ids, n_tokens, with_attention=True, ablation=ablation):
        weights, positions = step.attention.topk(min(top_k, step.attention.shape[-1]), dim=-1)
        steps.append(
            {
                "position": len(tokens),
                "token": token_labels(lm, [step.token_id])[0],
                "top_positions": positions.tolist(),
                "top_weights": weights.double().round(decimals=4).tolist(),
            }
        )
        tokens.append(steps[-1]["token"])
    return {"model": lm.model_id, "tokens": tokens, "n_prompt": len(input_ids), "steps": steps}
