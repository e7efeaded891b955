"""The documented probe inputs behind HeadLab's probe-based head scores.

Three families, each fixed (seeded) so the scores are reproducible and each inspectable through
:func:`describe_probes`:

* **Repeated random tokens** (TransformerLens' head detector, RazorAttention): a BOS token (when the tokenizer has
  one) followed by ``period`` tokens drawn uniformly from the non-special vocabulary, repeated ``repeats`` times.
  Random tokens carry no meaning, so the only way to predict the second copy is to look back at the first: heads
  that do so are induction heads; heads that look at the earlier copy of the *same* token are duplicate/echo heads.
* **Needle in a haystack** (Wu et al. 2024, "Retrieval Head…"): a neutral haystack of sentences with one needle
  sentence inserted at a given depth, then a question whose answer is the needle. Short enough for a CPU.
* **Ordinal sequences** (Gould et al., "Successor Heads"): digits, number words, ordinals, days, months, letters and
  Roman numerals; only tasks whose every item is a single token for the model's tokenizer are used.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: repeated-random-token probe: 64 tokens × 4 copies (+ BOS) = 257 tokens. RazorAttention uses 2,500 × 4; this
#: shorter probe keeps the one forward pass cheap on a CPU while still giving three later copies to look back on.
RANDOM_PERIOD = 64
RANDOM_REPEATS = 4
RANDOM_SEED = 0

HAYSTACK = (
    "The river flows slowly past the old mill.",
    "Farmers bring apples to the market every Tuesday.",
    "A light rain fell over the hills in the evening.",
    "The library opens early during the winter months.",
    "Children played football in the park after school.",
    "The baker sells fresh bread before sunrise.",
    "Boats rest in the harbour when the wind is strong.",
    "The museum shows paintings from many countries.",
    "A small cat sleeps on the warm windowsill.",
    "Trains leave the central station every ten minutes.",
    "The garden is full of roses in early summer.",
    "Students read quietly in the large hall.",
)
#: (needle sentence, question); the answer is the needle itself, as in Wu et al.'s needle-in-a-haystack tests
NEEDLES = (
    ("The magic number is 7294.", "What is the magic number?"),
    ("The secret code is 5813.", "What is the secret code?"),
)
NEEDLE_DEPTHS = (0.25, 0.75)
#: the long haystacks' sentences are drawn from these parts (subject, verb, object, place, time)
FILLER_PARTS = (
    (
        "the old farmer",
        "a quiet student",
        "the baker",
        "my neighbour",
        "the captain",
        "a tired doctor",
        "the painter",
        "our teacher",
        "the young pilot",
        "a careful driver",
        "the gardener",
        "the musician",
    ),
    ("carried", "painted", "repaired", "found", "sold", "cleaned", "watched", "borrowed", "described", "forgot"),
    (
        "a wooden chair",
        "the blue bicycle",
        "two baskets of pears",
        "an old map",
        "the kitchen window",
        "a heavy suitcase",
        "the garden fence",
        "a letter from home",
        "the brass lamp",
        "a box of nails",
    ),
    (
        "near the river",
        "in the village square",
        "behind the station",
        "at the harbour",
        "on the hill road",
        "inside the library",
        "by the bakery",
        "under the bridge",
        "in the market hall",
        "beside the school",
    ),
    (
        "before breakfast",
        "on a rainy Monday",
        "late in the evening",
        "after the storm",
        "during the festival",
        "in early spring",
        "at noon",
        "on Sunday morning",
        "before the train left",
        "in the cold winter",
    ),
)

#: name → (items, cyclic); items are tried with and without a leading space, the first fully single-token form wins
ORDINAL_SEQUENCES: dict[str, tuple[tuple[str, ...], bool]] = {
    "digits": (tuple("0123456789"), False),
    "number words": (("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"), False),
    "ordinals": (
        ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth"),
        False,
    ),
    "days": (("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"), True),
    "months": (
        (
            "January",
            "February",
            "March",
            "April",
            "May",
            "June",
            "July",
            "August",
            "September",
            "October",
            "November",
            "December",
        ),
        True,
    ),
    "letters": (tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ"), False),
    "roman numerals": (("I", "II", "III", "IV", "V", "VI", "VII", "VIII", "IX", "X"), False),
}


@dataclass(frozen=True)
class RepeatedTokens:
    """BOS (optional) + a random block of ``period`` tokens repeated ``repeats`` times."""

    input_ids: list[int]
    period: int
    repeats: int
    offset: int  # 1 when a BOS token comes first, else 0


@dataclass(frozen=True)
class NeedleProbe:
    """One needle-in-a-haystack prompt: its token ids and the needle's token span [start, end)."""

    input_ids: list[int]
    needle_start: int
    needle_end: int
    needle: str
    question: str
    depth: float


