"""Head ablation: switch chosen heads off and measure what breaks.

Three modes, applied inside the attention computation itself so they hold for a full pass and for cached decoding:

* ``zero``: the head's output (its slice of the attention output, before the output projection) is set to 0.
* ``uniform``: the head's query is set to 0, so every score is 0 and softmax spreads attention evenly over the
  positions the head may see. This is the limit of Ships' method (scaling W_q by ~1e-5, "On the Role of Attention
  Heads in Large Language Model Safety") and of AttentionInfluence's head masking.
* ``mean``: the head's output is replaced by its mean over the positions of the clean (unablated) text.

Mechanism: while :func:`ablated` is active the model runs the registered ``headlab_ablation`` attention function,
which calls the model's own eager attention and edits only the chosen heads; with no heads chosen it is exactly the
eager computation. The plan lives in a context variable, so a concurrent call in another thread is unaffected.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch
from torch.nn.functional import cross_entropy
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from backends.core.service import ServiceError
from backends.heads.attention import tokenize
from backends.heads.generation import greedy_steps
from backends.heads.models import LanguageModel
from backends.heads.scores import top_heads

MODES = ("zero", "uniform", "mean")
ABLATION_ATTENTION = "headlab_ablation"
GENERATED_TOKENS = 20
TOP_TOKENS = 5
#: AttentionInfluence masks the top retrieval heads; Wu et al. find about 5 % of heads are retrieval heads
INFLUENCE_HEAD_SHARE = 0.05
_HEAD = re.compile(r"^L?(\d+)(?:[.:]H?|H)(\d+|\*)$", re.IGNORECASE)


@dataclass
class AblationPlan:
    """Which heads of which attention module to ablate, how, and (mean mode) the recorded mean outputs."""

    mode: str
    heads_by_module: dict[int, list[int]]  # id(attention module) → head indices
    recording: bool = False
    means: dict[int, torch.Tensor] = field(default_factory=dict)  # id(module) → [len(heads), head_dim]


_PLAN: ContextVar[AblationPlan | None] = ContextVar("headlab_ablation_plan", default=None)


def _ablating_attention(module, query, key, value, attention_mask, **kwargs):
    """The model's eager attention, with the active plan's heads edited (query/key/value are [B, heads, T, d])."""
    eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if eager is None:
        raise ServiceError(f"{type(module).__name__} has no eager attention function; ablation is not supported")
    plan = _PLAN.get()
    heads = plan.heads_by_module.get(id(module)) if plan is not None else None
    if not heads:
        return eager(module, query, key, value, attention_mask, **kwargs)
    if plan.mode == "uniform":
        query = query.clone()
        query[:, heads] = 0  # all scores 0 → softmax is uniform over the visible positions
        return eager(module, query, key, value, attention_mask, **kwargs)
    output, weights = eager(module, query, key, value, attention_mask, **kwargs)  # output: [B, T, heads, d]
    if plan.recording:
        plan.means[id(module)] = output[:, :, heads].float().mean(dim=(0, 1))
        return output, weights
    output = output.clone()
    output[:, :, heads] = 0 if plan.mode == "zero" else plan.means[id(module)].to(output.dtype)
    return output, weights


AttentionInterface.register(ABLATION_ATTENTION, _ablating_attention)
AttentionMaskInterface.register(ABLATION_ATTENTION, eager_mask)


def parse_heads(spec: str, n_layers: int, n_heads: int) -> list[tuple[int, int]]:
    """``"3.4, 17.*  L18H6"`` → sorted unique (layer, head) pairs; ``layer.*`` is every head of that layer."""
    found = set()
    for item in re.split(r"[\s,;]+", (spec or "").strip()):
        if not item:
            continue
        match = _HEAD.match(item)
        if match is None:
            raise ServiceError(f"{item!r} is not a head: write layer.head (e.g. 3.4) or layer.* for a whole layer")
        layer = int(match.group(1))
        if layer >= n_layers:
            raise ServiceError(f"layer {layer} does not exist: the model has layers 0–{n_layers - 1}")
        if match.group(2) == "*":
            found.update((layer, head) for head in range(n_heads))
            continue
        head = int(match.group(2))
        if head >= n_heads:
            raise ServiceError(f"head {head} does not exist: each layer has heads 0–{n_heads - 1}")
        found.add((layer, head))
    return sorted(found)


def require_causal(lm: LanguageModel) -> None:
    """Raise a :class:`ServiceError` for encoders: ablation compares next-token predictions."""
    if not lm.is_causal:
        raise ServiceError(f"{lm.model_id} is an encoder; ablation compares next-token predictions of causal models")


@contextmanager
def ablated(
    lm: LanguageModel,
    heads: list[tuple[int, int]],
    mode: str,
    recording: bool = False,
    means: dict[int, torch.Tensor] | None = None,
) -> Iterator[AblationPlan]:
    """Run ``lm`` with ``heads`` ablated in ``mode`` inside the ``with`` block (mean mode needs recorded ``means``)."""
    if mode not in MODES:
        raise ServiceError(f"unknown ablation mode {mode!r}; choose one of {', '.join(MODES)}")
    require_causal(lm)
    modules = lm.attention_modules()
    by_module: dict[int, list[int]] = {}
    for layer, head in heads:
        by_module.setdefault(id(modules[layer]), []).append(head)
    plan = AblationPlan(mode=mode, heads_by_module=by_module, recording=recording, means=dict(means or {}))
    if mode == "mean" and not recording and set(plan.means) != set(by_module):
        raise ServiceError("mean ablation needs the heads' mean outputs; record them on the clean text first")
    config = lm.model.config
    previous = config._attn_implementation
    token = _PLAN.set(plan)
    config._attn_implementation = ABLATION_ATTENTION
    try:
        yield plan
    finally:
        config._attn_implementation = previous
        _PLAN.reset(token)


def mean_outputs(lm: LanguageModel, input_ids: torch.Tensor, heads: list[tuple[int, int]]) -> dict[int, torch.Tensor]:
    """Each chosen head's output averaged over the positions of ``input_ids`` (clean run): mean-ablation values."""
    with ablated(lm, heads, "mean", recording=True) as plan, torch.no_grad():
        lm.model(input_ids[None], use_cache=False)
    return plan.means


