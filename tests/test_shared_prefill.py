"""One prefill serves methods that leave different numbers of sink tokens out of their query statistics."""

from __future__ import annotations

import pytest
import torch

from capkv import build_method, compress, prefill, prefill_options
from tests.conftest import tiny_llama

SHARED_METHODS = [
    ("capkv", {"num_sinks": 2}),
    ("capkv", {}),
    ("capkv", {"mode": "kvpress-compat", "num_sinks": 6}),
    ("expected_attention", {}),
    ("expected_attention", {"num_sinks": 0}),
    ("capkv-greedy", {"num_sinks": 8}),
    ("snapkv", {}),
    ("streaming_llm", {}),
]


@pytest.fixture(scope="module")
def model_and_prompt():
    model = tiny_llama(num_heads=4, num_kv_heads=2, layers=2)
    generator = torch.Generator().manual_seed(5)
    return model, torch.randint(0, 128, (1, 120), generator=generator)


def test_options_span_every_sink_count():
    methods = [build_method(name, **params) for name, params in SHARED_METHODS]
    options = prefill_options(methods)
    assert (options["num_sinks"], options["extra_sinks"]) == (0, 8)
    # The default count (4) is always served, so capacity uses one scale.
    only_two = prefill_options([build_method("capkv", num_sinks=2)])
    assert (only_two["num_sinks"], only_two["extra_sinks"]) == (2, 2)


def test_excluding_matches_a_dedicated_capture(model_and_prompt):
    model, prompt = model_and_prompt
    shared = prefill(model, prompt, window_size=8, num_sinks=1, extra_sinks=6, second_moment=True)
    dedicated = prefill(model, prompt, window_size=8, num_sinks=5, second_moment=True)
    for wide, exact in zip(shared.captures, dedicated.captures):
        derived = wide.excluding(5)
        assert derived.num_sinks == 5
        assert derived.query_count == exact.query_count == 115
        torch.testing.assert_close(derived.query_sum, exact.query_sum, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(derived.prerope_sum, exact.prerope_sum, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(derived.prerope_mean, exact.prerope_mean, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(derived.prerope_m2, exact.prerope_m2, rtol=1e-4, atol=1e-3)
        assert torch.equal(derived.window_queries, exact.window_queries)
        assert derived.max_num_sinks == 7


def test_shared_prefill_keeps_the_same_tokens(model_and_prompt):
    model, prompt = model_and_prompt
    methods = [build_method(name, **params) for name, params in SHARED_METHODS]
    shared = prefill(model, prompt, **prefill_options(methods))
    for method in methods:
        alone = prefill(model, prompt, **prefill_options([method]))
        expected = compress(model, alone, method, 40).kept_indices
        shared_indices = compress(model, shared, method, 40).kept_indices
        for layer_indices, layer_expected in zip(shared_indices, expected):
            assert torch.equal(layer_indices, layer_expected), method.label


def test_excluding_outside_the_captured_range(model_and_prompt):
    model, prompt = model_and_prompt
    capture = prefill(model, prompt, num_sinks=2, extra_sinks=3).captures[0]
    assert capture.excluding(2) is capture
    with pytest.raises(ValueError, match="cannot leave out 6 sink tokens .* this capture serves 2 to 5"):
        capture.excluding(6)
    with pytest.raises(ValueError, match="cannot leave out 1 sink tokens"):
        capture.excluding(1)