@dataclass(frozen=True)
class OrdinalTask:
    """An ordered set of single tokens (e.g. the days); item i's successor is item i+1 (wrapping when cyclic)."""

    name: str
    words: tuple[str, ...]
    token_ids: tuple[int, ...]
    cyclic: bool

    def successor_pairs(self) -> list[tuple[int, int]]:
        """(index, index of its successor) for every item that has one."""
        count = len(self.token_ids)
        last = count if self.cyclic else count - 1
        return [(index, (index + 1) % count) for index in range(last)]


def repeated_random_tokens(
    tokenizer, period: int = RANDOM_PERIOD, repeats: int = RANDOM_REPEATS, seed: int = RANDOM_SEED
) -> RepeatedTokens:
    """The seeded repeated-random-token probe for ``tokenizer`` (special tokens are never drawn)."""
    special = set(tokenizer.all_special_ids)
    candidates = torch.tensor([index for index in range(len(tokenizer)) if index not in special])
    generator = torch.Generator().manual_seed(seed)
    block = candidates[torch.randperm(len(candidates), generator=generator)[:period]].tolist()
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return RepeatedTokens(input_ids=bos + block * repeats, period=period, repeats=repeats, offset=len(bos))


def needle_prompts(tokenizer) -> list[NeedleProbe]:
    """Every needle at every depth of the short haystack, formatted with the model's chat template when it has one."""
    return [
        needle_probe(tokenizer, list(HAYSTACK), needle, question, depth)
        for needle, question in NEEDLES
        for depth in NEEDLE_DEPTHS
    ]


def needle_probe(tokenizer, sentences: list[str], needle: str, question: str, depth: float) -> NeedleProbe:
    """``needle`` inserted at ``depth`` (0 = first, 1 = last) of the haystack ``sentences``, then ``question``."""
    sentences = list(sentences)
    sentences.insert(round(len(sentences) * depth), needle)
    prompt = _as_prompt(tokenizer, " ".join(sentences) + "\n\n" + question)
    encoding = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
    char_start = prompt.index(needle)
    char_end = char_start + len(needle)
    inside = [
        index for index, (start, end) in enumerate(encoding["offset_mapping"]) if start < char_end and end > char_start
    ]
    return NeedleProbe(
        input_ids=list(encoding["input_ids"]),
        needle_start=inside[0],
        needle_end=inside[-1] + 1,
        needle=needle,
        question=question,
        depth=depth,
    )


def filler_sentences(tokenizer, n_tokens: int, seed: int) -> list[str]:
    """Seeded, varied haystack sentences (subject, verb, object, place, time) totalling about ``n_tokens`` tokens."""
    generator = torch.Generator().manual_seed(seed)
    sentences, total = [], 0
    while total < n_tokens:
        words = [part[int(torch.randint(len(part), (1,), generator=generator))] for part in FILLER_PARTS]
        sentence = f"{words[0]} {words[1]} {words[2]} {words[3]} {words[4]}."
        sentences.append(sentence[0].upper() + sentence[1:])
        total += len(tokenizer(" " + sentence, add_special_tokens=False)["input_ids"])
    return sentences


def ordinal_tasks(tokenizer) -> list[OrdinalTask]:
    """The ordinal sequences whose items are all single tokens for ``tokenizer`` (others are skipped)."""
    tasks = []
    for name, (words, cyclic) in ORDINAL_SEQUENCES.items():
        for prefix in (" ", ""):
            encoded = [tokenizer(prefix + word, add_special_tokens=False)["input_ids"] for word in words]
            if all(len(ids) == 1 for ids in encoded):
                tasks.append(OrdinalTask(name, tuple(prefix + w for w in words), tuple(i[0] for i in encoded), cyclic))
                break
    return tasks


def describe_probes(tokenizer) -> dict:
    """The probe inputs as readable JSON: what each probe-based score was computed on."""
    repeated = repeated_random_tokens(tokenizer)
    return {
        "repeated_random_tokens": {
            "period": repeated.period,
            "repeats": repeated.repeats,
            "seed": RANDOM_SEED,
            "n_tokens": len(repeated.input_ids),
            "first_block": tokenizer.decode(repeated.input_ids[repeated.offset : repeated.offset + repeated.period]),
        },
        "needles": [
            {"needle": probe.needle, "question": probe.question, "depth": probe.depth, "n_tokens": len(probe.input_ids)}
            for probe in needle_prompts(tokenizer)
        ],
        "haystack": " ".join(HAYSTACK),
        "ordinal_tasks": {task.name: list(task.words) for task in ordinal_tasks(tokenizer)},
    }


def _as_prompt(tokenizer, user_text: str) -> str:
    """``user_text`` as the model would see a user turn (chat template), or a plain Q/A layout without one."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": user_text}], tokenize=False, add_generation_prompt=True
        )
    return f"{user_text}\nAnswer:"
