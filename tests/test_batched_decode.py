"""Batched greedy decoding of compressed caches against decoding each cache alone."""

from __future__ import annotations

import pytest
import torch

from benchmarks import build_benchmark
from benchmarks.prompt import build_prompt
from capkv import build_method, cache_bytes, compress, generate, prefill, prefill_options
from capkv.batched import (
    ReservedLayer,
    batch_dependent_linears,
    batch_key,
    decoding_batches,
    generate_batched,
    generate_grouped,
    group_by_shape,
    mix_caches,
    stack_caches,
)
from tests.conftest import tiny_llama
from workers.fidelity import copy_cache
from workers.models import stop_token_ids

UNIFORM_METHODS = ["streaming_llm", "snapkv", "capkv", "tova", "knorm", "keydiff", "h2o", "random"]


def _prompt(length: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, 128, (1, length), generator=generator)


def _compress_all(model, input_ids, names, budget):
    methods = [build_method(name) for name in names]
    prefilled = prefill(model, input_ids, **prefill_options(methods))
    return prefilled, [compress(model, prefilled, method, budget) for method in methods]


def _decode_one_by_one(model, prefilled, compressed, max_new_tokens, stops, suffix_ids=None):
    return [
        generate(model, copy_cache(item.cache), prefilled.context_length, max_new_tokens, stops,
                 first_logits=prefilled.last_logits, suffix_ids=suffix_ids).token_ids
        for item in compressed
    ]


@pytest.mark.parametrize("layout", [(4, 4), (4, 2), (4, 1)], ids=["mha", "gqa", "mqa"])
def test_batched_matches_single_tiny(layout):
    model = tiny_llama(*layout)
    prefilled, compressed = _compress_all(model, _prompt(150), UNIFORM_METHODS, budget=48)

    expected = _decode_one_by_one(model, prefilled, compressed, 12, set())
    batched = generate_batched(model, compressed, prefilled.context_length, 12, set(),
                               first_logits=prefilled.last_logits)

    assert [g.token_ids for g in batched] == expected
    assert all(len(tokens) == 12 for tokens in expected)


def test_batched_matches_single_with_suffix():
    model = tiny_llama()
    prefilled, compressed = _compress_all(model, _prompt(150), UNIFORM_METHODS, budget=40)
    suffix = _prompt(7, seed=5)

    expected = _decode_one_by_one(model, prefilled, compressed, 10, set(), suffix_ids=suffix)
    batched = generate_batched(model, compressed, prefilled.context_length, 10, set(), suffix_ids=suffix)

    assert [g.token_ids for g in batched] == expected


def test_rows_stop_at_their_own_stop_token():
    model = tiny_llama()
    prefilled, compressed = _compress_all(model, _prompt(150), UNIFORM_METHODS, budget=40)
    free_running = _decode_one_by_one(model, prefilled, compressed, 10, set())
    # A token that one row emits at step 3 and that no row emits earlier stops that row there.
    stop = next(tokens[3] for tokens in free_running if all(tokens[3] not in other[:3] for other in free_running))

    expected = _decode_one_by_one(model, prefilled, compressed, 10, {stop})
    batched = generate_batched(model, compressed, prefilled.context_length, 10, {stop},
                               first_logits=prefilled.last_logits)

    assert [g.token_ids for g in batched] == expected
    assert any(len(tokens) == 4 and tokens[-1] == stop for tokens in expected)
    assert any(len(tokens) == 10 for tokens in expected)


def test_inputs_are_not_extended():
    model = tiny_llama()
    prefilled, compressed = _compress_all(model, _prompt(100), ["snapkv", "capkv"], budget=40)

    generate_batched(model, compressed, prefilled.context_length, 5, set(), first_logits=prefilled.last_logits)

    for item in compressed:
        assert all(layer.keys.shape[2] == 40 for layer in item.cache.layers)


def test_group_by_shape_separates_budgets_and_ragged():
    model = tiny_llama()
    methods = [build_method(name) for name in ("snapkv", "capkv", "adakv", "pyramidkv")]
    prefilled = prefill(model, _prompt(150), **prefill_options(methods))
    items = [
        compress(model, prefilled, methods[0], 40),  # 0
        compress(model, prefilled, methods[1], 40),  # 1
        compress(model, prefilled, methods[0], 64),  # 2
        compress(model, prefilled, methods[2], 40),  # 3: ragged heads
        compress(model, prefilled, methods[1], 64),  # 4
    ]

    groups = group_by_shape(items)

    assert groups == [[0, 1], [2, 4], [3]]
    assert batch_key(items[3]) is None


