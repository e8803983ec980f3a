"""Every method on tiny random Llama, Qwen2, Qwen3 (q/k norms), Mistral and Gemma 3 (sliding layers)."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from capkv import build_method, compress, generate, prefill, prefill_options
from tests.conftest import tiny_llama
from tests.test_methods_positions import keep_masks, masked_reference_logits, prompt_ids

SHAPE = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
             head_dim=16, max_position_embeddings=512, attn_implementation="sdpa")
SLIDING_WINDOW = 24


def tiny_qwen2():
    return Qwen2ForCausalLM(Qwen2Config(num_hidden_layers=2, **SHAPE)).eval()


def tiny_qwen3():
    return Qwen3ForCausalLM(Qwen3Config(num_hidden_layers=2, **SHAPE)).eval()


def tiny_mistral():
    # sliding_window=None as in Mistral v0.3; with a window every layer is a sliding layer, left uncompressed.
    return MistralForCausalLM(MistralConfig(num_hidden_layers=2, sliding_window=None, **SHAPE)).eval()


def tiny_gemma3():
    """Three sliding-window layers (window 24) and one full-attention layer, like Gemma 3's 5:1 pattern."""
    config = Gemma3TextConfig(
        num_hidden_layers=4, sliding_window=SLIDING_WINDOW, query_pre_attn_scalar=16,
        layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"], **SHAPE,
    )
    return Gemma3ForCausalLM(config).eval()


ARCHITECTURES = {
    "llama": lambda: tiny_llama(num_heads=4, num_kv_heads=2, layers=2, seed=21),
    "qwen2": tiny_qwen2,
    "qwen3": tiny_qwen3,
    "mistral": tiny_mistral,
    "gemma3": tiny_gemma3,
}
METHODS = [
    ("random", {}), ("streaming_llm", {}), ("h2o", {}), ("snapkv", {"window_size": 8}),
    ("pyramidkv", {"window_size": 8, "beta": 2.0}), ("adakv", {"scorer_params": {"window_size": 8}}), ("tova", {}),
    ("knorm", {}), ("keydiff", {}), ("expected_attention", {}), ("capkv", {}), ("capkv", {"mode": "kvpress-compat"}),
    ("capkv-greedy", {}),
]


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def architecture(request):
    torch.manual_seed(31)
    return request.param, ARCHITECTURES[request.param]()


@pytest.mark.parametrize("name,params", METHODS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(METHODS)])
def test_decode_matches_masked_full_cache(architecture, name, params):
    architecture_name, model = architecture
    length, budget, steps = 72, 28, 4
    prompt = prompt_ids(length, seed=3)
    method = build_method(name, **params)
    prefilled = prefill(model, prompt, **prefill_options([method]))
    compressed = compress(model, prefilled, method, budget)

    ours = generate(model, compressed.cache, length, steps, set(), first_logits=prefilled.last_logits,
                    return_logits=True)
    reference = masked_reference_logits(model, prompt, keep_masks(compressed, length), ours.token_ids[:-1])

    assert any(indices is not None for indices in compressed.kept_indices)  # something was evicted
    for step in range(1, steps):
        assert (ours.step_logits[step] - reference[step - 1]).abs().max() < 1e-4, f"step {step}"


@pytest.mark.parametrize("name,params", [("snapkv", {"window_size": 8}), ("adakv", {"scorer": "knorm"})])
def test_question_after_compression_matches_reference(architecture, name, params):
    _, model = architecture
    prompt, question = prompt_ids(72, seed=3), prompt_ids(6, seed=4)
    method = build_method(name, **params)
    prefilled = prefill(model, prompt, **prefill_options([method]))
    compressed = compress(model, prefilled, method, 28)

    ours = generate(model, compressed.cache, 72, 1, set(), suffix_ids=question, return_logits=True)
    reference = masked_reference_logits(model, prompt, keep_masks(compressed, 72), question[0].tolist())

    assert (ours.step_logits[0] - reference[-1]).abs().max() < 1e-4


def test_gemma3_sliding_layers_stay_uncompressed():
    model = tiny_gemma3()
    method = build_method("snapkv", window_size=8)
    prefilled = prefill(model, prompt_ids(72), **prefill_options([method]))
    compressed = compress(model, prefilled, method, 28)

    assert [indices is None for indices in compressed.kept_indices] == [True, True, False, True]
    assert compressed.kept_tokens_per_layer == [SLIDING_WINDOW - 1, SLIDING_WINDOW - 1, 28.0, SLIDING_WINDOW - 1]
    assert compressed.cache.layers[2].keys.shape[2] == 28
