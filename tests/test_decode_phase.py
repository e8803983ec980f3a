"""Decode-phase cells and sampled generations through the worker, on the real model.

An AIME-style benchmark declares decode-time eviction and sampling, so a run evaluates it in
the decode phase with k seeded generations per problem, scored as avg@k.
"""

from __future__ import annotations

import json

import pytest

from benchmarks import build_benchmark
from flows.config import ConfigError, parse_config
from flows.matrix import expand_cells, plan_units
from workers.evaluate import evaluate_unit

pytestmark = pytest.mark.real_model

PROBLEMS = [
    {"id": "1", "problem": "What is 17 + 25? Give only the number.", "answer": "42"},
    {"id": "2", "problem": "A box holds 6 rows of 7 eggs. How many eggs are in the box?", "answer": "42"},
]
BUDGET, INTERVAL, GENERATIONS, NEW_TOKENS = 48, 8, 2, 24


@pytest.fixture(scope="module")
def aime_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("aime") / "aime.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in PROBLEMS), encoding="utf-8")
    params = {"data_path": str(path), "num_generations": GENERATIONS, "eviction_interval": INTERVAL}
    return {
        "models": ["smollm2-135m"],
        "methods": ["full", "snapkv", "streaming_llm", "knorm"],
        "budgets": [BUDGET],
        "benchmarks": [{"name": "aime", "num_samples": 2, "params": params}],
        "max_new_tokens": NEW_TOKENS,
        "seed": 11,
    }


def _rows(loaded, config_data) -> list[dict]:
    config = parse_config(config_data)
    units = plan_units(config, expand_cells(config), "run-20261205T000000-aaaaaa")
    assert len(units) == 1
    return [row for rows in evaluate_unit(loaded, units[0]).values() for row in rows]


@pytest.fixture(scope="module")
def aime_rows(smollm2, aime_config):
    return _rows(smollm2, aime_config)


def test_aime_cells_run_in_the_decode_phase(aime_config):
    cells = expand_cells(parse_config(aime_config))
    assert [(cell.method, cell.phase, cell.budget, cell.decode_interval) for cell in cells] == [
        ("full", "decode", None, None),
        ("snapkv", "decode", BUDGET, INTERVAL),
        ("streaming_llm", "decode", BUDGET, INTERVAL),
        ("knorm", "decode", BUDGET, INTERVAL),
    ]


def test_cache_stays_within_target_plus_interval(aime_rows):
    assert len(aime_rows) == 4 * 2
    for row in aime_rows:
        assert row.get("error") is None, row["error"]
        assert row["phase"] == "decode"
        if row["method"] == "full":
            # The full cache grew with every generated token, exactly as the scaled prompt bytes predict.
            assert row.get("max_cached_tokens") is None
            assert row["kv_bytes_kept"] == row["kv_bytes_full"]
            continue
        assert row["context_tokens"] + row["tokens_generated"] // GENERATIONS > BUDGET + INTERVAL
        assert BUDGET < row["max_cached_tokens"] <= BUDGET + INTERVAL
        assert row["decode_compressions"] >= 1
        assert row["kv_bytes_kept"] < row["kv_bytes_full"]


def test_sampled_generations_scored_as_avg_at_k(aime_rows, aime_config):
    benchmark = build_benchmark("aime", **aime_config["benchmarks"][0]["params"])
    samples = {sample.sample_id: sample for sample in benchmark.load(None, 2, 0)}
    differing = 0
    for row in aime_rows:
        assert row["num_generations"] == GENERATIONS
        assert len(row["predictions"]) == GENERATIONS
        assert row["prediction"] == row["predictions"][0]
        expected = benchmark.score_generations(row["predictions"], samples[row["sample_id"]])
        assert row["metrics"] == expected
        assert row["score"] == expected["accuracy"]
        differing += row["predictions"][0] != row["predictions"][1]
    assert differing > 0  # seeds seed and seed + 1 draw different continuations


def test_sampling_repeats_with_the_same_seed(smollm2, aime_config, aime_rows):
    config = {**aime_config, "methods": ["snapkv"]}
    again = _rows(smollm2, config)
    first = {row["sample_id"]: row["predictions"] for row in aime_rows if row["method"] == "snapkv"}
    assert {row["sample_id"]: row["predictions"] for row in again} == first
    other_seed = _rows(smollm2, {**config, "seed": 12})
    assert {row["sample_id"]: row["predictions"] for row in other_seed} != first


def test_both_phases_on_a_prefill_benchmark():
    config = parse_config({
        "methods": ["full", "snapkv"], "budgets": [64, 128], "phases": ["prefill", "decode"],
        "decode_interval": 16, "benchmarks": [{"name": "needle", "num_samples": 1}],
    })
    cells = expand_cells(config)
    assert [(cell.method, cell.phase, cell.budget, cell.decode_interval) for cell in cells] == [
        ("full", "prefill", None, None),
        ("snapkv", "prefill", 64, None), ("snapkv", "prefill", 128, None),
        ("snapkv", "decode", 64, 16), ("snapkv", "decode", 128, 16),
    ]
    assert len({cell.cell_id for cell in cells}) == 5
    assert [cell.method_label for cell in cells] == ["full", "snapkv", "snapkv", "snapkv [decode]", "snapkv [decode]"]


def test_decode_phase_needs_token_budgets(aime_config):
    with pytest.raises(ConfigError, match="benchmark 'needle' runs in the decode phase but the config gives only ratios"):
        parse_config({
            "methods": ["snapkv"], "budgets": [], "ratios": [0.5], "phases": ["decode"],
            "benchmarks": [{"name": "needle", "num_samples": 1}],
        })
    # aime declares its own target (eviction_target, 2048 by default), used when only ratios are given.
    cells = expand_cells(parse_config({**aime_config, "methods": ["snapkv"], "budgets": [], "ratios": [0.5]}))
    assert [(cell.phase, cell.budget, cell.budget_ratio) for cell in cells] == [("decode", 2048, None)]


def test_repeated_phase_rejected():
    with pytest.raises(ConfigError, match=r"phases \['decode', 'decode'\] repeat a phase"):
        parse_config({"phases": ["decode", "decode"]})
