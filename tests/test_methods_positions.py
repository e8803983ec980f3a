"""Decoding from a compressed cache equals decoding from the full cache with the evicted tokens masked.

The reference keeps the full prefill cache and runs every layer through a small eager attention
registered for these tests, which hides per KV head the prompt tokens the method evicted. The
compressed side gathers the kept rows (or stores ragged heads) and decodes at the true positions.
Equal logits therefore check positions, gathering, ragged storage and masks together.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AttentionInterface

from capkv import build_method, compress, generate, prefill, prefill_options
from capkv.engine import indices_to_mask
from tests.conftest import tiny_llama

REFERENCE_ATTENTION = "capkv_test_head_masked"
_reference_masks: dict[int, torch.Tensor | None] = {}


def head_masked_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Eager attention over the full cache; prompt slots hidden per KV head by `_reference_masks`."""
    batch, num_heads, q_len, head_dim = query.shape
    num_kv_heads, kv_len = key.shape[1], key.shape[2]
    group = num_heads // num_kv_heads
    keys = key.repeat_interleave(group, dim=1)
    values = value.repeat_interleave(group, dim=1)
    logits = torch.matmul(query, keys.transpose(2, 3)) * scaling  # (batch, num_heads, q_len, kv_len)

    query_index = kv_len - q_len + torch.arange(q_len)
    key_index = torch.arange(kv_len)
    allowed = (key_index[None, :] <= query_index[:, None]).expand(batch, num_heads, q_len, kv_len).clone()
    if kwargs.get("sliding_window"):
        allowed &= key_index[None, :] > query_index[:, None] - kwargs["sliding_window"]
    prompt_mask = _reference_masks.get(module.layer_idx)
    if prompt_mask is not None:
        prompt_len = prompt_mask.shape[-1]
        allowed[..., :prompt_len] &= prompt_mask.repeat_interleave(group, dim=1)[:, :, None, :]

    weights = logits.masked_fill(~allowed, float("-inf")).softmax(dim=-1)
    return torch.matmul(weights, values).transpose(1, 2), weights


AttentionInterface.register(REFERENCE_ATTENTION, head_masked_attention)


def keep_masks(compressed, seq_len: int) -> dict[int, torch.Tensor | None]:
    """Per layer, the (batch, num_kv_heads, seq_len) boolean mask of kept prompt tokens."""
    return {
        layer_idx: None if kept is None else indices_to_mask(kept, seq_len)
        for layer_idx, kept in enumerate(compressed.kept_indices)
    }


def masked_reference_logits(model, prompt: torch.Tensor, masks, tokens: list[int]) -> list[torch.Tensor]:
    """Logits after feeding each of `tokens` one by one onto the full prompt cache with `masks` applied."""
    with torch.no_grad():
        cache = model(input_ids=prompt, use_cache=True).past_key_values  # masks apply from the first new token
    previous = model.config._attn_implementation
    _reference_masks.clear()
    _reference_masks.update(masks)
    model.set_attn_implementation(REFERENCE_ATTENTION)
    rows = []
    try:
        with torch.no_grad():
            for step, token in enumerate(tokens):
                position = prompt.shape[1] + step
                output = model(input_ids=torch.tensor([[token]]), past_key_values=cache,
                               position_ids=torch.tensor([[position]]))
                cache = output.past_key_values
                rows.append(output.logits[0, -1])
    finally:
        model.set_attn_implementation(previous)
        _reference_masks.clear()
    return rows


def prompt_ids(length: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, 128, (1, length), generator=generator)


METHODS = [
    ("random", {"seed": 3}),
    ("streaming_llm", {}),
    ("h2o", {}),
    ("snapkv", {"window_size": 8}),
    ("pyramidkv", {"window_size": 8, "beta": 2.0}),
    ("adakv", {"scorer_params": {"window_size": 8}}),
    ("tova", {}),
    ("knorm", {}),
    ("keydiff", {}),
    ("expected_attention", {}),
    ("capkv", {}),
    ("capkv", {"mode": "kvpress-compat"}),
    ("capkv-greedy", {}),
    ("kvpress:snapkv", {"window_size": 8}),
    ("kvpress:adakv", {"press": "knorm"}),
]


@pytest.fixture(scope="module")
def four_layer_model():
    return tiny_llama(num_heads=4, num_kv_heads=2, layers=4, seed=2)


@pytest.mark.parametrize("name,params", METHODS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(METHODS)])
def test_decode_matches_masked_full_cache(four_layer_model, name, params):
    model = four_layer_model
    length, budget, steps = 96, 36, 5
    prompt = prompt_ids(length)
    method = build_method(name, **params)
    prefilled = prefill(model, prompt, **prefill_options([method]))
    compressed = compress(model, prefilled, method, budget)

    ours = generate(model, compressed.cache, length, steps, set(), first_logits=prefilled.last_logits,
                    return_logits=True)
    reference = masked_reference_logits(model, prompt, keep_masks(compressed, length), ours.token_ids[:-1])

    assert len(ours.token_ids) == steps
    for step in range(1, steps):
        difference = (ours.step_logits[step] - reference[step - 1]).abs().max()
        assert difference < 1e-4, f"step {step}: logits differ by {difference:.2e}"


def test_masked_reference_detects_wrong_positions(four_layer_model):
    """The check above can fail: shifting the decode position by one changes the logits."""
    model = four_layer_model
    prompt = prompt_ids(96)
    method = build_method("knorm")
    prefilled = prefill(model, prompt)
    compressed = compress(model, prefilled, method, 36)

    shifted = generate(model, compressed.cache, 96 - 60, 3, set(), first_logits=prefilled.last_logits,
                       return_logits=True)
    reference = masked_reference_logits(model, prompt, keep_masks(compressed, 96), shifted.token_ids[:-1])
    assert (shifted.step_logits[1] - reference[0]).abs().max() > 1e-3


def test_question_after_ragged_cache_matches_reference(four_layer_model):
    """A multi-token suffix over Ada-KV's ragged heads attends to the same tokens as the masked full cache."""
    model = four_layer_model
    prompt, question = prompt_ids(80), prompt_ids(5, seed=9)
    method = build_method("adakv", scorer_params={"window_size": 8})
    prefilled = prefill(model, prompt, **prefill_options([method]))
    compressed = compress(model, prefilled, method, 30)

    ours = generate(model, compressed.cache, 80, 1, set(), suffix_ids=question, return_logits=True)
    reference = masked_reference_logits(model, prompt, keep_masks(compressed, 80), question[0].tolist())

    assert (ours.step_logits[0] - reference[-1]).abs().max() < 1e-4
