"""Bad budgets, ratios, parameters and models give one-line MethodErrors naming the value and what is accepted."""

from __future__ import annotations

import pytest
import torch

from capkv import build_method, compress, prefill
from capkv.methods import MethodError
from tests.conftest import tiny_llama


@pytest.fixture(scope="module")
def prefilled_model():
    model = tiny_llama(layers=2)
    prompt = torch.randint(3, 128, (1, 60), generator=torch.Generator().manual_seed(1))
    return model, prefill(model, prompt, window_size=8)


def _error(call) -> str:
    with pytest.raises(MethodError) as raised:
        call()
    message = str(raised.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("budget", [0, -3, 2.5, "64", True])
def test_invalid_budget(prefilled_model, budget):
    model, prefilled = prefilled_model
    message = _error(lambda: compress(model, prefilled, build_method("knorm"), budget))
    assert message == f"invalid budget {budget!r}; expected an integer number of tokens per KV head, >= 1"


@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.5, "half"])
def test_invalid_ratio(prefilled_model, ratio):
    model, prefilled = prefilled_model
    message = _error(lambda: compress(model, prefilled, build_method("knorm"), ratio=ratio))
    assert message == f"invalid compression ratio {ratio!r}; expected a number in [0, 1)"


def test_budget_and_ratio_together(prefilled_model):
    model, prefilled = prefilled_model
    assert "give one of them" in _error(lambda: compress(model, prefilled, build_method("knorm"), 10, ratio=0.5))


def test_window_larger_than_budget(prefilled_model):
    model, prefilled = prefilled_model
    message = _error(lambda: compress(model, prefilled, build_method("snapkv", window_size=8), 6))
    assert message.startswith("budget 6 is smaller than the 9 tokens snapkv(window_size=8) always keeps")


def test_method_needs_rotary_embedding():
    model = tiny_llama(layers=1)
    model.model.rotary_emb = None  # as in a model with learned absolute positions
    method = build_method("expected_attention")
    message = _error(lambda: method.check_model(model))
    assert message == (
        "method expected_attention needs a model with rotary position embeddings; LlamaForCausalLM has none"
    )


def test_prefill_missing_what_method_reads(prefilled_model):
    model, prefilled = prefilled_model
    h2o = _error(lambda: compress(model, prefilled, build_method("h2o"), 20))
    assert h2o.startswith("h2o needs attention sums, which the prefill did not capture")
    window = _error(lambda: compress(model, prefilled, build_method("snapkv"), 40))
    assert window.startswith("snapkv reads the last 32 prompt queries but the prefill captured 8")
    sinks = _error(lambda: compress(model, prefilled, build_method("capkv", num_sinks=2), 20))
    assert sinks.startswith(
        "capkv(num_sinks=2) needs query statistics without the first 2 tokens but the prefill left out 4"
    )


@pytest.mark.parametrize(
    "name,params,expected",
    [
        ("h2o", {"recent_ratio": 1.5}, "invalid h2o recent_ratio=1.5; expected a number in [0, 1)"),
        ("capkv", {"mode": "fast"}, "invalid capkv mode='fast'; expected one of paper, kvpress-compat"),
        ("adakv", {"alpha": 2}, "invalid adakv alpha=2.0; expected a number in [0, 1]"),
        ("adakv", {"scorer": "full"}, "invalid adakv scorer='full'; expected a scoring method other than full/adakv"),
        ("pyramidkv", {"beta": 0.5}, "invalid pyramidkv beta=0.5; expected a number >= 1"),
        ("snapkv", {"kernel_size": 4}, "invalid snapkv kernel_size=4; expected an odd integer >= 1"),
        ("expected_attention", {"future_positions": 0},
         "invalid expected_attention future_positions=0; expected an integer >= 1"),
        ("random", {"seed": "x"}, "invalid random parameter seed='x'; expected int"),
        ("tova", {"window_size": 4}, "unknown parameter 'window_size' for method 'tova'; accepted: none"),
        ("snapvk", {}, "unknown method 'snapvk' (did you mean 'snapkv'?); known: "),
        ("kvpress:nosuchpress", {}, "unknown kvpress press 'nosuchpress'; known: "),
        ("kvpress:decoding", {}, "kvpress:decoding (DecodingPress) works inside the model's forward pass"),
        ("kvpress:criticalkv", {}, "kvpress:criticalkv needs press=<kvpress press name>, for example press='snapkv'"),
        ("kvpress:criticalkv", {"alpha": 0.5},
         "unknown parameter 'alpha' for method 'kvpress:criticalkv'; accepted: press, epsilon, first_stage_ratio"),
    ],
)
def test_invalid_parameters(name, params, expected):
    assert _error(lambda: build_method(name, **params)).startswith(expected)
