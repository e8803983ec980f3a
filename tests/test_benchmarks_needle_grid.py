"""The needle grid: length x depth cells, metadata for heatmaps, needle placement."""

from __future__ import annotations

import pytest

from benchmarks import BenchmarkError, build_benchmark
from benchmarks.needle import INSTRUCTION


@pytest.fixture(scope="module")
def tokenizer(smollm2):
    return smollm2.tokenizer


def test_default_grid():
    benchmark = build_benchmark("needle_grid")
    grid = benchmark.grid()
    assert len(grid) == 44
    assert grid[0] == (1000, 0.0)
    assert grid[10] == (1000, 100.0)
    assert grid[11] == (2000, 0.0)
    assert grid[-1] == (8000, 100.0)
    assert [task.name for task in benchmark.tasks()] == ["passkey@1000", "passkey@2000", "passkey@4000", "passkey@8000"]


def test_samples_carry_length_and_depth(tokenizer):
    benchmark = build_benchmark("needle_grid", context_lengths=[300, 500], depths=[0, 50, 100])
    samples = benchmark.load(tokenizer, 7, seed=0)
    cells = [(sample.metadata["context_length"], sample.metadata["depth_percent"]) for sample in samples]
    assert cells == [(300, 0.0), (300, 50.0), (300, 100.0), (500, 0.0), (500, 50.0), (500, 100.0), (300, 0.0)]
    assert [sample.metadata["repeat"] for sample in samples] == [0] * 6 + [1]
    assert samples[0].task == "passkey@300"
    assert samples[3].task == "passkey@500"
    assert len({sample.sample_id for sample in samples}) == 7
    assert samples[6].references != samples[0].references


def test_needle_positions(tokenizer):
    benchmark = build_benchmark("needle_grid", context_lengths=[400], depths=[0, 50, 100])
    start, middle, end = benchmark.load(tokenizer, 3, seed=1)
    assert start.context.startswith(INSTRUCTION + f" The pass key is {start.references[0]}.")
    assert end.context.endswith(f"{end.references[0]} is the pass key. ")
    position = middle.context.index(middle.references[0]) / len(middle.context)
    assert 0.4 < position < 0.65


def test_context_length_in_tokens(tokenizer):
    sample = build_benchmark("needle_grid", context_lengths=[700], depths=[30]).load(tokenizer, 1, seed=0)[0]
    length = len(tokenizer(sample.context, add_special_tokens=False)["input_ids"])
    assert abs(length - 700) <= 10


def test_scoring(tokenizer):
    benchmark = build_benchmark("needle_grid", context_lengths=[300], depths=[10])
    sample = benchmark.load(tokenizer, 1, seed=0)[0]
    assert benchmark.score(f"It is {sample.references[0]}.", sample) == {"exact_match": 1.0}
    assert benchmark.score("It is 11111.", sample) == {"exact_match": 0.0}


def test_invalid_grid():
    with pytest.raises(BenchmarkError, match="invalid needle_grid context_lengths=\\[10\\]"):
        build_benchmark("needle_grid", context_lengths=[10])
    with pytest.raises(BenchmarkError, match="invalid needle_grid depths=\\[120\\]"):
        build_benchmark("needle_grid", depths=[120])
