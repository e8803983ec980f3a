"""The engine on the bundled SmolLM2-135M-Instruct with real essay text."""

from __future__ import annotations

import pytest
import torch

from benchmarks import build_benchmark
from benchmarks.prompt import build_prompt
from capkv import build_method, compress, generate, prefill
from workers.models import stop_token_ids

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def needle_prompts(smollm2):
    samples = build_benchmark("needle", context_length=1500).load(smollm2.tokenizer, 3, seed=0)
    return [(s, build_prompt(smollm2.tokenizer, s, chat_template=True, query_aware=True)) for s in samples]


def test_full_cache_matches_generate_on_smollm2(smollm2_float32, needle_prompts):
    """Our prefill and decoding give transformers' greedy tokens, compared in float32.

    In bfloat16 on a CPU with AMX, the two prefills' logits differed by up to 3.0, and a step whose
    top two logits were 0.125 apart picked the other token.
    """
    model = smollm2_float32.model
    sample, prompt = needle_prompts[0]
    ids = torch.tensor([prompt.context_ids])
    prefilled = prefill(model, ids, window_size=32)
    compressed = compress(model, prefilled, build_method("full"), budget=0)
    ours = generate(model, compressed.cache, ids.shape[1], 12, set(), first_logits=prefilled.last_logits)

    with torch.no_grad():
        reference = model.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=2)
    assert ours.token_ids == reference[0, ids.shape[1]:].tolist()


def test_full_cache_finds_the_pass_key(smollm2, needle_prompts):
    benchmark = build_benchmark("needle", context_length=1500)
    stops = stop_token_ids(smollm2)
    found = 0
    for sample, prompt in needle_prompts:
        ids = torch.tensor([prompt.context_ids])
        prefilled = prefill(smollm2.model, ids)
        output = generate(smollm2.model, prefilled.cache, ids.shape[1], 12, stops, first_logits=prefilled.last_logits)
        found += benchmark.score(smollm2.tokenizer.decode(output.token_ids), sample)["exact_match"]
    assert found == 3


@pytest.mark.parametrize("name", ["streaming_llm", "snapkv", "capkv"])
def test_compressed_shapes_on_smollm2(smollm2, needle_prompts, name):
    _, prompt = needle_prompts[1]
    ids = torch.tensor([prompt.context_ids])
    prefilled = prefill(smollm2.model, ids, window_size=32)
    compressed = compress(smollm2.model, prefilled, build_method(name), budget=128)
    assert len(compressed.cache.layers) == 30
    for layer in compressed.cache.layers:
        assert tuple(layer.keys.shape) == (1, 3, 128, 64)
    full_bytes = 30 * 2 * 3 * 64 * 2 * ids.shape[1]  # layers, keys+values, KV heads, head_dim, bf16 bytes
    assert compressed.kv_bytes == full_bytes * 128 // ids.shape[1]
