"""Facts every method must satisfy on MHA, GQA and MQA layouts, and the capacity of kept sets."""

from __future__ import annotations

import pytest
import torch

from capkv import build_method, cache_bytes, capacity, compress, prefill, prefill_options
from capkv.capacity import layer_capacity
from capkv.methods.base import LayerInputs
from capkv.methods.capkv import capacity_weights, log_capacity, relevance
from tests.conftest import tiny_llama

METHODS = [
    ("random", {}), ("streaming_llm", {}), ("h2o", {}), ("snapkv", {"window_size": 8}),
    ("pyramidkv", {"window_size": 8, "beta": 2.0}), ("adakv", {"scorer_params": {"window_size": 8}}), ("tova", {}),
    ("knorm", {}), ("keydiff", {}), ("expected_attention", {}), ("capkv", {}), ("capkv", {"mode": "kvpress-compat"}),
    ("capkv-greedy", {}), ("kvpress:knorm", {}),
]
LAYOUTS = {"mha": (4, 4), "gqa": (4, 2), "mqa": (4, 1)}
LENGTH, BUDGET = 90, 30


def _prompt(length: int = LENGTH) -> torch.Tensor:
    return torch.randint(3, 128, (1, length), generator=torch.Generator().manual_seed(6))


@pytest.fixture(scope="module", params=list(LAYOUTS))
def layout_model(request):
    num_heads, num_kv_heads = LAYOUTS[request.param]
    return tiny_llama(num_heads=num_heads, num_kv_heads=num_kv_heads, layers=3, seed=7)


@pytest.mark.parametrize("name,params", METHODS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(METHODS)])
def test_kept_sets_are_valid(layout_model, name, params):
    method = build_method(name, **params)
    prefilled = prefill(layout_model, _prompt(), **prefill_options([method]))
    compressed = compress(layout_model, prefilled, method, BUDGET)
    num_kv_heads = layout_model.config.num_key_value_heads

    for layer_idx, kept in enumerate(compressed.kept_indices):
        counts = compressed.kept_tokens_per_head[layer_idx]
        valid = kept >= 0
        assert kept.shape[:2] == (1, num_kv_heads)
        assert bool((valid.sum(dim=-1) == counts).all())
        for head in range(num_kv_heads):
            positions = kept[0, head][valid[0, head]]
            assert bool((positions[1:] > positions[:-1]).all()), "kept tokens keep their order, no repeats"
            protected = method.always_kept(LENGTH, positions.device)
            if protected is not None and not getattr(method, "ragged", False):
                assert set(protected.nonzero().flatten().tolist()) <= set(positions.tolist())
    per_layer = compressed.kept_tokens_per_layer
    assert sum(per_layer) == pytest.approx(len(per_layer) * BUDGET)  # the layer total is L·B for every method
    stored_tokens = compressed.kept_tokens_total
    assert stored_tokens == pytest.approx(3 * num_kv_heads * BUDGET)
    # Bytes: stored tokens × head_dim × 4 bytes × (keys + values), plus int64 head lengths for ragged layers.
    offsets = 3 * num_kv_heads * 8 if method.ragged else 0
    assert compressed.kv_bytes == int(stored_tokens) * 16 * 4 * 2 + offsets


@pytest.mark.parametrize("name,params", METHODS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(METHODS)])
def test_budget_at_least_context_evicts_nothing(name, params):
    model = tiny_llama(layers=2)
    method = build_method(name, **params)
    prefilled = prefill(model, _prompt(40), **prefill_options([method]))
    compressed = compress(model, prefilled, method, 40)
    assert compressed.kept_indices == [None, None]
    assert compressed.kv_bytes == cache_bytes(prefilled.cache)


def test_ratio_gives_floor_of_kept_share():
    model = tiny_llama(layers=2)
    prefilled = prefill(model, _prompt(90))
    compressed = compress(model, prefilled, build_method("knorm"), ratio=0.75)  # floor(90 · 0.25) = 22
    assert compressed.budget == 22
    assert compressed.kept_tokens_per_layer == [22.0, 22.0]


def test_capacity_of_kept_set_by_hand():
    model = tiny_llama(num_heads=4, num_kv_heads=2, layers=2, seed=8)
    prefilled = prefill(model, _prompt(), num_sinks=4)
    compressed = compress(model, prefilled, build_method("capkv"), BUDGET)

    expected = []
    for layer_idx, layer in enumerate(prefilled.cache.layers):
        inputs = LayerInputs(layer_idx, 2, layer.keys, layer.values, prefilled.captures[layer_idx])
        weights = capacity_weights(relevance(inputs), 5.0)
        expected.append(log_capacity(layer.values, weights, compressed.kept_indices[layer_idx]))
    assert capacity(prefilled, compressed) == pytest.approx(float(torch.stack(expected).mean()), rel=1e-5)


def test_capacity_grows_with_the_kept_set():
    model = tiny_llama(num_heads=4, num_kv_heads=2, layers=2, seed=8)
    prefilled = prefill(model, _prompt(), num_sinks=4)
    full = compress(model, prefilled, build_method("full"), 0)
    small = compress(model, prefilled, build_method("streaming_llm"), 10)
    larger = compress(model, prefilled, build_method("streaming_llm"), 40)  # a superset of the 10 kept above

    assert capacity(prefilled, small) < capacity(prefilled, larger) < capacity(prefilled, full)


def test_capacity_counts_ragged_heads():
    model = tiny_llama(num_heads=4, num_kv_heads=2, layers=2, seed=8)
    method = build_method("adakv", scorer_params={"window_size": 8})
    prefilled = prefill(model, _prompt(), **prefill_options([method]))
    compressed = compress(model, prefilled, method, BUDGET)

    for layer_idx in range(2):
        kept = compressed.kept_indices[layer_idx]
        per_head = layer_capacity(prefilled, kept, layer_idx, 5.0)
        for head in range(2):
            positions = kept[:, head : head + 1]
            positions = positions[positions >= 0].view(1, 1, -1)
            alone = layer_capacity(prefilled, positions.expand(1, 2, -1), layer_idx, 5.0)[0, head]
            assert per_head[0, head] == pytest.approx(float(alone), rel=1e-5)
