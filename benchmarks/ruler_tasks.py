"""Generators of RULER-style synthetic tasks: needle retrieval, variable tracking, common words.

Each generator draws everything from the `random.Random` it is given, so a task, seed and
sample index always give the same sample. Needle and variable-tracking tasks return facts to
hide in essay text; common-words extraction builds its own word list as the context.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass

VALUE_LABELS = {"number": "secret number", "word": "secret word", "uuid": "secret UUID"}
NEEDLE = " The {label} for {key} is {value}. "
NIAH_INSTRUCTION = (
    "Some {label}s are hidden in the text below, each one tied to a key. "
    "Memorize them, because a question about them follows the text.\n\n"
)
TRACKING_INSTRUCTION = (
    "Variable assignments are hidden in the text below. "
    "Keep track of them, because a question about them follows the text.\n\n"
)
COMMON_WORDS_INSTRUCTION = "Below is a numbered list of words. A few of them appear much more often than the rest.\n\n"


@dataclass(frozen=True)
class HiddenFacts:
    """Statements to hide in filler text, in order of increasing depth, and the question that needs them."""

    instruction: str
    statements: tuple[str, ...]
    question: str
    answer_prefix: str
    references: tuple[str, ...]


@dataclass(frozen=True)
class WordListPrompt:
    """A complete common-words context with its question and the expected words."""

    context: str
    question: str
    answer_prefix: str
    references: tuple[str, ...]


def random_value(rng: random.Random, kind: str, words: tuple[str, ...]) -> str:
    """Draw a 7-digit number, a word from `words`, or a version-4 UUID."""
    if kind == "number":
        return str(rng.randint(1_000_000, 9_999_999))
    if kind == "word":
        return rng.choice(words)
    if kind == "uuid":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    raise ValueError(f"unknown value kind {kind!r}; known: {', '.join(VALUE_LABELS)}")


def distinct_draws(rng: random.Random, draw, count: int) -> list[str]:
    """Call `draw()` until it has returned `count` different values; return them in order."""
    drawn: list[str] = []
    while len(drawn) < count:
        candidate = draw()
        if candidate not in drawn:
            drawn.append(candidate)
    return drawn


def join_names(names: list[str]) -> str:
    """Join names as 'a', 'a and b' or 'a, b and c'."""
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def make_needles(
    rng: random.Random,
    words: tuple[str, ...],
    kind: str = "number",
    num_keys: int = 1,
    num_values: int = 1,
    num_queries: int = 1,
) -> HiddenFacts:
    """Build key-value needles: `num_keys` keys, each with `num_values` values.

    The question queries the first `num_queries` keys and the other keys are distractors. The
    references are every value of the queried keys.
    """
    label = VALUE_LABELS[kind]
    keys = distinct_draws(rng, lambda: f"{rng.choice(words)}-{rng.choice(words)}", num_keys)
    values = distinct_draws(rng, lambda: random_value(rng, kind, words), num_keys * num_values)
    pairs = [(key, values[index * num_values + offset]) for index, key in enumerate(keys) for offset in range(num_values)]
    statements = [NEEDLE.format(label=label, key=key, value=value) for key, value in pairs]
    rng.shuffle(statements)

    queried = keys[:num_queries]
    references = tuple(value for key, value in pairs if key in queried)
    if num_queries == 1 and num_values == 1:
        question = f"What is the {label} for {queried[0]} in the text above? Answer with the {label} only."
        answer_prefix = f"The {label} for {queried[0]} is"
    else:
        if num_queries == 1:
            requested = f"all the {label}s for {queried[0]}"
        else:
            requested = f"the {label}s for {join_names(queried)}"
        question = f"What are {requested} in the text above? List every one of them."
        answer_prefix = f"The {label}s for {join_names(queried)} are"
    return HiddenFacts(NIAH_INSTRUCTION.format(label=label), tuple(statements), question, answer_prefix, references)


def make_variable_tracking(rng: random.Random, num_chains: int = 2, num_hops: int = 4) -> HiddenFacts:
    """Build chains of assignments `VAR A = 12345`, `VAR B = VAR A`, ... with `num_hops` hops each.

    The question gives the first chain's value, and the references are every variable of that
    chain. Chains are interleaved, but each keeps its own order.
    """
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    names = distinct_draws(rng, lambda: "".join(rng.choice(letters) for _ in range(5)), num_chains * (num_hops + 1))
    values = distinct_draws(rng, lambda: str(rng.randint(10000, 99999)), num_chains)
    chains = []
    for chain_index in range(num_chains):
        chain_names = names[chain_index * (num_hops + 1) : (chain_index + 1) * (num_hops + 1)]
        statements = [f" VAR {chain_names[0]} = {values[chain_index]}. "]
        statements += [f" VAR {current} = VAR {previous}. " for previous, current in zip(chain_names, chain_names[1:])]
        chains.append((chain_names, statements))

    interleaved: list[str] = []
    pending = [list(statements) for _, statements in chains]
    while any(pending):
        chain = rng.choice([remaining for remaining in pending if remaining])
        interleaved.append(chain.pop(0))

    queried_names, _ = chains[0]
    question = (
        f"Which variables are assigned the value {values[0]}, directly or through other variables, "
        "in the text above? List all of them."
    )
    answer_prefix = f"The variables assigned the value {values[0]} are"
    return HiddenFacts(TRACKING_INSTRUCTION, tuple(interleaved), question, answer_prefix, tuple(queried_names))


def make_common_words(
    word_order: list[str],
    list_seed: float,
    num_rare: int,
    common_repeats: int,
    rare_repeats: int = 3,
    num_common: int = 10,
) -> WordListPrompt:
    """Build a numbered word list, shuffled by `list_seed`, from the start of `word_order`.

    The first `num_common` words appear `common_repeats` times each, and the next `num_rare`
    words appear `rare_repeats` times each.
    """
    common = word_order[:num_common]
    rare = word_order[num_common : num_common + num_rare]
    entries = common * common_repeats + rare * rare_repeats
    random.Random(list_seed).shuffle(entries)
    numbered = "\n".join(f"{position}. {word}" for position, word in enumerate(entries, start=1))
    return WordListPrompt(
        context=COMMON_WORDS_INSTRUCTION + numbered,
        question=f"Which {num_common} words appear most often in the list above? Answer with the words only.",
        answer_prefix=f"The {num_common} most common words in the list are",
        references=tuple(common),
    )
