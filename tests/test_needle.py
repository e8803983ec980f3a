"""The needle benchmark: deterministic samples, needle placement and exact-match scoring."""

from __future__ import annotations

import pytest

from benchmarks import BenchmarkError, build_benchmark
from benchmarks.needle import first_number, spread_depths
from benchmarks.prompt import build_prompt, truncate_middle


@pytest.fixture(scope="module")
def tokenizer(smollm2):
    return smollm2.tokenizer


def test_spread_depths():
    assert spread_depths(5) == [10.0, 30.0, 50.0, 70.0, 90.0]
    assert spread_depths(1) == [50.0]


def test_samples_are_deterministic(tokenizer):
    benchmark = build_benchmark("needle", context_length=800)
    first = benchmark.load(tokenizer, 4, seed=3)
    again = benchmark.load(tokenizer, 4, seed=3)
    other = benchmark.load(tokenizer, 4, seed=4)
    assert [s.context for s in first] == [s.context for s in again]
    assert [s.references for s in first] != [s.references for s in other]


def test_needle_placed_at_depth(tokenizer):
    benchmark = build_benchmark("needle", context_length=1500)
    samples = benchmark.load(tokenizer, 5, seed=0)
    positions = []
    for sample in samples:
        value = sample.references[0]
        assert len(value) == 5
        assert value.isdigit()
        assert f"The pass key is {value}." in sample.context
        positions.append(sample.context.index(value) / len(sample.context))
    assert positions == sorted(positions)
    assert 0.05 < positions[0] < 0.2
    assert 0.8 < positions[-1] < 0.95


def test_context_length_in_model_tokens(tokenizer):
    sample = build_benchmark("needle", context_length=1500).load(tokenizer, 1, seed=0)[0]
    length = len(tokenizer(sample.context, add_special_tokens=False)["input_ids"])
    assert abs(length - 1500) <= 10


def test_exact_match_scoring(tokenizer):
    benchmark = build_benchmark("needle", context_length=300)
    sample = benchmark.load(tokenizer, 1, seed=0)[0]
    value = sample.references[0]
    assert benchmark.score(f"The pass key is {value}.", sample) == {"exact_match": 1.0}
    assert benchmark.score(f"{value}1", sample) == {"exact_match": 0.0}
    assert benchmark.score("I don't know", sample) == {"exact_match": 0.0}
    assert first_number("key 123 and 456") == "123"


def test_bad_parameters():
    with pytest.raises(BenchmarkError, match="invalid needle context_length=10"):
        build_benchmark("needle", context_length=10)
    with pytest.raises(BenchmarkError, match="unknown parameter 'length' for benchmark 'needle'"):
        build_benchmark("needle", length=100)


def test_protocols_split_at_question(tokenizer):
    sample = build_benchmark("needle", context_length=300).load(tokenizer, 1, seed=0)[0]
    aware = build_prompt(tokenizer, sample, chat_template=True, query_aware=True)
    agnostic = build_prompt(tokenizer, sample, chat_template=True, query_aware=False)
    assert aware.suffix_ids == []
    assert aware.context_ids == agnostic.context_ids + agnostic.suffix_ids
    question = tokenizer.decode(agnostic.suffix_ids)
    assert question.startswith("What is the pass key?")
    assert question.endswith("<|im_start|>assistant\n")
    assert aware.prompt_hash == agnostic.prompt_hash


def test_truncate_middle():
    kept, cut = truncate_middle(list(range(10)), 6)
    assert kept == [0, 1, 2, 7, 8, 9]
    assert cut == 4
    assert truncate_middle([1, 2], 6) == ([1, 2], 0)
