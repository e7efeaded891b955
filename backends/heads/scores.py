"""Head-type scores: what each attention head does, as one number per (layer, head).

Text-based scores come from :class:`TextScores`, a reducer that runs in the same forward pass as the panel's other
analyses (``attention.run_with_attention``) and sees one layer's ``[heads, T, T]`` map at a time:

* previous-token / duplicate-token / induction: TransformerLens' head-detector templates D (see
  :func:`template_masks`); score = Σ A·D / Σ A over the query rows where the template is defined. TransformerLens
  divides by *all* rows; we divide by the rows that have a target, so 1.0 means "a perfect head" whatever fraction
  of the input repeats (TransformerLens' number = ours × that fraction).
* sink (Gu et al.): mean attention on the first token over all queries but the first (which can only see itself).
* WAAD (Windowed Average Attention Distance, "Attention Illuminates LLM Reasoning"): mean over queries t ≥ 1 of
  Σ_s A[t,s]·min(t−s, W), W = 10: low = a local head.
* FAI (Future Attention Influence, same paper): FAI_s = mean over t > s of A[t,s]; a head's score is its largest
  FAI_s over positions s ≥ 1 that have at least W later queries (the first token is the sink score's business):
  high = a global head that keeps returning to one anchor token (reported in ``fai_anchor``).

Probe-based scores (:func:`probe_scores`) run on the fixed inputs of :mod:`backends.heads.probes` and are cached per
model: the three templates on repeated random tokens, RazorAttention's echo/induction split per KV head, the retrieval
score (Wu et al.) on needle-in-a-haystack prompts, and the successor score (Gould et al.) from each head's OV circuit.
"""

from __future__ import annotations

import re
import threading
import time

import torch

from backends.core.service import ServiceError
from backends.heads.attention import _rounded, run_with_attention
from backends.heads.generation import greedy_steps
from backends.heads.models import LanguageModel
from backends.heads.plan import AttentionChunk
from backends.heads.probes import (
    NeedleProbe,
    RepeatedTokens,
    describe_probes,
    needle_prompts,
    ordinal_tasks,
    repeated_random_tokens,
)

TEMPLATES = ("previous_token", "duplicate", "induction")
#: the eight scores of ``heads_scores`` in display order
SCORE_NAMES = ("previous_token", "duplicate", "induction", "retrieval", "successor", "sink", "waad", "fai")
WAAD_WINDOW = 10
RETRIEVAL_THRESHOLD = 0.1  # Wu et al.: a head scoring above 0.1 is a retrieval head
RETRIEVED_RECALL = 0.5  # a needle test counts when the answer's ROUGE-1 recall of the needle exceeds this
RAZOR_INDUCTION_SHARE = 0.14  # RazorAttention keeps the top 14 % of KV heads by induction score…
RAZOR_ECHO_SHARE = 0.01  # …plus the top 1 % by echo score as retrieval heads

