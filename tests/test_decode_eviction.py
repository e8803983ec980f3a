"""Decode-time eviction keeps the cache bounded during long generations and keeps true positions."""

from __future__ import annotations

import pytest
import torch

from capkv import DecodeEviction, build_method, compress, generate, prefill, prefill_options
from capkv.methods import MethodError
from tests.conftest import tiny_llama

PROMPT_LENGTH, TARGET, INTERVAL, NEW_TOKENS = 40, 48, 16, 200

METHODS = [
    ("random", {}),
    ("streaming_llm", {}),
    ("h2o", {}),
    ("snapkv", {"window_size": 8}),
    ("pyramidkv", {"window_size": 8}),
    ("tova", {}),
    ("knorm", {}),
    ("keydiff", {}),
    ("expected_attention", {}),
    ("capkv", {}),
    ("capkv", {"mode": "kvpress-compat"}),
    ("capkv-greedy", {}),
]


@pytest.fixture(scope="module")
def model():
    return tiny_llama(num_heads=4, num_kv_heads=2, layers=2, seed=4)


def _prompt(length: int = PROMPT_LENGTH) -> torch.Tensor:
    return torch.randint(3, 128, (1, length), generator=torch.Generator().manual_seed(5))


def _layer0_keys(model, token_ids: torch.Tensor) -> torch.Tensor:
    """Keys of layer 0 for the whole sequence with a full cache (they depend only on token and position)."""
    with torch.no_grad():
        cache = model(input_ids=token_ids, use_cache=True).past_key_values
    return cache.layers[0].keys


def _generate_with_eviction(model, name, params, native=True):
    method = build_method(name, **params)
    prompt = _prompt()
    prefilled = prefill(model, prompt, **prefill_options([method]))
    compressed = compress(model, prefilled, build_method("full"), 0)
    eviction = DecodeEviction(method, target=TARGET, interval=INTERVAL, native=native)
    eviction.resume_from(compressed.kept_indices, prefilled.captures)
    generation = generate(model, compressed.cache, PROMPT_LENGTH, NEW_TOKENS, set(),
                          first_logits=prefilled.last_logits, decode_eviction=eviction)
    return prompt, compressed.cache, eviction, generation


@pytest.mark.parametrize("name,params", METHODS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(METHODS)])
def test_cache_bounded_and_positions_true(model, name, params):
    prompt, cache, eviction, generation = _generate_with_eviction(model, name, params)
    sequence = torch.cat([prompt, torch.tensor([generation.token_ids[:-1]])], dim=1)
    final_position = sequence.shape[1] - 1  # the last token fed; the last generated one is never fed
    # PyramidKV spreads the target over depth, so its first layer may hold more than the target.
    largest_budget = max(eviction.method.layer_budgets(TARGET, 10**6, len(cache.layers)))
    bound = largest_budget + (1 if eviction.every_step else INTERVAL)

    assert len(generation.token_ids) == NEW_TOKENS
    assert eviction.stats.compressions > 0
    for layer_idx, layer in enumerate(cache.layers):
        assert eviction.stats.max_tokens_per_layer[layer_idx] <= bound
        positions = eviction.positions(layer_idx)
        assert positions.shape == layer.keys.shape[:3]
        assert bool((positions[..., 1:] > positions[..., :-1]).all())
        assert int(positions[..., -1].min()) == final_position

    reference_keys = _layer0_keys(model, sequence)
    positions = eviction.positions(0)
    expected = reference_keys.gather(2, positions[..., None].expand(-1, -1, -1, reference_keys.shape[-1]))
    assert torch.allclose(cache.layers[0].keys, expected, atol=1e-5)


def test_streaming_llm_rolls_sinks_and_recent(model):
    _, _, eviction, generation = _generate_with_eviction(model, "streaming_llm", {})
    final_position = PROMPT_LENGTH + NEW_TOKENS - 2
    expected = [0, 1, 2, 3] + list(range(final_position - (TARGET - 4) + 1, final_position + 1))
    assert eviction.positions(0)[0, 0].tolist() == expected


def test_native_policies_cut_every_step(model):
    for name in ("streaming_llm", "h2o", "tova"):
        _, _, eviction, _ = _generate_with_eviction(model, name, {})
        # The prompt (40) reaches the target (48) after 9 tokens; from then on every token is cut.
        assert eviction.stats.compressions == NEW_TOKENS - 1 - (TARGET - PROMPT_LENGTH)


