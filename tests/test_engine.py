"""Prefill, compression and decoding on tiny random-weight models."""

from __future__ import annotations

import pytest
import torch

from capkv import build_method, compress, generate, prefill
from capkv.memory import cache_bytes
from tests.conftest import tiny_llama

METHOD_NAMES = ["streaming_llm", "snapkv", "capkv"]


def _prompt(length: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, 128, (1, length), generator=generator)


@pytest.mark.parametrize("name", METHOD_NAMES)
@pytest.mark.parametrize("layout", [(4, 4), (4, 2), (4, 1)], ids=["mha", "gqa", "mqa"])
def test_compress_shrinks_every_layer(name, layout):
    model = tiny_llama(*layout)
    prefilled = prefill(model, _prompt(120), window_size=32)
    method = build_method(name, **({"window_size": 8} if name == "snapkv" else {}))

    compressed = compress(model, prefilled, method, budget=40)

    for layer in compressed.cache.layers:
        assert tuple(layer.keys.shape) == (1, layout[1], 40, 16)
        assert tuple(layer.values.shape) == (1, layout[1], 40, 16)
    assert compressed.kv_bytes * 120 == cache_bytes(prefilled.cache) * 40


def test_compress_leaves_prefill_untouched():
    model = tiny_llama()
    prefilled = prefill(model, _prompt(64), window_size=32)
    before = [layer.keys.clone() for layer in prefilled.cache.layers]

    compressed = compress(model, prefilled, build_method("capkv"), budget=16)
    generate(model, compressed.cache, 64, 5, set(), first_logits=prefilled.last_logits)

    for layer, keys in zip(prefilled.cache.layers, before):
        assert torch.equal(layer.keys, keys)


def test_budget_above_context_keeps_everything():
    model = tiny_llama()
    prefilled = prefill(model, _prompt(30), window_size=32)
    compressed = compress(model, prefilled, build_method("snapkv", window_size=8), budget=100)
    assert compressed.kv_bytes == cache_bytes(prefilled.cache)
    assert compressed.kept_tokens_per_layer == [30.0, 30.0]


def test_full_cache_matches_model_generate():
    model = tiny_llama()
    prompt = _prompt(50)
    prefilled = prefill(model, prompt)
    compressed = compress(model, prefilled, build_method("full"), budget=0)

    ours = generate(model, compressed.cache, 50, 12, set(), first_logits=prefilled.last_logits)
    reference = model.generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=0)

    assert ours.token_ids == reference[0, 50:].tolist()


def test_decode_continues_at_original_positions():
    """StreamingLLM keeps the same positions in every head, so a 2-D mask over the full cache
    reproduces it; logits must match when generated tokens continue at position T."""
    model = tiny_llama()
    length, budget, steps = 80, 24, 5
    prompt = _prompt(length)
    prefilled = prefill(model, prompt)
    compressed = compress(model, prefilled, build_method("streaming_llm"), budget=budget)
    kept = compressed.kept_indices[0][0, 0]

    ours = generate(model, compressed.cache, length, steps, set(), first_logits=prefilled.last_logits,
                    return_logits=True)

    mask = torch.zeros(1, length + steps, dtype=torch.long)
    mask[0, kept] = 1
    mask[0, length:] = 1
    sequence = torch.cat([prompt, torch.tensor([ours.token_ids[:-1]])], dim=1)
    with torch.no_grad():
        full_mask_prefix = model(input_ids=prompt).past_key_values  # full cache, nothing masked yet
        reference_logits = []
        cache = full_mask_prefix
        for step in range(1, steps):
            position = length + step - 1
            out = model(
                input_ids=sequence[:, position : position + 1],
                past_key_values=cache,
                attention_mask=mask[:, : position + 1],
                position_ids=torch.tensor([[position]]),
            )
            cache = out.past_key_values
            reference_logits.append(out.logits[0, -1])

    for step in range(1, steps):
        assert torch.allclose(ours.step_logits[step], reference_logits[step - 1], atol=1e-4)


def test_question_after_compression_uses_true_positions():
    model = tiny_llama()
    context, question = _prompt(60), _prompt(6, seed=7)
    prefilled = prefill(model, context)
    compressed = compress(model, prefilled, build_method("full"), budget=0)
    ours = generate(model, compressed.cache, 60, 6, set(), suffix_ids=question)

    reference = model.generate(torch.cat([context, question], dim=1), max_new_tokens=6, do_sample=False,
                               pad_token_id=0)
    assert ours.token_ids == reference[0, 66:].tolist()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gather_tokens_matches_gather(dtype):
    from capkv.engine import gather_tokens

    generator = torch.Generator().manual_seed(3)
    states = torch.randn(3, 4, 50, 16, generator=generator).to(dtype)
    # Per (batch, head) a different, unsorted set of positions, with the last position repeated.
    kept = torch.stack([torch.randperm(50, generator=generator)[:12] for _ in range(12)]).view(3, 4, 12)
    kept[..., -1] = 49
    expected = states.gather(2, kept[..., None].expand(-1, -1, -1, 16))
    assert torch.equal(gather_tokens(states, kept), expected)
    assert torch.equal(gather_tokens(states.transpose(1, 2).contiguous().transpose(1, 2), kept), expected)