SCORE_INFO: dict[str, dict[str, str]] = {
    "previous_token": {
        "title": "Previous-token heads",
        "formula": "score = Σᵢ A[i, i−1] / Σᵢ Σⱼ A[i, j]   (rows i ≥ 1)",
        "paper": "TransformerLens head detector (Nanda et al.); Olsson et al. 2022, In-context Learning and "
        "Induction Heads",
        "text": "How much of each query's attention goes to the token right before it. Previous-token heads copy "
        "the preceding token into the current position; induction heads later use that to find 'what came after "
        "this token last time'. Computed on the repeated random-token probe (template D[i, i−1] = 1).",
    },
    "duplicate": {
        "title": "Duplicate-token heads",
        "formula": "D[i, j] = 1 if xⱼ = xᵢ and j < i;  score = Σ A·D / Σ A over rows with a match",
        "paper": "TransformerLens head detector; Wang et al. 2022, Interpretability in the Wild (IOI)",
        "text": "How much attention a token pays to earlier copies of itself. On the repeated random-token probe every "
        "token of the 2nd–4th copies has earlier duplicates; RazorAttention calls this the echo score.",
    },
    "induction": {
        "title": "Induction heads",
        "formula": "D[i, j+1] = 1 if xⱼ = xᵢ and j < i;  score = Σ A·D / Σ A over rows with a match",
        "paper": "Olsson et al. 2022, In-context Learning and Induction Heads; TransformerLens head detector",
        "text": "Attention to the token that *followed* an earlier copy of the current token: [A][B] … [A] → look at "
        "[B] and predict it. On random tokens repeated 4× (a BOS first), clear induction heads score close to 1.",
    },
    "retrieval": {
        "title": "Retrieval heads",
        "formula": "per decode step: j* = argmax A[last, :]; if j* ∈ needle and token = x_{j*}: score += 1/|needle|",
        "paper": "Wu et al. 2024, Retrieval Head Mechanistically Explains Long-Context Factuality",
        "text": "Greedy answers to needle-in-a-haystack questions; a head earns credit when the token it attends to "
        "most lies in the needle and is exactly the token being generated (copy-paste from context). Averaged over the "
        "tests the model answered (ROUGE-1 recall > 0.5). Wu et al. call heads above 0.1 retrieval heads (~5 %).",
    },
    "successor": {
        "title": "Successor heads",
        "formula": "succ(h) = fraction of items t with argmax_{u ∈ task} W_U[u]·LN(W_O^h W_V^h LN₁(e(t))) = next(t)",
        "paper": "Gould et al. 2023, Successor Heads: Recurring, Interpretable Attention Heads In The Wild",
        "text": "From weights alone (the OV circuit): each item of an ordinal task (digits, number words, ordinals, "
        "days, months, letters, Roman numerals) is embedded as the residual stream after layer 0 for that token alone, "
        "passed through the head's value and output matrices, the final norm and the unembedding; the head succeeds "
        "when, among the task's tokens, the successor gets the highest logit (days and months wrap around).",
    },
    "sink": {
        "title": "Attention-sink heads",
        "formula": "α₁ = mean over queries t ≥ 1 of A[t, 0]",
        "paper": "Xiao et al. 2023, StreamingLLM; Gu et al. 2024, When Attention Sink Emerges",
        "text": "The share of attention parked on the first token. Softmax must put its mass somewhere; many heads "
        "'switch off' by dumping it on the first token. Gu et al. call a head a sink head when α₁ > 0.3.",
    },
    "waad": {
        "title": "Local heads (WAAD)",
        "formula": f"WAAD_t = Σ_(s≤t) A[t, s] · min(t − s, W),  W = {WAAD_WINDOW};  score = mean over t ≥ 1",
        "paper": "Li et al. 2025, Attention Illuminates LLM Reasoning: The Preplan-and-Anchor Rhythm",
        "text": "How far back a head looks, with distances clipped at W tokens. Low values are locally focused heads "
        "(phrasal chunks, a sawtooth near the diagonal); values near W look beyond the window.",
    },
    "fai": {
        "title": "Global / anchor heads (FAI)",
        "formula": "FAI_s = mean over t > s of A[t, s];  score = max over s ≥ 1 with ≥ W later queries",
        "paper": "Li et al. 2025, Attention Illuminates LLM Reasoning: The Preplan-and-Anchor Rhythm",
        "text": "Future Attention Influence: the average attention a token receives from all later tokens. A globally "
        "focused head keeps returning to a few anchor tokens; its score is the FAI of its strongest anchor (the "
        "first token excluded, see the sink score), and the anchor's position is reported.",
    },
}