def test_pyramid_caches_of_one_budget_batch():
    model = tiny_llama(layers=4)
    method = build_method("pyramidkv", window_size=8, beta=2.0)
    prefilled = prefill(model, _prompt(200), **prefill_options([method]))
    first = compress(model, prefilled, method, 48)
    second = compress(model, prefilled, method, 48)
    assert len({layer.keys.shape[2] for layer in first.cache.layers}) > 1

    expected = _decode_one_by_one(model, prefilled, [first], 8, set())
    batched = generate_batched(model, [first, second], prefilled.context_length, 8, set(),
                               first_logits=prefilled.last_logits)

    assert [g.token_ids for g in batched] == expected * 2


def test_stack_rejects_mismatched_shapes():
    model = tiny_llama()
    prefilled, compressed = _compress_all(model, _prompt(100), ["snapkv"], budget=40)
    other = compress(model, prefilled, build_method("snapkv"), 50)

    with pytest.raises(ValueError, match="group_by_shape"):
        stack_caches([compressed[0], other])


def test_group_by_shape_keeps_float16_apart():
    model = tiny_llama().to(torch.float16)
    prefilled, compressed = _compress_all(model, _prompt(100), ["snapkv", "capkv"], budget=40)

    assert group_by_shape(compressed) == [[0], [1]]
    assert group_by_shape(compressed, exact_only=False) == [[0, 1]]


def test_group_by_shape_batches_bfloat16():
    model = tiny_llama().to(torch.bfloat16)
    prefilled, compressed = _compress_all(model, _prompt(100), ["snapkv", "capkv"], budget=40)

    assert group_by_shape(compressed) == [[0, 1]]


def test_batched_bfloat16_restores_linear_forward():
    model = tiny_llama().to(torch.bfloat16)
    prefilled, compressed = _compress_all(model, _prompt(150), UNIFORM_METHODS, budget=40)

    expected = _decode_one_by_one(model, prefilled, compressed, 8, set())
    batched = generate_batched(model, compressed, prefilled.context_length, 8, set(),
                               first_logits=prefilled.last_logits)

    assert [g.token_ids for g in batched] == expected
    assert not any("forward" in vars(module) for module in model.modules())


def test_float32_linears_are_not_probed():
    assert batch_dependent_linears(tiny_llama(), 8) == []
    assert batch_dependent_linears(tiny_llama(), 8, tokens=22) == []


@pytest.mark.parametrize(("rows", "tokens"), [(5, 1), (8, 22)])
def test_linears_left_batched_are_batch_invariant(smollm2, rows, tokens):
    """Every linear layer that the probe leaves batched gives each row the same output alone and in the batch."""
    model = smollm2.model
    dependent = {id(module) for module in batch_dependent_linears(model, rows, tokens)}
    generator = torch.Generator().manual_seed(1)
    checked = 0
    for module in model.modules():
        if not isinstance(module, torch.nn.Linear) or id(module) in dependent:
            continue
        inputs = torch.randn(rows, tokens, module.in_features, generator=generator).to(module.weight.dtype)
        with torch.no_grad():
            batched = module(inputs)
            alone = torch.cat([module(inputs[row:row + 1]) for row in range(rows)])
        assert torch.equal(batched, alone), module
        checked += 1
    # 30 layers of 7 projections, and the output head. On some CPUs the probe finds every one batch-dependent.
    assert checked + len(dependent) == 211


def _needle_caches(loaded, names: list[str], ratios: list[float], seed: int):
    """Prefill one 2k-token needle prompt; return the prefill, its caches per (ratio, method) and the question ids."""
    sample = build_benchmark("needle", context_length=2000).load(loaded.tokenizer, 1, seed=seed)[0]
    prompt = build_prompt(loaded.tokenizer, sample, chat_template=True, query_aware=False)
    methods = [build_method(name) for name in names]
    prefilled = prefill(loaded.model, torch.tensor([prompt.context_ids]), **prefill_options(methods))
    compressed = [compress(loaded.model, prefilled, method, ratio=ratio) for ratio in ratios for method in methods]
    return prefilled, compressed, torch.tensor([prompt.suffix_ids])


def test_batched_matches_single_on_smollm2_bfloat16(smollm2):
    """A 2k-token needle prompt at ratio 0.9375 where batching every linear layer changed tova's and capkv's tokens."""
    loaded = smollm2
    names = ["tova", "capkv", "snapkv", "knorm", "keydiff", "streaming_llm"]
    prefilled, compressed, suffix = _needle_caches(loaded, names, ratios=[0.9375], seed=0)
    stops = stop_token_ids(loaded)

    expected = _decode_one_by_one(loaded.model, prefilled, compressed, 24, stops, suffix_ids=suffix)
    batched = generate_batched(loaded.model, compressed, prefilled.context_length, 24, stops, suffix_ids=suffix)

    assert group_by_shape(compressed) == [list(range(len(names)))]
    assert [g.token_ids for g in batched] == expected


