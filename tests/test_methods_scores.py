"""Each method's scores and kept sets on hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

from capkv import build_method
from capkv.capture import LayerCapture
from capkv.methods.base import LayerInputs
from capkv.methods.capkv import capacity_weights, relevance
from capkv.methods.capkv_greedy import greedy_log_det
from capkv.methods.pyramidkv import pyramid_budgets
from capkv.methods.rope import mean_future_rotation


def _layer(keys: torch.Tensor, values: torch.Tensor | None = None, **capture) -> LayerInputs:
    values = torch.randn(*keys.shape, generator=torch.Generator().manual_seed(0)) if values is None else values
    return LayerInputs(0, 1, keys, values, LayerCapture(**capture))


def test_knorm_keeps_lowest_norms():
    keys = torch.zeros(1, 1, 5, 2)
    keys[0, 0, :, 0] = torch.tensor([5.0, 1.0, 4.0, 2.0, 3.0])
    assert build_method("knorm").select(_layer(keys), 2)[0, 0].tolist() == [1, 3]


def test_keydiff_scores_are_negative_cosine_to_mean_direction():
    keys = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [0.0, 1.0]])[None, None]
    scores = build_method("keydiff").score(_layer(keys))[0, 0]
    anchor_norm = math.sqrt(0.75**2 + 0.25**2)  # mean of normalised keys is (0.75, 0.25)
    assert torch.allclose(scores, torch.tensor([-0.75, -0.75, -0.75, -0.25]) / anchor_norm)
    assert build_method("keydiff").select(_layer(keys), 1)[0, 0].tolist() == [3]


def test_streaming_llm_keeps_sinks_and_recent():
    keys = torch.randn(1, 2, 20, 4)
    kept = build_method("streaming_llm", num_sinks=2).select(_layer(keys), 6)
    assert kept[0, 1].tolist() == [0, 1, 16, 17, 18, 19]


def test_h2o_normalised_scores_and_recent_window():
    # Two query heads share one KV head; 6 tokens seen by 6, 5, ..., 1 queries.
    sums = torch.tensor([[[3.0, 0.5, 2.0, 0.2, 1.0, 1.0], [3.0, 1.5, 2.0, 0.2, 1.0, 1.0]]])
    counts = torch.tensor([6.0, 5.0, 4.0, 3.0, 2.0, 1.0])
    layer = _layer(torch.randn(1, 1, 6, 4), attention_sums=sums, attention_counts=counts)
    method = build_method("h2o")

    scores = method.score(layer)[0, 0]
    expected = torch.tensor([3.0 / 6, 1.0 / 5, 2.0 / 4, 0.2 / 3, 1.0 / 2, 1.0])
    assert torch.allclose(scores, expected)
    # Budget 4: the 2 most recent tokens, then the two best of the rest (0.5 at 0 and 2).
    assert method.select(layer, 4)[0, 0].tolist() == [0, 2, 4, 5]


def test_tova_averages_last_query_over_all_heads():
    keys = torch.eye(4)[None, None].repeat(1, 2, 1, 1) * 2.0  # token i's key is 2·e_i in both KV heads
    queries = torch.zeros(1, 4, 1, 4)
    queries[0, 0, 0, 0] = 3.0  # head 0 looks at token 0
    queries[0, 1, 0, 1] = 1.0
    queries[0, 2, 0, 1] = 2.0  # heads 1-3 look at token 1, more weakly each
    queries[0, 3, 0, 1] = 0.5
    layer = _layer(keys, window_queries=queries, scaling=1.0)

    scores = build_method("tova").score(layer)
    logits = torch.einsum("hd,td->ht", queries[0, :, 0], keys[0, 0])
    expected = logits.softmax(dim=-1).mean(dim=0)[:3]
    assert torch.allclose(scores[0, 0, :3], expected)
    assert torch.equal(scores[0, 0], scores[0, 1])  # one token set per layer
    assert build_method("tova").select(layer, 2)[0, 0].tolist() == [1, 3]


def test_random_is_reproducible_per_seed_and_layer():
    keys = torch.randn(1, 2, 50, 4)
    first = build_method("random", seed=1).select(_layer(keys), 10)
    assert torch.equal(first, build_method("random", seed=1).select(_layer(keys), 10))
    assert not torch.equal(first, build_method("random", seed=2).select(_layer(keys), 10))
    other_layer = LayerInputs(1, 2, keys, keys, LayerCapture())
    assert not torch.equal(first, build_method("random", seed=1).select(other_layer, 10))


def _rotary(head_dim: int = 8) -> LlamaRotaryEmbedding:
    config = LlamaConfig(hidden_size=32, num_attention_heads=4, head_dim=head_dim, max_position_embeddings=4096)
    return LlamaRotaryEmbedding(config)


def test_mean_future_rotation_equals_average_of_rotated_vectors():
    rotary, head_dim = _rotary(), 8
    vector = torch.randn(head_dim, generator=torch.Generator().manual_seed(2))
    positions = torch.arange(30, 40)
    cos, sin = rotary(vector[None, None], positions[None])
    rotated, _ = apply_rotary_pos_emb(vector.expand(1, 1, 10, head_dim), vector.expand(1, 1, 10, head_dim), cos, sin)

    rotation = mean_future_rotation(rotary, None, 30, 10, head_dim, torch.device("cpu"))
    assert torch.allclose(rotation @ vector, rotated[0, 0].mean(dim=0), atol=1e-6)


def test_expected_attention_matches_gaussian_formula():
    generator = torch.Generator().manual_seed(3)
    head_dim, seq_len, sinks = 8, 12, 2
    keys = torch.randn(1, 1, seq_len, head_dim, generator=generator)
    values = torch.randn(1, 1, seq_len, head_dim, generator=generator)
    mean = torch.randn(1, 2, head_dim, generator=generator)  # two query heads, one KV head
    factor = torch.randn(1, 2, head_dim, head_dim, generator=generator) * 0.3
    covariance = factor @ factor.transpose(-1, -2)
    rotary = _rotary()
    layer = LayerInputs(0, 1, keys, values, LayerCapture(prerope_mean=mean, prerope_m2=covariance * 10, query_count=10),
                        rotary_emb=rotary)

    scores = build_method("expected_attention", num_sinks=sinks, future_positions=64).score(layer)[0, 0]

    rotation = mean_future_rotation(rotary, None, seq_len, 64, head_dim, torch.device("cpu"))
    expected = torch.zeros(seq_len - sinks)
    for head in range(2):
        mu, sigma = rotation @ mean[0, head], rotation @ covariance[0, head] @ rotation.T
        exponent = torch.stack(
            [mu @ k / math.sqrt(head_dim) + k @ sigma @ k / (2 * head_dim) for k in keys[0, 0, sinks:]]
        )
        expected += exponent.softmax(dim=0) / 2
    expected *= values[0, 0, sinks:].norm(dim=-1)
    assert torch.allclose(scores[sinks:], expected, atol=1e-6)


def _brute_force_greedy(values: torch.Tensor, weights: torch.Tensor, count: int) -> list[int]:
    picked: list[int] = []
    for _ in range(count):
        best, best_gain = None, -math.inf
        for candidate in range(values.shape[0]):
            if candidate in picked:
                continue
            chosen = picked + [candidate]
            gram = torch.eye(values.shape[1], dtype=torch.float64) + torch.einsum(
                "nd,n,ne->de", values[chosen], weights[chosen], values[chosen])
            if torch.logdet(gram) > best_gain:
                best, best_gain = candidate, torch.logdet(gram)
        picked.append(best)
    return picked


def test_greedy_log_det_matches_brute_force():
    generator = torch.Generator().manual_seed(4)
    values = torch.randn(1, 2, 15, 3, generator=generator, dtype=torch.float64)
    weights = torch.rand(1, 2, 15, generator=generator, dtype=torch.float64) + 0.2
    picks = greedy_log_det(values, weights, 6)
    for head in range(2):
        assert picks[0, head].tolist() == _brute_force_greedy(values[0, head], weights[0, head], 6)


def test_greedy_skips_a_duplicate_of_a_kept_direction():
    values = torch.tensor([[3.0, 0.0], [3.0, 0.0], [0.0, 1.0]], dtype=torch.float64)[None, None]
    weights = torch.ones(1, 1, 3, dtype=torch.float64)
    # Alone, each copy of (3, 0) gains log 10 > log 2; once one is kept, the other gains log(1 + 9/10) < log 2.
    assert greedy_log_det(values, weights, 2)[0, 0].tolist() == [0, 2]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_random_inputs_match_brute_force(seed, dtype):
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(2, 3, 24, 4, generator=generator, dtype=torch.float64)
    weights = torch.rand(2, 3, 24, generator=generator, dtype=torch.float64) * 3
    values[1, 2, 7] = values[1, 2, 3]  # an exact duplicate: ties go to the lower index
    weights[1, 2, 7] = weights[1, 2, 3]
    picks = greedy_log_det(values.to(dtype), weights.to(dtype), 24)  # every token, past d = 4
    for batch in range(2):
        for head in range(3):
            reference = _brute_force_greedy(values[batch, head], weights[batch, head], 24)
            assert picks[batch, head].tolist() == reference


def test_greedy_zero_weights_match_brute_force():
    generator = torch.Generator().manual_seed(5)
    values = torch.randn(1, 2, 40, 3, generator=generator, dtype=torch.float64)
    weights = torch.rand(1, 2, 40, generator=generator, dtype=torch.float64) + 0.1
    weights[0, 0, 6:] = 0.0  # 6 relevant tokens, then only ties at gain 0
    weights[0, 1, ::2] = 0.0
    picks = greedy_log_det(values, weights, 40)
    for head in range(2):
        assert picks[0, head].tolist() == _brute_force_greedy(values[0, head], weights[0, head], 40)
    assert picks[0, 0, 6:].tolist() == list(range(6, 40))


def test_greedy_count_edge_cases():
    values, weights = torch.randn(1, 2, 5, 3), torch.rand(1, 2, 5)
    assert greedy_log_det(values, weights, 0).shape == (1, 2, 0)
    assert sorted(greedy_log_det(values, weights, 9)[0, 1].tolist()) == [0, 1, 2, 3, 4]


def test_capkv_greedy_keeps_sinks_and_budget():
    keys, values = torch.randn(1, 2, 30, 4), torch.randn(1, 2, 30, 4)
    layer = _layer(keys, values, query_sum=torch.randn(1, 4, 4), query_count=1)
    kept = build_method("capkv-greedy").select(layer, 10)
    weights = capacity_weights(relevance(layer)[..., 4:], 5.0)
    expected = greedy_log_det(values[:, :, 4:].float(), weights, 6) + 4
    assert kept.shape == (1, 2, 10)
    assert kept[0, 0, :4].tolist() == [0, 1, 2, 3]
    assert kept[0, 1, 4:].tolist() == sorted(expected[0, 1].tolist())


def test_pyramid_budgets_hand_computed():
    # smallest 40/2 = 20, largest 60, step 40/3: 60, 46.67, 33.33, 20 -> the leftover token goes to 46.67.
    assert pyramid_budgets(40, 1000, 4, beta=2.0, floor=1) == [60, 47, 33, 20]
    assert pyramid_budgets(40, 50, 2, beta=2.0, floor=1) == [50, 30]  # capped at the prompt length
    assert pyramid_budgets(40, 1000, 4, beta=20.0, floor=33) == [40, 40, 40, 40]  # 2 < floor: uniform


@pytest.mark.parametrize("budget,layers,beta", [(100, 30, 20.0), (257, 24, 20.0), (64, 7, 3.5)])
def test_pyramid_total_and_slope(budget, layers, beta):
    budgets = pyramid_budgets(budget, 10_000, layers, beta, floor=1)
    assert sum(budgets) == budget * layers
    assert all(earlier >= later for earlier, later in zip(budgets, budgets[1:]))
    assert budgets[-1] == round(budget / beta)


def test_snapkv_averages_query_heads_of_a_group():
    generator = torch.Generator().manual_seed(5)
    keys = torch.randn(1, 1, 40, 8, generator=generator)
    queries = torch.randn(1, 2, 8, 8, generator=generator)
    method = build_method("snapkv", window_size=8)

    grouped = method.score(_layer(keys, window_queries=queries, scaling=8**-0.5))
    per_head = [method.score(_layer(keys, window_queries=queries[:, [h]], scaling=8**-0.5)) for h in range(2)]
    assert torch.allclose(grouped, (per_head[0] + per_head[1]) / 2)