# -- templates and the text-based reducer ------------------------------------------------------------------------
def template_masks(input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """TransformerLens' detection templates ``[T, T]`` (rows = queries) for previous-token, duplicate and induction."""
    n_tokens = input_ids.shape[0]
    previous = torch.diag(torch.ones(max(n_tokens - 1, 0)), -1)
    earlier = torch.ones(n_tokens, n_tokens).tril(-1).bool()
    duplicate = ((input_ids[:, None] == input_ids[None, :]).cpu() & earlier).float()
    induction = torch.zeros(n_tokens, n_tokens)
    induction[:, 1:] = duplicate[:, :-1]
    return {"previous_token": previous, "duplicate": duplicate, "induction": induction}


class TextScores:
    """Reducer: previous-token, duplicate, induction, sink, WAAD and FAI for every head, chunk by chunk.

    Every score reads only a few weights per query row (the diagonal band, the earlier copies of the row's token,
    the first column) plus the column sums for FAI, so a chunk costs little beyond the pass that made it.
    """

    def __init__(self, n_layers: int, n_heads: int, window: int = WAAD_WINDOW):
        self.window = window
        self.sums = {name: torch.zeros(n_layers, n_heads, dtype=torch.float64) for name in (*TEMPLATES, "sink", "waad")}
        self.received: dict[int, torch.Tensor] = {}  # layer → [H, T]: Σ over later queries t > s of A[t, s]
        self.target_rows = {name: 0 for name in TEMPLATES}
        self.n_tokens = 0
        self.fai_anchor = torch.full((n_layers, n_heads), -1, dtype=torch.long)

    def update(self, layer: int, chunk: AttentionChunk) -> None:
        """Add one chunk's rows to layer ``layer``'s scores."""
        weights, start, ids = chunk.weights, chunk.row_start, chunk.input_ids
        n_heads, n_rows, n_keys = weights.shape
        rows = torch.arange(start, chunk.row_end, device=weights.device)
        local = torch.arange(n_rows, device=weights.device)
        self.n_tokens = chunk.n_tokens
        sums = self.sums
        # previous token: the weight on key t−1 of every row t ≥ 1
        has_previous = rows >= 1
        sums["previous_token"][layer] += weights[:, local[has_previous], rows[has_previous] - 1].sum(-1).double().cpu()
        # duplicate / induction: the weights on earlier copies of the row's token (and on the keys just after them)
        same = (ids[start : chunk.row_end, None] == ids[None, :n_keys]) & (
            torch.arange(n_keys, device=weights.device)[None, :] < rows[:, None]
        )
        pair_rows, pair_keys = same.nonzero(as_tuple=True)
        sums["duplicate"][layer] += weights[:, pair_rows, pair_keys].sum(-1).double().cpu()
        sums["induction"][layer] += weights[:, pair_rows, pair_keys + 1].sum(-1).double().cpu()
        # sink: the first column, rows t ≥ 1
        sums["sink"][layer] += weights[:, local[has_previous], 0].sum(-1).double().cpu()
        # WAAD: Σ_s A[t,s]·min(t−s, W) = W·Σ_{s≤t} A[t,s] − Σ_{d<W} (W−d)·A[t, t−d]
        on_or_before = (
            torch.ones(n_heads, n_rows, device=weights.device)
            if chunk.causal
            else (weights * (torch.arange(n_keys, device=weights.device)[None, :] <= rows[:, None])).sum(-1)
        )
        waad = self.window * on_or_before
        for distance in range(min(self.window, chunk.row_end)):
            band = rows >= distance
            waad[:, band] -= (self.window - distance) * weights[:, local[band], rows[band] - distance]
        sums["waad"][layer] += waad[:, has_previous].sum(-1).double().cpu()
        # FAI: column sums over strictly later rows
        below = weights.sum(1)  # [H, keys]
        diagonal_keys = rows[rows < n_keys]
        below[:, diagonal_keys] -= weights[:, local[rows < n_keys], diagonal_keys]
        if not chunk.causal:  # keys after a row's own position are not "later queries"
            after = torch.arange(n_keys, device=weights.device)[None, :] > rows[:, None]
            below -= (weights * after).sum(1)
        received = self.received.setdefault(layer, torch.zeros(n_heads, chunk.n_keys, dtype=torch.float64))
        received[:, :n_keys] += below.double().cpu()
        if layer == 0:
            self.target_rows = {
                name: count + int(has_previous.sum() if name == "previous_token" else same.any(-1).sum())
                for name, count in self.target_rows.items()
            }

    @property
    def values(self) -> dict[str, torch.Tensor]:
        """Every score ``[layers, heads]`` from the sums so far (and ``fai_anchor`` updated alongside)."""
        n_tokens = self.n_tokens
        values = {name: (self.sums[name] / max(self.target_rows[name], 1)).float() for name in TEMPLATES}
        values["sink"] = (self.sums["sink"] / max(n_tokens - 1, 1)).float()
        values["waad"] = (self.sums["waad"] / max(n_tokens - 1, 1)).float()
        fai = torch.zeros_like(values["sink"])
        last_anchor = n_tokens - 1 - self.window  # positions s in [1, last_anchor] have ≥ W later queries
        for layer, received in self.received.items():
            if last_anchor >= 1:
                later = torch.arange(n_tokens - 1, 0, -1).double()  # T−1−s for s = 0…T−2
                best, position = (received[:, 1 : last_anchor + 1] / later[1 : last_anchor + 1]).max(-1)
                fai[layer] = best.float()
                self.fai_anchor[layer] = position + 1
        values["fai"] = fai
        return values

    def result(self) -> dict:
        """``{score: [layer][head]}`` for the six text-based scores, plus ``fai_anchor`` positions."""
        found = {name: _rounded(values) for name, values in self.values.items()}
        found["fai_anchor"] = self.fai_anchor.tolist()
        return found


# -- probe-based scores ------------------------------------------------------------------------------------------------
def repeated_token_scores(lm: LanguageModel, probe: RepeatedTokens) -> dict:
    """The three template scores on the repeated random-token probe, and RazorAttention's split per KV head."""
    reducer = TextScores(lm.n_layers, lm.n_heads)
    run_with_attention(lm, probe.input_ids, [reducer])
    templates = {name: reducer.values[name] for name in TEMPLATES}
    return {"templates": templates, "razor": razor_split(lm, templates["duplicate"], templates["induction"])}


def razor_split(lm: LanguageModel, echo: torch.Tensor, induction: torch.Tensor) -> dict:
    """RazorAttention: group query heads per KV head (max), keep the top 14 % by induction + top 1 % by echo.

    ``echo``/``induction`` are ``[layers, heads]``; the result lists them per KV head and names the retrieval
    (full-cache) KV heads as ``"layer.kv_head"``; every other KV head is a streaming head (sinks + recent window).
    """
    group = lm.heads_per_kv_head
    echo_kv = echo.reshape(lm.n_layers, lm.n_kv_heads, group).amax(-1)
    induction_kv = induction.reshape(lm.n_layers, lm.n_kv_heads, group).amax(-1)
    total = echo_kv.numel()
    keep = set(induction_kv.flatten().topk(max(1, round(RAZOR_INDUCTION_SHARE * total))).indices.tolist())
    keep |= set(echo_kv.flatten().topk(max(1, round(RAZOR_ECHO_SHARE * total))).indices.tolist())
    retrieval = [f"{index // lm.n_kv_heads}.{index % lm.n_kv_heads}" for index in sorted(keep)]
    return {
        "echo": _rounded(echo_kv),
        "induction": _rounded(induction_kv),
        "retrieval_kv_heads": retrieval,
        "heads_per_kv_head": group,
    }


def needle_test(lm: LanguageModel, probe: NeedleProbe, extra_tokens: int = 2) -> tuple[torch.Tensor, list[int]]:
    """One needle test: each head's retrieval credit ``[layers, heads]`` and the greedy answer's token ids.

    The answer runs for the needle's length plus ``extra_tokens`` steps (it stops early at end-of-sequence).
    """
    needle_ids = torch.tensor(probe.input_ids[probe.needle_start : probe.needle_end])
    credit = torch.zeros(lm.n_layers, lm.n_heads)
    generated = []
    for step in greedy_steps(lm, probe.input_ids, len(needle_ids) + extra_tokens, with_attention=True):
        generated.append(step.token_id)
        attended = step.attention.argmax(-1).cpu()  # j* for every [layer, head]
        inside = (attended >= probe.needle_start) & (attended < probe.needle_end)
        offset = (attended - probe.needle_start).clamp(0, len(needle_ids) - 1)
        copied = inside & (needle_ids[offset] == step.token_id)
        credit += copied.float() / len(needle_ids)
    return credit, generated


def retrieval_scores(lm: LanguageModel) -> dict:
    """Wu et al.'s retrieval score per head, averaged over the needle tests the model answered.

    Returns ``scores`` ``[layers, heads]``, ``n_retrieved`` and, per test, the answer and whether it counted.
    """
    total = torch.zeros(lm.n_layers, lm.n_heads)
    tests = []
    for probe in needle_prompts(lm.tokenizer):
        credit, generated = needle_test(lm, probe)
        answer = lm.tokenizer.decode(generated, skip_special_tokens=True)
        recall = rouge1_recall(answer, probe.needle)
        counted = recall > RETRIEVED_RECALL
        if counted:
            total += credit
        tests.append(
            {
                "needle": probe.needle,
                "depth": probe.depth,
                "answer": answer,
                "recall": round(recall, 3),
                "counted": counted,
            }
        )
    n_retrieved = sum(test["counted"] for test in tests)
    return {"scores": total / max(n_retrieved, 1), "tests": tests, "n_retrieved": n_retrieved}


def rouge1_recall(candidate: str, reference: str) -> float:
    """ROUGE-1 recall: the share of the reference's words (lower-cased, with repeats) found in the candidate."""
    words = re.compile(r"\w+")
    reference_words = words.findall(reference.lower())
    available = words.findall(candidate.lower())
    hits = 0
    for word in reference_words:
        if word in available:
            available.remove(word)
            hits += 1
    return hits / max(len(reference_words), 1)


def successor_scores(lm: LanguageModel) -> dict:
    """Gould et al.'s successor score per head from its OV circuit (see ``SCORE_INFO["successor"]``)."""
    tasks = ordinal_tasks(lm.tokenizer)
    if not tasks:
        raise ServiceError(f"{lm.model_id}: no ordinal task is single-token for this tokenizer")
    token_ids = sorted({token for task in tasks for token in task.token_ids})
    row = {token: index for index, token in enumerate(token_ids)}
    with torch.no_grad():
        hidden = lm.model(torch.tensor(token_ids, device=lm.device)[:, None], output_hidden_states=True)
        effective = hidden.hidden_states[1][:, 0].float()  # residual stream after layer 0, each token alone
        unembed = lm.model.get_output_embeddings().weight[token_ids].float()  # [tokens, d_model]
        final_norm = _final_norm(lm)
        scores = torch.zeros(lm.n_layers, lm.n_heads)
        n_pairs = sum(len(task.successor_pairs()) for task in tasks)
        for layer in range(lm.n_layers):
            head_outputs = _ov_outputs(lm, layer, effective)  # [heads, tokens, d_model]
            logits = _in_own_dtype(final_norm, head_outputs) @ unembed.T  # [heads, tokens, tokens]
            for task in tasks:
                rows = torch.tensor([row[token] for token in task.token_ids])
                task_logits = logits[:, rows][:, :, rows]  # [heads, items, items]
                predicted = task_logits.argmax(-1)
                for item, successor in task.successor_pairs():
                    scores[layer] += (predicted[:, item] == successor).float().cpu()
    return {"scores": scores / n_pairs, "tasks": [task.name for task in tasks], "n_pairs": n_pairs}


def _attention_parts(lm: LanguageModel, layer: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(the layer's input norm, its attention module) for Llama-style and GPT-2-style blocks."""
    attention = lm.attention_modules()[layer]
    blocks = [module for module in lm.model.modules() if attention in module.children()]
    norm = next(
        (getattr(blocks[0], name) for name in ("input_layernorm", "ln_1") if blocks and hasattr(blocks[0], name)), None
    )
    if norm is None:
        raise ServiceError(f"{lm.model_id}: successor scores support Llama- and GPT-2-style blocks only")
    return norm, attention


def _ov_outputs(lm: LanguageModel, layer: int, residual: torch.Tensor) -> torch.Tensor:
    """Every head's output ``[heads, tokens, d_model]`` when it attends fully to a token with residual ``residual``."""
    norm, attention = _attention_parts(lm, layer)
    normed = _in_own_dtype(norm, residual)
    head_dim = lm.model.config.hidden_size // lm.n_heads if not hasattr(attention, "head_dim") else attention.head_dim
    if hasattr(attention, "v_proj") and hasattr(attention, "o_proj"):
        values = _in_own_dtype(attention.v_proj, normed)  # [tokens, kv_heads·d]
        values = values.reshape(len(residual), lm.n_kv_heads, head_dim)
        values = values.repeat_interleave(lm.heads_per_kv_head, dim=1)  # query head h reads KV head h // group
        w_out = attention.o_proj.weight.float().T.reshape(lm.n_heads, head_dim, -1)  # [heads, d, d_model]
    elif hasattr(attention, "c_attn") and hasattr(attention, "c_proj"):  # GPT-2 Conv1D: x @ W + b
        width = lm.n_heads * head_dim
        values = _in_own_dtype(attention.c_attn, normed)[:, 2 * width :]
        values = values.reshape(len(residual), lm.n_heads, head_dim)
        w_out = attention.c_proj.weight.float().reshape(lm.n_heads, head_dim, -1)
    else:
        raise ServiceError(f"{lm.model_id}: successor scores support Llama- and GPT-2-style attention only")
    return torch.einsum("thd,hdm->htm", values, w_out)


def _in_own_dtype(module: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """``module(inputs)`` with the inputs cast to the module's parameter dtype (float16 on a GPU), as float32."""
    return module(inputs.to(next(module.parameters()).dtype)).float()


def _final_norm(lm: LanguageModel) -> torch.nn.Module:
    base = lm.model.base_model
    for name in ("norm", "ln_f", "final_layernorm", "final_layer_norm"):
        if isinstance(getattr(base, name, None), torch.nn.Module):
            return getattr(base, name)
    raise ServiceError(f"{lm.model_id}: no final norm found; successor scores are not supported for this model")


class ProbeScoreCache:
    """Probe-based scores computed once per model (they depend on the model only, never on the user's text)."""

    def __init__(self) -> None:
        self._found: dict[str, dict] = {}
        self._lock = threading.Lock()

    def clear(self) -> None:
        """Forget every model's probe-based scores (the next call recomputes them)."""
        with self._lock:
            self._found.clear()

    def get(self, lm: LanguageModel) -> dict:
        """The probe-based scores of ``lm``: computed on first use, then served from the cache."""
        key = f"{lm.model_id}@{lm.device}"
        with self._lock:
            if key not in self._found:
                start = time.perf_counter()
                self._found[key] = probe_scores(lm)
                self._found[key]["details"]["seconds"] = round(time.perf_counter() - start, 3)
            return self._found[key]


def probe_scores(lm: LanguageModel) -> dict:
    """Templates and RazorAttention on repeated random tokens; retrieval and successor for causal models.

    Returns ``scores`` (name → ``[layers, heads]`` tensor), ``razor``, ``details`` and ``unavailable``
    (score → the reason it could not be computed for this model; its values are then zeros).
    """
    repeated = repeated_token_scores(lm, repeated_random_tokens(lm.tokenizer))
    scores = dict(repeated["templates"])
    details: dict = {"probes": describe_probes(lm.tokenizer)}
    unavailable = {}
    if lm.is_causal:
        retrieval = retrieval_scores(lm)
        scores["retrieval"] = retrieval.pop("scores")
        details["retrieval"] = retrieval
        if retrieval["n_retrieved"] == 0:
            unavailable["retrieval"] = "the model answered none of the needle questions, so no head earned credit"
    else:
        unavailable["retrieval"] = "an encoder does not generate, so it has no retrieval score"
    try:
        successor = successor_scores(lm) if lm.is_causal else None
    except ServiceError as error:
        successor, unavailable["successor"] = None, str(error)
    if successor is None:
        unavailable.setdefault("successor", "successor scores need a language-model head (a causal model)")
    else:
        scores["successor"] = successor.pop("scores")
        details["successor"] = successor
    for name in ("retrieval", "successor"):
        scores.setdefault(name, torch.zeros(lm.n_layers, lm.n_heads))
    return {"scores": scores, "razor": repeated["razor"], "details": details, "unavailable": unavailable}


def head_scores(lm: LanguageModel, text_scores: dict, probes: dict) -> dict:
    """The ``heads_scores`` JSON: the eight scores (templates from the probe), the text's templates, the rest."""
    scores = {name: _rounded(probes["scores"][name]) for name in (*TEMPLATES, "retrieval", "successor")}
    scores.update({name: text_scores[name] for name in ("sink", "waad", "fai")})
    return {
        "model": lm.model_id,
        "n_layers": lm.n_layers,
        "n_heads": lm.n_heads,
        "n_kv_heads": lm.n_kv_heads,
        "scores": {name: scores[name] for name in SCORE_NAMES},
        "text_templates": {name: text_scores[name] for name in TEMPLATES},
        "fai_anchor": text_scores["fai_anchor"],
        "razor": probes["razor"],
        "unavailable": probes["unavailable"],
        "details": probes["details"],
        "explanations": SCORE_INFO,
    }


def top_heads(values: torch.Tensor, k: int) -> list[tuple[int, int]]:
    """The ``k`` highest-scoring (layer, head) pairs of a ``[layers, heads]`` score, best first."""
    n_heads = values.shape[1]
    return [(index // n_heads, index % n_heads) for index in values.flatten().topk(k).indices.tolist()]