def test_batched_matches_single_on_smollm2_float32(smollm2_float32):
    loaded = smollm2_float32
    sample = build_benchmark("needle", context_length=1000).load(loaded.tokenizer, 1, seed=0)[0]
    prompt = build_prompt(loaded.tokenizer, sample, chat_template=True, query_aware=True)
    names = ["streaming_llm", "snapkv", "capkv", "tova", "keydiff", "h2o"]
    prefilled, compressed = _compress_all(loaded.model, torch.tensor([prompt.context_ids]), names, budget=128)
    stops = stop_token_ids(loaded)

    expected = _decode_one_by_one(loaded.model, prefilled, compressed, 12, stops)
    batched = generate_batched(loaded.model, compressed, prefilled.context_length, 12, stops,
                               first_logits=prefilled.last_logits)

    assert group_by_shape(compressed) == [list(range(len(names)))]
    assert [g.token_ids for g in batched] == expected


def test_grouped_decoding_mixes_ragged_and_batched():
    model = tiny_llama()
    names = ["snapkv", "adakv", "capkv", "tova"]
    prefilled, compressed = _compress_all(model, _prompt(150), names, budget=40)

    expected = _decode_one_by_one(model, prefilled, compressed, 8, set())
    grouped = generate_grouped(model, compressed, prefilled.context_length, 8, set(),
                               first_logits=prefilled.last_logits)

    assert group_by_shape(compressed) == [[0, 2, 3], [1]]
    assert [g.token_ids for g in grouped] == expected


def test_worker_batches_a_samples_cells_with_identical_rows(smollm2_float32):
    from flows.config import parse_config
    from flows.matrix import expand_cells, plan_units
    from workers.evaluate import evaluate_unit

    data = {
        "methods": ["full", "snapkv", "capkv", "streaming_llm", "knorm", "adakv"], "budgets": [64],
        "benchmarks": [{"name": "needle", "num_samples": 1, "params": {"context_length": 500}}],
        "dtype": "float32", "max_new_tokens": 10,
    }
    results = {}
    for batch_decode in (False, True):
        config = parse_config({**data, "batch_decode": batch_decode})
        units = plan_units(config, expand_cells(config), "run-20261205T000000-bbbbbb")
        rows = [row for cell_rows in evaluate_unit(smollm2_float32, units[0]).values() for row in cell_rows]
        results[batch_decode] = {row["method"]: row for row in rows}

    for method, row in results[True].items():
        alone = results[False][method]
        assert row.get("error") is None
        assert alone.get("error") is None
        assert (row["prediction"], row["tokens_generated"], row["score"]) == (
            alone["prediction"], alone["tokens_generated"], alone["score"]
        ), method
    # The full cache, the four equal-shaped budget-64 caches and adakv's ragged heads shared one
    # mixed batch, so its time is split evenly among them. Alone, each row has its own time.
    assert len({row["decode_s"] for row in results[True].values()}) == 1
    assert len({row["decode_s"] for row in results[False].values()}) == 6


def test_reserved_layer_appends_in_place():
    generator = torch.Generator().manual_seed(0)
    keys = [torch.randn(1, 2, 3, 4, generator=generator) for _ in range(2)]
    values = [torch.randn(1, 2, 3, 4, generator=generator) for _ in range(2)]
    layer = ReservedLayer(keys, values, reserve=2)
    assert torch.equal(layer.keys, torch.cat(keys))
    assert torch.equal(layer.values, torch.cat(values))
    buffer_start = layer.keys.data_ptr()

    new_keys, new_values = torch.randn(2, 2, 2, 4, generator=generator), torch.randn(2, 2, 2, 4, generator=generator)
    returned_keys, returned_values = layer.update(new_keys, new_values)
    assert returned_keys.shape == (2, 2, 5, 4)
    assert returned_keys.data_ptr() == buffer_start  # written into the reserved slots, not copied
    assert torch.equal(returned_keys, torch.cat([torch.cat(keys), new_keys], dim=2))
    assert torch.equal(returned_values, torch.cat([torch.cat(values), new_values], dim=2))
    assert layer.get_seq_length() == 5

    # The reserve is used up, so the next token is concatenated like a DynamicLayer's.
    last = torch.randn(2, 2, 1, 4, generator=generator)
    returned_keys, _ = layer.update(last, last)
    assert returned_keys.shape == (2, 2, 6, 4)
    assert returned_keys.data_ptr() != buffer_start
    assert torch.equal(returned_keys[:, :, 5:], last)


