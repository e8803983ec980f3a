"""AIME: boxed-answer extraction, integer comparison, local loading and avg@k scoring."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from benchmarks import BenchmarkError, DecodeEvictionSettings, SamplingSettings, build_benchmark
from benchmarks.aime import INSTRUCTION, extract_answer, last_boxed, parse_integer

PROBLEMS = [
    {"id": "I-1", "problem": "Find the sum of all integer bases $b>9$ for which $17_b$ divides $97_b$.", "answer": "70"},
    {"id": "I-2", "problem": "How many ordered pairs satisfy the equation?", "answer": "117"},
    {"id": "I-3", "problem": "Find the remainder when N is divided by 1000.", "answer": "016"},
]


@pytest.fixture
def problems_file(tmp_path):
    path = tmp_path / "aime.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in PROBLEMS), encoding="utf-8")
    return str(path)


def test_last_boxed():
    assert last_boxed("first \\boxed{12}, then \\boxed{70}.") == "70"
    assert last_boxed("so \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert last_boxed("the answer is \\boxed 42.") == "42."
    assert last_boxed("no answer here") is None
    assert last_boxed("cut off \\boxed{7") is None


def test_parse_integer():
    assert parse_integer("033") == 33
    assert parse_integer("1,024") == 1024
    assert parse_integer("$70^\\circ$") == 70
    assert parse_integer("\\text{5}") == 5
    assert parse_integer("12.0") == 12
    assert parse_integer("=8") == 8
    assert parse_integer("\\frac{1}{2}") is None
    assert parse_integer("12.5") is None
    assert parse_integer("x") is None


def test_extract_answer():
    assert extract_answer("We get 70. Final: \\boxed{70}") == 70
    assert extract_answer("The answer is 70.") is None


def test_loads_local_file(problems_file):
    benchmark = build_benchmark("aime", data_path=problems_file)
    samples = benchmark.load(None, 3, seed=0)
    assert [sample.sample_id for sample in samples] == ["aime-I-1", "aime-I-2", "aime-I-3"]
    assert samples[0].context == PROBLEMS[0]["problem"]
    assert samples[0].question == INSTRUCTION
    assert samples[2].references == ("16",)
    assert samples[2].metadata["answer"] == 16


def test_loads_question_field_from_parquet(tmp_path):
    rows = [{"question": row["problem"], "answer": row["answer"]} for row in PROBLEMS]
    path = tmp_path / "aime.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    samples = build_benchmark("aime", data_path=str(path)).load(None, 2, seed=0)
    assert [sample.sample_id for sample in samples] == ["aime-0", "aime-1"]
    assert samples[1].references == ("117",)


def test_bad_rows_rejected(tmp_path, problems_file):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"problem": "p", "answer": "1/2"}) + "\n", encoding="utf-8")
    with pytest.raises(BenchmarkError, match="needs a 'problem' \\(or 'question'\\) and an integer 'answer'"):
        build_benchmark("aime", data_path=str(path)).load(None, 1, seed=0)
    with pytest.raises(BenchmarkError, match="aime has 3 problems, fewer than the 4 requested"):
        build_benchmark("aime", data_path=problems_file).load(None, 4, seed=0)


def test_score_uses_last_boxed(problems_file):
    benchmark = build_benchmark("aime", data_path=problems_file)
    sample = benchmark.load(None, 1, seed=0)[0]
    assert benchmark.score("Try \\boxed{12}. No, it is \\boxed{70}.", sample) == {"accuracy": 1.0, "answer_found": 1.0}
    assert benchmark.score("It is \\boxed{70}. No: \\boxed{12}.", sample) == {"accuracy": 0.0, "answer_found": 1.0}
    assert benchmark.score("70", sample) == {"accuracy": 0.0, "answer_found": 0.0}
    leading_zero = benchmark.load(None, 3, seed=0)[2]
    assert benchmark.score("\\boxed{16}", leading_zero)["accuracy"] == 1.0


def test_score_generations_avg_at_k(problems_file):
    benchmark = build_benchmark("aime", data_path=problems_file)
    sample = benchmark.load(None, 1, seed=0)[0]
    scores = benchmark.score_generations(["\\boxed{70}", "\\boxed{12}", "\\boxed{12}", "no answer"], sample)
    assert scores["accuracy"] == pytest.approx(0.25)
    assert scores["answer_found"] == pytest.approx(0.75)
    assert scores["pass_at_k"] == 1.0
    assert scores["majority_accuracy"] == 0.0  # 12 wins the vote


def test_declares_decode_eviction_and_sampling():
    benchmark = build_benchmark("aime", eviction_target=512, eviction_interval=64, num_generations=4)
    assert benchmark.decode_eviction == DecodeEvictionSettings(target=512, interval=64)
    assert benchmark.sampling == SamplingSettings(temperature=0.6, top_p=0.95, num_generations=4)
    assert build_benchmark("needle").decode_eviction is None
    assert build_benchmark("needle").sampling is None


def test_invalid_parameters():
    with pytest.raises(BenchmarkError, match="invalid aime num_generations=0"):
        build_benchmark("aime", num_generations=0)
    with pytest.raises(BenchmarkError, match="invalid aime sampling temperature=0.6, top_p=1.5"):
        build_benchmark("aime", top_p=1.5)
