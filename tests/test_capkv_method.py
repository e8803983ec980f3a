"""CapKV's leverage scores against the facts they must satisfy, and the baselines' kept sets."""

from __future__ import annotations

import pytest
import torch

from capkv import build_method
from capkv.capture import LayerCapture
from capkv.methods.base import LayerInputs
from capkv.methods.capkv import leverage_scores, log_capacity


def _random_values(num_tokens: int = 12, head_dim: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(1, 1, num_tokens, head_dim, generator=generator, dtype=torch.float64)
    weights = torch.rand(1, 1, num_tokens, generator=generator, dtype=torch.float64) + 0.1
    return values, weights


def _log_det(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    head_dim = values.shape[-1]
    gram = torch.eye(head_dim, dtype=values.dtype) + torch.einsum("nd,n,ne->de", values, weights, values)
    return torch.logdet(gram)


def test_leverage_equals_log_det_drop():
    values, weights = _random_values()
    scores = leverage_scores(values, weights)[0, 0]
    full = _log_det(values[0, 0], weights[0, 0])
    for index in range(values.shape[2]):
        keep = [i for i in range(values.shape[2]) if i != index]
        drop = full - _log_det(values[0, 0, keep], weights[0, 0, keep])
        assert torch.allclose(-torch.log1p(-scores[index]), drop, atol=1e-10)


def test_leverage_sum_is_dim_minus_trace():
    values, weights = _random_values(num_tokens=20, head_dim=6)
    scores = leverage_scores(values, weights)
    gram = torch.eye(6, dtype=torch.float64) + torch.einsum("nd,n,ne->de", values[0, 0], weights[0, 0], values[0, 0])
    expected = 6 - torch.trace(torch.linalg.inv(gram))
    assert torch.allclose(scores.sum(), expected, atol=1e-10)
    assert bool((scores >= 0).all())
    assert bool((scores < 1).all())


def test_duplicate_tokens_score_equally_and_lower():
    values, weights = _random_values(num_tokens=8)
    base = leverage_scores(values, weights)[0, 0, 3]
    duplicated_values = torch.cat([values, values[:, :, 3:4]], dim=2)
    duplicated_weights = torch.cat([weights, weights[:, :, 3:4]], dim=2)
    scores = leverage_scores(duplicated_values, duplicated_weights)[0, 0]
    assert torch.allclose(scores[3], scores[-1], atol=1e-12)
    assert scores[3] < base


def test_leverage_skips_zero_weights():
    # Head 0 keeps 3 of 16 weights, head 1 keeps 5: the gathered path pads head 0 with two
    # zero-weight tokens. Each head must match the formula over its nonzero tokens alone.
    values, weights = _random_values(num_tokens=16, head_dim=4, seed=3)
    values, weights = values.expand(1, 2, 16, 4).clone(), weights.expand(1, 2, 16).clone()
    nonzero = {0: [1, 7, 12], 1: [0, 2, 7, 9, 15]}
    for head, positions in nonzero.items():
        mask = torch.zeros(16, dtype=torch.bool)
        mask[positions] = True
        weights[0, head, ~mask] = 0.0
    scores = leverage_scores(values, weights)

    for head, positions in nonzero.items():
        gram = torch.eye(4, dtype=torch.float64) + torch.einsum(
            "nd,n,ne->de", values[0, head, positions], weights[0, head, positions], values[0, head, positions]
        )
        inverse = torch.linalg.inv(gram)
        for index in range(16):
            value = values[0, head, index]
            expected = weights[0, head, index] * value @ inverse @ value
            assert float(scores[0, head, index]) == pytest.approx(float(expected), abs=1e-12)
    assert int((scores > 0).sum()) == 8


def _layer(seq_len=40, num_heads=4, num_kv_heads=2, head_dim=8, seed=0) -> LayerInputs:
    generator = torch.Generator().manual_seed(seed)
    keys = torch.randn(1, num_kv_heads, seq_len, head_dim, generator=generator)
    values = torch.randn(1, num_kv_heads, seq_len, head_dim, generator=generator)
    capture = LayerCapture(
        window_queries=torch.randn(1, num_heads, 8, head_dim, generator=generator),
        query_sum=torch.randn(1, num_heads, head_dim, generator=generator) * seq_len,
        query_count=seq_len,
        scaling=head_dim**-0.5,
    )
    return LayerInputs(0, 1, keys, values, capture)


def test_tau_zero_ignores_queries_and_keys():
    layer = _layer()
    other = _layer(seed=5)
    other.values = layer.values  # same values, different keys and queries
    method = build_method("capkv", tau=0.0)
    assert torch.allclose(method.score(layer), method.score(other))


def test_kept_sets_respect_budget_and_protected_positions():
    layer = _layer(seq_len=40)
    capkv_kept = build_method("capkv").select(layer, 12)
    snapkv_kept = build_method("snapkv", window_size=8).select(layer, 12)
    streaming_kept = build_method("streaming_llm").select(layer, 12)

    assert capkv_kept.shape == (1, 2, 12)
    assert set(range(4)) <= set(capkv_kept[0, 0].tolist())  # sinks
    assert set(range(32, 40)) <= set(snapkv_kept[0, 1].tolist())  # observation window
    assert streaming_kept[0, 0].tolist() == [0, 1, 2, 3] + list(range(32, 40))
    for kept in (capkv_kept, snapkv_kept, streaming_kept):
        assert bool((kept[..., 1:] > kept[..., :-1]).all())  # original order, no repeats


def test_log_capacity_of_kept_set():
    values, weights = _random_values(num_tokens=10)
    kept = torch.tensor([[[0, 2, 5]]])
    expected = 0.5 * _log_det(values[0, 0, [0, 2, 5]], weights[0, 0, [0, 2, 5]])
    assert torch.allclose(log_capacity(values, weights, kept)[0, 0].double(), expected, atol=1e-5)
