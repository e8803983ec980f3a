"""Ada-KV: per-head budgets, ragged storage with real byte savings, and attention over it."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from capkv import build_method, cache_bytes, compress, generate, prefill, prefill_options
from capkv.capture import LayerCapture
from capkv.methods.base import LayerInputs
from capkv.ragged import RaggedLayer, attend_ragged
from tests.conftest import tiny_llama
from tests.test_methods_positions import keep_masks, masked_reference_logits, prompt_ids


def _layer_with_key_norms(norms: list[list[float]]) -> LayerInputs:
    """One layer whose key of head h at position i has L2 norm norms[h][i] (knorm keeps low norms)."""
    norm_tensor = torch.tensor(norms)[None]  # (1, heads, seq_len)
    keys = torch.zeros(*norm_tensor.shape, 4)
    keys[..., 0] = norm_tensor
    values = torch.randn(*keys.shape)
    return LayerInputs(0, 1, keys, values, LayerCapture())


def test_select_mask_hand_computed():
    # Head 0 has five low-norm keys, head 1 only one; budget 3 per head, 6 slots in the layer.
    layer = _layer_with_key_norms([[1, 2, 3, 4, 5, 90, 91, 92], [6, 95, 96, 97, 98, 99, 93, 94]])
    method = build_method("adakv", scorer="knorm", alpha=0.34)  # floor int(3 · 0.34) = 1 per head

    mask = method.select_mask(layer, 3)[0]

    assert mask[0].nonzero().flatten().tolist() == [0, 1, 2, 3, 4]
    assert mask[1].nonzero().flatten().tolist() == [0]


def test_floor_gives_every_head_alpha_budget():
    layer = _layer_with_key_norms([[1, 2, 3, 4, 5, 6, 7, 8], [90, 91, 92, 93, 94, 95, 96, 97]])
    mask = build_method("adakv", scorer="knorm", alpha=0.5).select_mask(layer, 4)[0]

    assert mask[1].sum() == 2  # int(4 · 0.5); head 1 scores lower everywhere
    assert mask[0].sum() == 6
    assert mask[1].nonzero().flatten().tolist() == [0, 1]


def test_alpha_one_is_uniform():
    layer = _layer_with_key_norms([[1, 2, 3, 4, 5, 6, 7, 8], [90, 91, 92, 93, 94, 95, 96, 97]])
    mask = build_method("adakv", scorer="knorm", alpha=1.0).select_mask(layer, 3)[0]
    assert mask.sum(dim=-1).tolist() == [3, 3]


def test_ragged_storage_bytes_are_sum_of_head_budgets():
    model = tiny_llama(num_heads=4, num_kv_heads=2, layers=3, seed=3)
    method = build_method("adakv", scorer_params={"window_size": 8})
    prefilled = prefill(model, prompt_ids(100), **prefill_options([method]))

    compressed = compress(model, prefilled, method, 30)

    head_dim, element = 16, 4
    lengths = [counts for counts in compressed.kept_tokens_per_head]
    assert any(len(set(counts.flatten().tolist())) > 1 for counts in lengths)  # heads really differ
    for counts, layer in zip(lengths, compressed.cache.layers):
        assert isinstance(layer, RaggedLayer)
        assert int(counts.sum()) == 2 * 30  # the layer total is num_kv_heads · budget
        assert layer.flat_keys.shape == (int(counts.sum()), head_dim)
    offsets = 3 * 2 * 8  # one int64 length per layer and head
    assert compressed.kv_bytes == 3 * 2 * 30 * head_dim * element * 2 + offsets
    assert compressed.kv_bytes < cache_bytes(prefilled.cache) * 30 / 100 * 1.01


def test_ragged_padded_view_holds_kept_rows():
    keys = torch.randn(1, 2, 10, 4)
    values = torch.randn(1, 2, 10, 4)
    mask = torch.zeros(1, 2, 10, dtype=torch.bool)
    mask[0, 0, [1, 4, 7]] = True
    mask[0, 1, [0, 9]] = True
    layer = RaggedLayer(keys, values, mask)

    layer.update(torch.ones(1, 2, 1, 4), torch.ones(1, 2, 1, 4))
    padded_keys, padded_values = layer.padded()

    assert padded_keys.shape == (1, 2, 4, 4)  # the maximum head length is 3, plus one new token
    assert torch.equal(padded_keys[0, 0, :3], keys[0, 0, [1, 4, 7]])
    assert torch.equal(padded_values[0, 1, :2], values[0, 1, [0, 9]])
    assert torch.equal(padded_keys[0, 1, 2], torch.zeros(4))  # padding slot
    assert torch.equal(padded_keys[0, :, 3], torch.ones(2, 4))  # the new token of each head
    assert layer.key_mask()[0].tolist() == [[True, True, True, True], [True, True, False, True]]
    assert layer.kept_tokens().tolist() == [[4, 3]]


def test_ragged_room_filled_in_place():
    keys = torch.arange(1 * 2 * 6 * 2, dtype=torch.float32).view(1, 2, 6, 2)
    mask = torch.zeros(1, 2, 6, dtype=torch.bool)
    mask[0, 0, [0, 5]] = True
    mask[0, 1, [1, 2, 3]] = True
    layer = RaggedLayer(keys, -keys, mask)
    assert layer.flat_keys.shape == (5, 2)  # no free slots after compression

    roomy = layer.with_room(2)
    assert roomy.flat_keys.shape == (9, 2)  # 2 + 2 and 3 + 2 slots
    assert roomy.starts == [0, 4]
    storage = roomy.flat_keys.data_ptr()
    new = torch.full((1, 2, 1, 2), 100.0)
    for step in range(2):
        roomy.update(new + step, -(new + step))
    assert roomy.flat_keys.data_ptr() == storage  # written into the free slots
    head_keys, head_values = roomy.head_keys_values(1)
    assert head_keys.tolist() == [[14, 15], [16, 17], [18, 19], [100, 100], [101, 101]]
    assert torch.equal(head_values, -head_keys)
    assert roomy.head_keys_values(0)[0].tolist() == [[0, 1], [10, 11], [100, 100], [101, 101]]

    roomy.update(new + 2, new)  # no room left: copied into exactly enough slots
    assert roomy.flat_keys.shape == (2 + 3 + 2 * 3, 2)
    assert roomy.head_keys_values(0)[0][-1].tolist() == [102, 102]
    assert layer.new_tokens == 0  # the original is not changed
    assert layer.flat_keys.shape == (5, 2)


def test_ragged_decode_matches_masked_reference():
    model = tiny_llama(num_heads=6, num_kv_heads=3, layers=2, seed=6)
    prompt = prompt_ids(90, seed=4)
    method = build_method("adakv", scorer="capkv", alpha=0.2)
    prefilled = prefill(model, prompt, **prefill_options([method]))
    compressed = compress(model, prefilled, method, 24)
    bytes_before = compressed.kv_bytes

    ours = generate(model, compressed.cache, 90, 12, set(), first_logits=prefilled.last_logits, return_logits=True)
    reference = masked_reference_logits(model, prompt, keep_masks(compressed, 90), ours.token_ids[:-1])

    for step in range(1, 12):
        assert (ours.step_logits[step] - reference[step - 1]).abs().max() < 1e-4
    appended = 11 * 2 * 3 * 16 * 4 * 2  # 11 fed tokens, 2 layers, 3 heads, head_dim 16, fp32, keys and values
    assert cache_bytes(compressed.cache) == bytes_before + appended


@pytest.mark.parametrize("softcap", [None, 0.5])
def test_ragged_attention_matches_per_head_softmax(softcap):
    """Two new tokens over heads of 3 and 1 kept tokens: each query attends to its head's tokens and to the new ones up to itself."""
    generator = torch.Generator().manual_seed(2)
    keys, values = torch.randn(1, 2, 5, 4, generator=generator), torch.randn(1, 2, 5, 4, generator=generator)
    mask = torch.zeros(1, 2, 5, dtype=torch.bool)
    mask[0, 0, [0, 2, 4]] = True
    mask[0, 1, [3]] = True
    layer = RaggedLayer(keys, values, mask).with_room(2)
    new_keys, new_values = torch.randn(1, 2, 2, 4, generator=generator), torch.randn(1, 2, 2, 4, generator=generator)
    layer.update(new_keys, new_values)
    query = torch.randn(1, 4, 2, 4, generator=generator)  # 4 query heads, 2 per KV head, 2 new tokens

    output, _ = attend_ragged(nn.Module(), query, new_keys, new_values, layer, scaling=0.5, softcap=softcap)

    for head in range(4):
        kv_head = head // 2
        kept_positions = mask[0, kv_head].nonzero().flatten()
        for token in range(2):
            head_keys = torch.cat([keys[0, kv_head, kept_positions], new_keys[0, kv_head, :token + 1]]).double()
            head_values = torch.cat([values[0, kv_head, kept_positions], new_values[0, kv_head, :token + 1]]).double()
            logits = head_keys @ query[0, head, token].double() * 0.5
            if softcap:
                logits = torch.tanh(logits / softcap) * softcap
            expected = logits.softmax(dim=0) @ head_values
            assert torch.allclose(output[0, token, head].double(), expected, atol=1e-6), (head, token)


def test_ragged_copies_never_write_into_shared_slots():
    keys = torch.arange(1 * 2 * 4 * 2, dtype=torch.float32).view(1, 2, 4, 2)
    mask = torch.ones(1, 2, 4, dtype=torch.bool)
    mask[0, 1, 0] = False
    roomy = RaggedLayer(keys, keys, mask).with_room(3)
    roomy.update(torch.zeros(1, 2, 1, 2), torch.zeros(1, 2, 1, 2))

    copied = copy.copy(roomy)
    copied.update(torch.full((1, 2, 1, 2), 7.0), torch.full((1, 2, 1, 2), 7.0))
    roomy.update(torch.full((1, 2, 1, 2), 9.0), torch.full((1, 2, 1, 2), 9.0))

    assert copied.flat_keys.data_ptr() != roomy.flat_keys.data_ptr()  # the copy moved to storage of its own
    assert copied.head_keys_values(1)[0][-2:].tolist() == [[0, 0], [7, 7]]
    assert roomy.head_keys_values(1)[0][-2:].tolist() == [[0, 0], [9, 9]]
    assert roomy.head_keys_values(0)[0].shape == (4 + 2, 2)
