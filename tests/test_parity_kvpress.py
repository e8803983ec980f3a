"""Our methods keep exactly the tokens kvpress 0.5.5's presses keep, on the same model and prompt.

kvpress runs through its own forward hooks (`with press(model): model(...)`). Its kept tokens
are found by matching the compressed keys against the full cache's keys row by row.
"""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache, Qwen3Config, Qwen3ForCausalLM

from capkv import build_method, compress, prefill, prefill_options
from capkv.methods import method_parameters
from capkv.methods.kvpress_presses import import_kvpress, kvpress_method_class, list_kvpress_presses, recover_indices
from tests.conftest import tiny_llama

kvpress = import_kvpress()

RATIO = 0.6
LENGTH = 200


def tiny_qwen3(seed: int = 0) -> Qwen3ForCausalLM:
    """A random-weight Qwen3 (q-norm and k-norm on every head), 6 query / 2 KV heads, fp32."""
    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=6,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=1024, attn_implementation="sdpa",
    )
    return Qwen3ForCausalLM(config).eval()


def kvpress_kept_indices(model, press, input_ids: torch.Tensor) -> list[torch.Tensor]:
    """Per layer, the ascending positions (batch, num_kv_heads, kept) the press keeps."""
    with torch.no_grad():
        full = model(input_ids=input_ids, use_cache=True).past_key_values
        cache = DynamicCache(config=model.config)
        with press(model):
            model(input_ids=input_ids, past_key_values=cache, use_cache=True)
    kept = [recover_indices(f.keys, c.keys) for f, c in zip(full.layers, cache.layers)]
    assert all(bool((indices >= 0).all()) for indices in kept), "kvpress changed key rows"
    return [indices.sort(dim=-1).values for indices in kept]


def our_kept_indices(model, method, input_ids: torch.Tensor) -> list[torch.Tensor]:
    prefilled = prefill(model, input_ids, **prefill_options([method]))
    return compress(model, prefilled, method, ratio=RATIO).kept_indices


CASES = [
    ("knorm", {}, lambda: kvpress.KnormPress(RATIO)),
    ("snapkv", {"window_size": 64, "kernel_size": 5, "pooling": "avg"}, lambda: kvpress.SnapKVPress(RATIO)),
    ("streaming_llm", {}, lambda: kvpress.StreamingLLMPress(RATIO)),
    ("tova", {}, lambda: kvpress.TOVAPress(RATIO)),
    ("keydiff", {}, lambda: kvpress.KeyDiffPress(RATIO)),
    ("expected_attention", {}, lambda: kvpress.ExpectedAttentionPress(RATIO)),
    ("capkv", {"mode": "kvpress-compat"}, lambda: kvpress.CapPress(RATIO)),
]
MODELS = {
    "llama-gqa": lambda: tiny_llama(num_heads=4, num_kv_heads=2, layers=2, seed=11),
    "llama-mha": lambda: tiny_llama(num_heads=4, num_kv_heads=4, layers=2, seed=12),
    "qwen3": lambda: tiny_qwen3(seed=13),
}


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("name,params,make_press", CASES, ids=[case[0] for case in CASES])
def test_kept_indices_equal_kvpress(model_name, name, params, make_press):
    model = MODELS[model_name]()
    input_ids = torch.randint(3, 128, (1, LENGTH), generator=torch.Generator().manual_seed(7))

    ours = our_kept_indices(model, build_method(name, **params), input_ids)
    theirs = kvpress_kept_indices(model, make_press(), input_ids)

    for layer_idx, (mine, reference) in enumerate(zip(ours, theirs)):
        assert mine.shape == reference.shape, f"layer {layer_idx}"
        assert torch.equal(mine, reference), f"layer {layer_idx}: {int((mine != reference).sum())} positions differ"


def test_kvpress_adapter_equals_our_knorm():
    model = tiny_llama(num_heads=4, num_kv_heads=2, layers=2, seed=11)
    input_ids = torch.randint(3, 128, (1, LENGTH), generator=torch.Generator().manual_seed(8))

    through_adapter = our_kept_indices(model, build_method("kvpress:knorm"), input_ids)
    ours = our_kept_indices(model, build_method("knorm"), input_ids)

    for adapter_layer, our_layer in zip(through_adapter, ours):
        assert torch.equal(adapter_layer, our_layer)


def test_criticalkv_adapter_matches_kvpress():
    # CriticalKVPress writes its own __init__ (press, epsilon, first_stage_ratio) instead of
    # being a dataclass, and rescales the wrapped press's scores with the output projection.
    model = tiny_llama(num_heads=4, num_kv_heads=2, layers=2, seed=11)
    input_ids = torch.randint(3, 128, (1, LENGTH), generator=torch.Generator().manual_seed(9))

    through_adapter = our_kept_indices(model, build_method("kvpress:criticalkv", press="knorm"), input_ids)
    theirs = kvpress_kept_indices(model, kvpress.CriticalKVPress(kvpress.KnormPress(RATIO)), input_ids)
    plain_knorm = our_kept_indices(model, build_method("knorm"), input_ids)

    for layer_idx, (adapter_layer, reference) in enumerate(zip(through_adapter, theirs)):
        assert torch.equal(adapter_layer, reference), f"layer {layer_idx}"
    assert any(not torch.equal(a, b) for a, b in zip(through_adapter, plain_knorm)), "the rescaling changed nothing"


def test_press_parameters_from_init_or_fields():
    assert method_parameters("kvpress:criticalkv") == {"press": None, "epsilon": 1e-4, "first_stage_ratio": 0.5}
    assert method_parameters("kvpress:knorm") == {}


def test_press_file_without_suffix_resolves():
    assert "expected_attention_with_stats" in list_kvpress_presses()
    method_class = kvpress_method_class("expected_attention_with_stats")
    assert method_class.name == "kvpress:expected_attention_with_stats"
    assert method_class.press_class is kvpress.ExpectedAttentionStatsPress
    assert kvpress_method_class("ExpectedAttentionStatsPress") is method_class


def test_importing_kvpress_leaves_attention_unpatched():
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    assert "sdpa" not in ALL_ATTENTION_FUNCTIONS._local_mapping
    assert ALL_ATTENTION_FUNCTIONS["sdpa"].__module__ == "transformers.integrations.sdpa_attention"
