"""A method scores each layer of a prefill once, and every budget after the first reuses those scores."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from capkv import build_method, compress, prefill, prefill_options
from capkv.methods.snapkv import SnapKV
from flows.config import BUILT_IN_METHODS
from tests.conftest import tiny_llama

# Every built-in method that evicts, plus variants whose parameters change their scores.
METHODS = [(name, {}) for name in BUILT_IN_METHODS if name != "full"] + [
    ("capkv", {"tau": 1.0}),
    ("snapkv", {"window_size": 16}),
    ("adakv", {"scorer": "knorm"}),
]
# Out of order and repeated, so a later budget reads scores an earlier one left behind.
BUDGETS = [120, 40, 64, 120, 40]


def same_kept(kept: torch.Tensor | None, expected: torch.Tensor | None) -> bool:
    """Tell whether two layers kept the same tokens; None is a layer left whole."""
    if kept is None or expected is None:
        return kept is expected
    return torch.equal(kept, expected)


@pytest.fixture(scope="module")
def model_and_prompt():
    model = tiny_llama(num_heads=4, num_kv_heads=2, layers=3)
    generator = torch.Generator().manual_seed(11)
    return model, torch.randint(0, 128, (1, 160), generator=generator)


def test_shared_scores_match_fresh_prefill(model_and_prompt):
    model, prompt = model_and_prompt
    methods = [build_method(name, **params) for name, params in METHODS]
    shared = prefill(model, prompt, **prefill_options(methods))
    for method in methods:
        for budget in BUDGETS:
            kept = compress(model, shared, method, budget).kept_indices
            # The same prefill with nothing scored yet: what compress returned before scores were shared.
            fresh = dataclasses.replace(shared, score_memo={})
            expected = compress(model, fresh, method, budget).kept_indices
            for layer_idx, (layer_kept, layer_expected) in enumerate(zip(kept, expected)):
                assert same_kept(layer_kept, layer_expected), f"{method.label} budget {budget} layer {layer_idx}"


def test_score_runs_once_per_layer(model_and_prompt, monkeypatch):
    model, prompt = model_and_prompt
    calls = []
    original = SnapKV.score

    def counted(self, layer):
        calls.append((repr(self), layer.layer_idx))
        return original(self, layer)

    monkeypatch.setattr(SnapKV, "score", counted)
    # Ada-KV's default scorer is SnapKV with its defaults, so the two share one set of scores;
    # SnapKV with another window and PyramidKV (another class) score on their own.
    methods = [build_method("snapkv"), build_method("adakv"), build_method("snapkv", window_size=16),
               build_method("pyramidkv")]
    shared = prefill(model, prompt, **prefill_options(methods))
    for method in methods:
        for budget in (40, 64, 100):
            compress(model, shared, method, budget)
    assert len(calls) == 3 * 3  # 3 distinct scorers x 3 layers, against 4 x 3 budgets x 3 layers unshared
    assert sorted(set(calls)) == sorted(calls)


def test_memo_belongs_to_one_prefill(model_and_prompt):
    model, prompt = model_and_prompt
    method = build_method("knorm")
    first = prefill(model, prompt)
    other_prompt = prefill(model, prompt.flip(-1))
    compress(model, first, method, 40)
    kept = compress(model, other_prompt, method, 40).kept_indices
    fresh = dataclasses.replace(other_prompt, score_memo={})
    expected = compress(model, fresh, method, 40).kept_indices
    assert all(same_kept(a, b) for a, b in zip(kept, expected))
    assert len(first.score_memo) == len(other_prompt.score_memo) == 3