def next_token_logits(lm: LanguageModel, input_ids: torch.Tensor) -> torch.Tensor:
    """Logits ``[T, vocab]`` (float32) for every position of ``input_ids`` (under whatever ablation is active)."""
    with torch.no_grad():
        return lm.model(input_ids[None], use_cache=False).logits[0].float()


def language_model_loss(logits: torch.Tensor, input_ids: torch.Tensor) -> float:
    """Mean next-token cross-entropy (nats) of ``logits`` ``[T, vocab]`` on ``input_ids`` ``[T]``."""
    return float(cross_entropy(logits[:-1], input_ids[1:].to(logits.device)))


def ablation_report(
    lm: LanguageModel,
    text: str,
    heads_spec: str,
    mode: str,
    retrieval: torch.Tensor,
    n_generate: int = GENERATED_TOKENS,
) -> dict:
    """The ``heads_ablate`` JSON: KL at the last token, loss, top tokens and greedy text before and after, and the
    AttentionInfluence number of the text given the per-head ``retrieval`` scores ``[layers, heads]``."""
    require_causal(lm)
    heads = parse_heads(heads_spec, lm.n_layers, lm.n_heads)
    tokenized = tokenize(lm, text)
    input_ids = tokenized.input_ids.to(lm.device)
    if input_ids.numel() < 2:
        raise ServiceError("the text needs at least two tokens (a loss compares each token with the next)")
    input_ids = input_ids[: lm.max_tokens - n_generate]
    means = mean_outputs(lm, input_ids, heads) if mode == "mean" and heads else None
    before = next_token_logits(lm, input_ids)
    with ablated(lm, heads, mode, means=means):
        after = next_token_logits(lm, input_ids)
        generation_after = greedy_text(lm, input_ids, n_generate)
    generation_before = greedy_text(lm, input_ids, n_generate)
    loss_before = language_model_loss(before, input_ids)
    log_before, log_after = before.log_softmax(-1), after.log_softmax(-1)
    kl_per_position = (log_before.exp() * (log_before - log_after)).sum(-1).clamp_min(0)
    return {
        "model": lm.model_id,
        "n_layers": lm.n_layers,
        "n_heads": lm.n_heads,
        "heads": [f"{layer}.{head}" for layer, head in heads],
        "mode": mode,
        "n_tokens": int(input_ids.numel()),
        "truncated": tokenized.truncated,
        "kl": round(float(kl_per_position[-1]), 6),
        "kl_per_position": [round(float(value), 5) for value in kl_per_position],
        "tokens": tokenized.tokens[: input_ids.numel()],
        "loss_before": round(loss_before, 5),
        "loss_after": round(language_model_loss(after, input_ids), 5),
        "top_before": top_tokens(lm, before[-1]),
        "top_after": top_tokens(lm, after[-1]),
        "generation_before": generation_before,
        "generation_after": generation_after,
        "attention_influence": attention_influence(lm, input_ids, loss_before, retrieval),
    }


def top_tokens(lm: LanguageModel, logits: torch.Tensor, k: int = TOP_TOKENS) -> list[dict]:
    """The ``k`` likeliest next tokens with their probabilities."""
    probabilities, ids = logits.softmax(-1).topk(k)
    return [
        {"token": lm.tokenizer.decode([int(token)]), "prob": round(float(p), 5)}
        for p, token in zip(probabilities, ids, strict=True)
    ]


def greedy_text(lm: LanguageModel, input_ids: torch.Tensor, n_tokens: int) -> str:
    """The greedy continuation of ``input_ids`` (under whatever ablation is active), as text."""
    generated = [step.token_id for step in greedy_steps(lm, input_ids.tolist(), n_tokens, with_attention=False)]
    return lm.tokenizer.decode(generated, skip_special_tokens=True)


def attention_influence(
    lm: LanguageModel,
    input_ids: torch.Tensor,
    loss: float,
    retrieval: torch.Tensor,
    share: float = INFLUENCE_HEAD_SHARE,
) -> dict:
    """AttentionInfluence: relative loss change (L_masked − L) / L when the top retrieval heads attend uniformly.

    ``loss`` is the clean loss L on ``input_ids``; the top ``share`` of heads by ``retrieval`` score are masked.
    """
    heads = top_heads(retrieval, max(1, round(share * lm.n_layers * lm.n_heads)))
    with ablated(lm, heads, "uniform"):
        masked = language_model_loss(next_token_logits(lm, input_ids), input_ids)
    return {
        "heads": [f"{layer}.{head}" for layer, head in heads],
        "loss": round(loss, 5),
        "loss_masked": round(masked, 5),
        "relative_change": round((masked - loss) / max(loss, 1e-12), 5),
    }
