"""RULER-style synthetic tasks: generators, target length, determinism and scoring."""

from __future__ import annotations

import random
import re
from collections import Counter

import pytest

from benchmarks import BenchmarkError, build_benchmark
from benchmarks.haystack import essay_word_list, fit_to_length, insert_at_depths
from benchmarks.ruler import RULER_TASKS, measured_prompt
from benchmarks.ruler_tasks import make_common_words, make_needles, make_variable_tracking

WORDS = ("apple", "bread", "cider", "dough", "eagle", "flute", "grape", "honey")


@pytest.fixture(scope="module")
def tokenizer(smollm2):
    return smollm2.tokenizer


@pytest.fixture(scope="module")
def samples_1k(tokenizer):
    return build_benchmark("ruler", context_length=1000).load(tokenizer, 8, seed=0)


def test_word_list_from_essays():
    words = essay_word_list()
    assert len(words) > 1500
    assert list(words) == sorted(set(words))
    assert all(re.fullmatch(r"[a-z]{5,10}", word) for word in words)
    assert "startup" in words
    assert "doesn" not in words  # contractions are not words


def test_insert_at_depths():
    text = "One. Two. Three. Four."
    assert insert_at_depths(text, [(0, "[A]")]) == "[A]One. Two. Three. Four."
    assert insert_at_depths(text, [(100, "[Z]")]) == "One. Two. Three. Four.[Z]"
    # 30% of 22 characters is position 6, inside "Two": the needle goes after "Two."
    assert insert_at_depths(text, [(30, "[M]")]) == "One. Two.[M] Three. Four."
    assert insert_at_depths(text, [(100, "[Z]"), (0, "[A]")]) == "[A]One. Two. Three. Four.[Z]"


def test_single_needle_generator():
    facts = make_needles(random.Random(0), WORDS, kind="number")
    assert len(facts.statements) == 1
    (value,) = facts.references
    assert re.fullmatch(r"\d{7}", value)
    key = re.search(r"for (\S+) is", facts.statements[0]).group(1)
    assert facts.statements[0] == f" The secret number for {key} is {value}. "
    assert f"for {key} in the text above" in facts.question
    assert facts.answer_prefix == f"The secret number for {key} is"


def test_uuid_and_word_values():
    uuid_facts = make_needles(random.Random(1), WORDS, kind="uuid")
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", uuid_facts.references[0])
    word_facts = make_needles(random.Random(1), WORDS, kind="word")
    assert word_facts.references[0] in WORDS


def test_multikey_has_distractors():
    facts = make_needles(random.Random(2), WORDS, kind="number", num_keys=4)
    keys = [re.search(r"for (\S+) is", statement).group(1) for statement in facts.statements]
    assert len(set(keys)) == 4
    queried = re.search(r"for (\S+) in the text", facts.question).group(1)
    assert queried in keys
    assert len(facts.references) == 1
    assert f"for {queried} is {facts.references[0]}." in " ".join(facts.statements)


def test_multivalue_and_multiquery():
    multivalue = make_needles(random.Random(3), WORDS, num_values=4)
    keys = {re.search(r"for (\S+) is", statement).group(1) for statement in multivalue.statements}
    assert len(keys) == 1
    assert len(set(multivalue.references)) == 4
    multiquery = make_needles(random.Random(3), WORDS, num_keys=4, num_queries=4)
    queried = re.findall(r"[a-z]+-[a-z]+", multiquery.question)
    assert len(queried) == 4
    assert len(set(multiquery.references)) == 4
    assert multiquery.answer_prefix.startswith("The secret numbers for ")


def test_variable_tracking_chain_order():
    facts = make_variable_tracking(random.Random(4), num_chains=2, num_hops=4)
    assert len(facts.statements) == 10
    assert len(facts.references) == 5
    value = re.search(r"value (\d{5})", facts.question).group(1)
    first, *rest = facts.references
    positions = [index for index, statement in enumerate(facts.statements) if first in statement]
    assert facts.statements[positions[0]] == f" VAR {first} = {value}. "
    for previous, current in zip(facts.references, rest):
        assigned = next(index for index, s in enumerate(facts.statements) if s == f" VAR {current} = VAR {previous}. ")
        defined = next(index for index, s in enumerate(facts.statements) if f"VAR {previous} =" in s)
        assert assigned > defined


def test_common_words_counts():
    order = list(essay_word_list()[:40])
    prompt = make_common_words(order, list_seed=0.5, num_rare=20, common_repeats=6, rare_repeats=3, num_common=10)
    entries = re.findall(r"^\d+\. (\w+)$", prompt.context, flags=re.MULTILINE)
    counts = Counter(entries)
    assert len(entries) == 10 * 6 + 20 * 3
    assert set(prompt.references) == set(order[:10])
    assert all(counts[word] == 6 for word in prompt.references)
    assert all(counts[word] == 3 for word in order[10:30])
    assert [int(number) for number in re.findall(r"^(\d+)\.", prompt.context, flags=re.MULTILINE)] == list(
        range(1, 121)
    )


def test_samples_fit_target_length(tokenizer, samples_1k):
    assert [sample.task for sample in samples_1k] == list(RULER_TASKS)
    for sample in samples_1k:
        text = measured_prompt(sample.context, sample.question, sample.answer_prefix, sample.references)
        length = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        assert 960 <= length <= 1000, (sample.task, length)


def test_samples_hide_their_references(samples_1k):
    for sample in samples_1k:
        for reference in sample.references:
            assert reference in sample.context, (sample.task, reference)
        assert sample.max_new_tokens == RULER_TASKS[sample.task].max_new_tokens
    assert len(samples_1k[0].metadata["depths_percent"]) == 1
    assert len(samples_1k[3].metadata["depths_percent"]) == 4


def test_samples_deterministic_by_seed(tokenizer):
    benchmark = build_benchmark("ruler", task_names=["niah_single_uuid", "variable_tracking"], context_length=600)
    first = benchmark.load(tokenizer, 2, seed=7)
    again = benchmark.load(tokenizer, 2, seed=7)
    other = benchmark.load(tokenizer, 2, seed=8)
    assert [sample.context for sample in first] == [sample.context for sample in again]
    assert [sample.references for sample in first] != [sample.references for sample in other]


def test_scoring_all_and_any(samples_1k):
    benchmark = build_benchmark("ruler")
    multivalue = samples_1k[4]
    assert multivalue.task == "niah_multivalue"
    first_two = " ".join(multivalue.references[:2])
    assert benchmark.score(first_two, multivalue) == {"reference_recall": 0.5, "all_present": 0.0, "any_present": 1.0}
    everything = ", ".join(multivalue.references)
    assert benchmark.score(everything, multivalue)["all_present"] == 1.0
    assert benchmark.score("no idea", multivalue)["any_present"] == 0.0


def test_too_short_target_rejected(tokenizer):
    with pytest.raises(BenchmarkError, match="invalid ruler context_length=64"):
        build_benchmark("ruler", context_length=64)
    with pytest.raises(BenchmarkError, match="too short"):
        fit_to_length(tokenizer, lambda size: "word " * (size + 100), target_tokens=50, first_guess=0)
    with pytest.raises(BenchmarkError, match="invalid ruler task_names"):
        build_benchmark("ruler", task_names=["niah_single"])
