"""Head ablation: switch chosen heads off and measure what breaks.

Three modes (:class:`backends.heads.plan.Ablation`), applied inside the model's attention function so they hold for
a full pass and for cached decoding:

* ``zero``: the head's output (its slice of the attention output, before the output projection) is set to 0.
* ``uniform``: the head's query is set to 0, so every score is 0 and softmax spreads attention evenly over the
  positions the head may see. This is the limit of Ships' method (scaling W_q by ~1e-5, "On the Role of Attention
  Heads in Large Language Model Safety") and of AttentionInfluence's head masking.
* ``mean``: the head's output is replaced by its mean over the positions of the clean (unablated) text.

The ablation travels with each model call as that call's plan; the model itself never changes.
"""

from __future__ import annotations

import torch
from torch.nn.functional import cross_entropy

from backends.core.heads import parse_heads
from backends.core.service import ServiceError
from backends.heads.attention import tokenize
from backends.heads.generation import greedy_steps
from backends.heads.models import LanguageModel
from backends.heads.plan import ABLATION_MODES, Ablation, by_layer
from backends.heads.scores import top_heads

GENERATED_TOKENS = 20
TOP_TOKENS = 5
#: AttentionInfluence masks the top retrieval heads; Wu et al. find about 5 % of heads are retrieval heads
INFLUENCE_HEAD_SHARE = 0.05


def require_causal(lm: LanguageModel) -> None:
    """Raise a :class:`ServiceError` for encoders: ablation compares next-token predictions."""
    if not lm.is_causal:
        raise ServiceError(f"{lm.model_id} is an encoder; ablation compares next-token predictions of causal models")


def ablation(
    lm: LanguageModel,
    heads: list[tuple[int, int]],
    mode: str,
    means: dict[int, torch.Tensor] | None = None,
) -> Ablation | None:
    """The plan part that ablates ``heads`` in ``mode`` (mean mode needs the recorded ``means``); None for no heads."""
    if mode not in ABLATION_MODES:
        raise ServiceError(f"unknown ablation mode {mode!r}; choose one of {', '.join(ABLATION_MODES)}")
    require_causal(lm)
    return Ablation(mode, by_layer(heads), dict(means or {})) if heads else None


def mean_outputs(lm: LanguageModel, input_ids: torch.Tensor, heads: list[tuple[int, int]]) -> dict[int, torch.Tensor]:
    """Each chosen head's output averaged over the positions of ``input_ids`` (clean run): mean-ablation values,
    ``layer → [heads of that layer, head_dim]``."""
    recording = Ablation("mean", by_layer(heads), recording=True)
    with torch.no_grad():
        lm.model(input_ids[None], use_cache=False, **lm.plan(ablation=recording).kwargs())
    return recording.means


def next_token_logits(lm: LanguageModel, input_ids: torch.Tensor, plan: Ablation | None = None) -> torch.Tensor:
    """Logits ``[T, vocab]`` (float32) for every position of ``input_ids``, with the heads of ``plan`` ablated."""
    with torch.no_grad():
        return lm.model(input_ids[None], use_cache=False, **lm.plan(ablation=plan).kwargs()).logits[0].float()


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
    heads = parse_heads(heads_spec, lm.n_layers, lm.n_heads, f"{lm.model_id} attention")
    tokenized = tokenize(lm, text)
    input_ids = tokenized.input_ids.to(lm.device)
    if input_ids.numel() < 2:
        raise ServiceError("the text needs at least two tokens (a loss compares each token with the next)")
    input_ids = input_ids[: lm.max_tokens - n_generate]
    means = mean_outputs(lm, input_ids, heads) if mode == "mean" and heads else None
    plan = ablation(lm, heads, mode, means)
    before = next_token_logits(lm, input_ids)
    after = next_token_logits(lm, input_ids, plan)
    generation_after = greedy_text(lm, input_ids, n_generate, plan)
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


def greedy_text(lm: LanguageModel, input_ids: torch.Tensor, n_tokens: int, plan: Ablation | None = None) -> str:
    """The greedy continuation of ``input_ids`` with the heads of ``plan`` ablated, as text."""
    steps = greedy_steps(lm, input_ids.tolist(), n_tokens, with_attention=False, ablation=plan)
    generated = [step.token_id for step in steps]
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
    masked = language_model_loss(next_token_logits(lm, input_ids, ablation(lm, heads, "uniform")), input_ids)
    return {
        "heads": [f"{layer}.{head}" for layer, head in heads],
        "loss": round(loss, 5),
        "loss_masked": round(masked, 5),
        "relative_change": round((masked - loss) / max(loss, 1e-12), 5),
    }