def test_periodic_wrapper_cuts_every_interval(model):
    _, _, eviction, _ = _generate_with_eviction(model, "knorm", {})
    fed = NEW_TOKENS - 1
    # The first cut comes when the cache first exceeds the target, later ones every INTERVAL tokens.
    assert eviction.stats.compressions == 1 + (fed - (TARGET - PROMPT_LENGTH + 1)) // INTERVAL


def test_native_method_can_use_periodic_wrapper(model):
    _, _, eviction, _ = _generate_with_eviction(model, "h2o", {}, native=False)
    assert not eviction.every_step
    assert max(eviction.stats.max_tokens_per_layer.values()) == TARGET + INTERVAL


def test_h2o_keeps_recent_half(model):
    _, _, eviction, generation = _generate_with_eviction(model, "h2o", {})
    final_position = PROMPT_LENGTH + NEW_TOKENS - 2
    recent = list(range(final_position - TARGET // 2 + 1, final_position + 1))
    for head in range(2):
        assert eviction.positions(1)[0, head, -TARGET // 2 :].tolist() == recent


def test_decode_eviction_rejects_bad_settings():
    with pytest.raises(MethodError, match="invalid decode interval 0"):
        DecodeEviction(build_method("knorm"), target=32, interval=0)
    with pytest.raises(MethodError, match="invalid budget -5"):
        DecodeEviction(build_method("knorm"), target=-5)
    with pytest.raises(MethodError, match="budget 16 is smaller than the 33 tokens"):
        DecodeEviction(build_method("snapkv"), target=16)


@pytest.mark.parametrize("scorer,params", [("snapkv", {"window_size": 8}), ("knorm", {})])
def test_adakv_keeps_ragged_heads_bounded(model, scorer, params):
    method = build_method("adakv", scorer=scorer, scorer_params=params)
    prompt = _prompt(80)
    prefilled = prefill(model, prompt, **prefill_options([method]))
    compressed = compress(model, prefilled, method, TARGET)  # so the bound applies from the first token
    eviction = DecodeEviction(method, target=TARGET, interval=INTERVAL).resume_from(compressed.kept_indices)

    generation = generate(model, compressed.cache, 80, NEW_TOKENS, set(), first_logits=prefilled.last_logits,
                          decode_eviction=eviction)

    sequence = torch.cat([prompt, torch.tensor([generation.token_ids[:-1]])], dim=1)
    reference_keys = _layer0_keys(model, sequence)
    assert eviction.stats.compressions == (NEW_TOKENS - 1) // INTERVAL
    for layer_idx, layer in enumerate(compressed.cache.layers):
        assert eviction.stats.max_tokens_per_layer[layer_idx] <= TARGET + INTERVAL
        counts = layer.kept_tokens()[0]
        assert int(counts.sum()) <= 2 * (TARGET + INTERVAL)
        assert len(set(counts.tolist())) > 1 or scorer == "snapkv"  # knorm splits the heads unevenly
        positions = eviction.positions(layer_idx)[0]
        for head in range(2):
            kept = positions[head][positions[head] >= 0]
            assert kept.numel() == int(counts[head])
            assert bool((kept[1:] > kept[:-1]).all())
            assert int(kept[-1]) == sequence.shape[1] - 1
    padded_keys, _ = compressed.cache.layers[0].padded()
    positions = eviction.positions(0)
    for head in range(2):
        slots = positions[0, head] >= 0
        expected = reference_keys[0, head, positions[0, head][slots]]
        assert torch.allclose(padded_keys[0, head][slots], expected, atol=1e-5)


def test_same_set_method_rejects_ragged_cache(model):
    method = build_method("adakv", scorer="knorm")
    prefilled = prefill(model, _prompt(80))
    compressed = compress(model, prefilled, method, TARGET)
    eviction = DecodeEviction(build_method("knorm"), target=TARGET).resume_from(compressed.kept_indices)
    with pytest.raises(MethodError, match="knorm keeps the same tokens in every head"):
        generate(model, compressed.cache, 80, 3, set(), first_logits=prefilled.last_logits, decode_eviction=eviction)