# Ragged heads (adakv) and layers of different lengths (pyramidkv) among caches of equal shapes.
MIXED_METHODS = [("snapkv", {}), ("adakv", {}), ("capkv", {}), ("pyramidkv", {"window_size": 8, "beta": 2.0}),
                 ("tova", {}), ("streaming_llm", {})]


def _compress_mixed(model, input_ids, budgets):
    methods = [build_method(name, **params) for name, params in MIXED_METHODS]
    prefilled = prefill(model, input_ids, **prefill_options(methods))
    return prefilled, [compress(model, prefilled, method, budget) for budget in budgets for method in methods]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("with_suffix", [False, True], ids=["first-logits", "suffix"])
def test_mixed_batch_matches_single_tiny(dtype, with_suffix):
    model = tiny_llama(4, 2, layers=4).to(dtype)
    prefilled, compressed = _compress_mixed(model, _prompt(200), budgets=[40, 64, 100])
    suffix = _prompt(6, seed=7) if with_suffix else None

    expected = _decode_one_by_one(model, prefilled, compressed, 10, set(), suffix_ids=suffix)
    grouped = generate_grouped(model, compressed, prefilled.context_length, 10, set(),
                               first_logits=prefilled.last_logits, suffix_ids=suffix)

    # Equal shapes next to each other; ragged heads and the pyramid of each budget alone in their parts.
    assert decoding_batches(model, compressed) == [[0, 2, 4, 5, 1, 3, 6, 8, 10, 11, 7, 9, 12, 14, 16, 17, 13, 15]]
    assert [g.token_ids for g in grouped] == expected
    assert len({tuple(tokens) for tokens in expected}) > 3  # the rows really differ
    assert len({g.seconds for g in grouped}) == 1  # one batch


def test_mixed_batch_does_not_extend_inputs():
    model = tiny_llama()
    prefilled, compressed = _compress_mixed(model, _prompt(120), budgets=[40, 64])
    before = [(cache_bytes(item.cache), [layer.get_seq_length() for layer in item.cache.layers]) for item in compressed]

    generate_batched(model, compressed, prefilled.context_length, 6, set(), first_logits=prefilled.last_logits)

    after = [(cache_bytes(item.cache), [layer.get_seq_length() for layer in item.cache.layers]) for item in compressed]
    assert after == before


def test_decoding_batches_split_at_max_rows():
    model = tiny_llama()
    prefilled, compressed = _compress_all(model, _prompt(120), ["snapkv", "capkv"], budget=40)
    wider = [compress(model, prefilled, build_method(name), 64) for name in ("snapkv", "capkv", "knorm")]
    items = [compressed[0], wider[0], compressed[1], wider[1], wider[2]]

    assert decoding_batches(model, items) == [[0, 2, 1, 3, 4]]
    assert decoding_batches(model, items, max_rows=2) == [[0, 2], [1], [3, 4]]
    assert decoding_batches(model, items, mix_shapes=False) == group_by_shape(items) == [[0, 2], [1, 3, 4]]


def test_models_without_sdpa_keep_shape_groups():
    model = tiny_llama()
    prefilled, compressed = _compress_mixed(model, _prompt(120), budgets=[40])
    model.set_attn_implementation("eager")

    assert decoding_batches(model, compressed) == group_by_shape(compressed) == [[0, 2, 4, 5], [1], [3]]
    with pytest.raises(ValueError, match="sdpa"):
        mix_caches(model, [[item] for item in compressed])


def test_mixed_batch_matches_single_on_smollm2_bfloat16(smollm2):
    """Ada-KV's ragged heads and 5 other methods at two ratios of a 2k-token needle prompt, in one batch."""
    loaded = smollm2
    names = ["adakv", "tova", "capkv", "snapkv", "streaming_llm", "keydiff"]
    prefilled, compressed, suffix = _needle_caches(loaded, names, ratios=[0.75, 0.9375], seed=1)
    stops = stop_token_ids(loaded)

    expected = _decode_one_by_one(loaded.model, prefilled, compressed, 16, stops, suffix_ids=suffix)
    grouped = generate_grouped(loaded.model, compressed, prefilled.context_length, 16, stops, suffix_ids=suffix)

    assert len(decoding_batches(loaded.model, compressed)) == 1
    assert [g.token_ids for g in grouped] == expected
