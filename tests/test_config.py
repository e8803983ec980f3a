"""Run config validation: each bad value stops the run with one line naming it."""

from __future__ import annotations

import pytest

from flows.config import BUILT_IN_METHODS, ConfigError, load_config, parse_config
from flows.matrix import expand_cells, plan_units


@pytest.mark.parametrize(
    "data, message",
    [
        ({"methods": ["snapvk"]}, "unknown method 'snapvk' (did you mean 'snapkv'?); known: "),
        ({"models": ["gpt-5"]}, "unknown model 'gpt-5'; accepted: qwen2.5-coder-0.5b, smollm2-135m"),
        ({"benchmarks": ["needl"]}, "unknown benchmark 'needl' (did you mean 'needle'?); known: "),
        ({"budgets": [0]}, "invalid budget 0; budgets must be positive integers"),
        ({"budgets": [-5]}, "invalid budget -5; budgets must be positive integers"),
        ({"budgets": [1.5]}, "invalid budget 1.5; budgets must be positive integers"),
        ({"budgets": ["64"]}, "invalid budget '64'; budgets must be positive integers"),
        ({"budgetz": [64]}, "unknown config key 'budgetz' (did you mean 'budgets'?)"),
        ({"methods": [{"name": "snapkv", "params": {"windw": 8}}]}, "unknown parameter 'windw' for method 'snapkv'"),
        ({"budgets": [16]}, "budget 16 is smaller than the 33 tokens snapkv always keeps"),
    ],
)
def test_bad_config_one_line(data, message):
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "absent.yaml"))


def test_default_matrix_cells_and_units():
    config = parse_config({})
    cells = expand_cells(config)
    # full once, the twelve compressing built-in methods at four budgets each
    assert len(cells) == 1 + 12 * 4
    assert len({cell.cell_id for cell in cells}) == 49
    assert {cell.method for cell in cells} == set(BUILT_IN_METHODS)
    units = plan_units(config, cells, "run-x")
    assert [unit.sample_indices for unit in units] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert all(len(unit.cells) == 49 for unit in units)


def test_plan_skips_stored_chunks():
    config = parse_config({"budgets": [64]})
    cells = expand_cells(config)
    done = {(cell.cell_id, 0) for cell in cells} | {(cells[0].cell_id, 1)}
    units = plan_units(config, cells, "run-x", done)
    assert [unit.chunk_index for unit in units] == [1, 2, 3, 4]
    assert len(units[0].cells) == len(cells) - 1
    assert all(len(unit.cells) == len(cells) for unit in units[1:])


def test_cell_id_changes_with_parameters():
    first = expand_cells(parse_config({"methods": [{"name": "capkv", "params": {"tau": 5.0}}], "budgets": [64]}))
    second = expand_cells(parse_config({"methods": [{"name": "capkv", "params": {"tau": 1.0}}], "budgets": [64]}))
    assert first[0].cell_id != second[0].cell_id
    assert second[0].method_label == "capkv(tau=1.0)"
