"""The benchmark registry: what each benchmark declares and the listing built from it."""

from __future__ import annotations

import pytest

from benchmarks import (
    BENCHMARKS,
    BenchmarkError,
    build_benchmark,
    describe_benchmark,
    describe_benchmarks,
    format_description,
)
from benchmarks.base import Sample


def test_registered_names():
    assert sorted(BENCHMARKS) == ["aime", "longbench", "needle", "needle_grid", "ruler"]


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_every_benchmark_declares_its_contract(name):
    description = describe_benchmark(name)
    assert description.version
    assert description.source
    assert description.max_new_tokens > 0
    assert description.primary_metric in description.higher_is_better
    assert description.tasks
    for task in description.tasks:
        assert task.metric in description.higher_is_better
        assert task.max_new_tokens > 0


def test_longbench_listing_counts():
    description = describe_benchmark("longbench")
    assert len(description.tasks) == 16
    assert sum(task.num_samples for task in description.tasks) == 3750
    counts = {task.name: task.num_samples for task in description.tasks}
    assert counts["multifieldqa_en"] == 150
    assert counts["lcc"] == 500


def test_described_with_parameters():
    description = describe_benchmark("ruler", task_names=["common_words"], context_length=2048)
    assert [task.name for task in description.tasks] == ["common_words"]
    assert description.parameters == {"task_names": ["common_words"], "context_length": 2048}
    assert description.max_new_tokens == 96


def test_format_description_lines():
    lines = format_description(describe_benchmark("aime"))
    assert lines[0].startswith("aime (version 1): ")
    assert "  decode-time eviction: target 2048 tokens, every 128 tokens" in lines
    assert "  sampling: 8 generations, temperature 0.6, top_p 0.95" in lines
    assert lines[-1] == "  - aime2025: 30 samples, accuracy, max 4096 new tokens, chat template"
    trec = [line for line in format_description(describe_benchmark("longbench")) if "- trec:" in line]
    assert trec == ["  - trec: 200 samples, classification, max 64 new tokens, no chat template"]


def test_describe_all_sorted():
    assert [description.name for description in describe_benchmarks()] == sorted(BENCHMARKS)


def test_unknown_names_and_parameters():
    with pytest.raises(BenchmarkError, match="unknown benchmark 'rulers' \\(did you mean 'ruler'\\?\\)"):
        build_benchmark("rulers")
    with pytest.raises(BenchmarkError, match="unknown parameter 'tasks' for benchmark 'longbench'"):
        build_benchmark("longbench", tasks=["trec"])


def test_sample_overrides_max_new_tokens():
    benchmark = build_benchmark("needle")
    plain = Sample("a", "context", "question", ("1",), "task")
    tuned = Sample("b", "context", "question", ("1",), "task", max_new_tokens=5)
    assert benchmark.max_new_tokens_for(plain) == 12
    assert benchmark.max_new_tokens_for(tuned) == 5


def test_default_score_generations_averages():
    benchmark = build_benchmark("needle")
    sample = Sample("a", "context", "question", ("12345",), "task")
    assert benchmark.score_generations(["12345", "54321"], sample) == {"exact_match": 0.5}
    with pytest.raises(BenchmarkError, match="no predictions to score for sample 'a'"):
        benchmark.score_generations([], sample)
