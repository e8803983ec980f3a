"""Information capacity of a kept set: the quantity CapKV maximises, logged for every sample."""

from __future__ import annotations

import torch

from capkv.engine import DEFAULT_NUM_SINKS, CompressedCache, Prefill, gather_tokens
from capkv.methods.base import LayerInputs
from capkv.methods.capkv import capacity_weights, relevance, weighted_gram


def layer_capacity(prefilled: Prefill, kept_indices: torch.Tensor | None, layer_idx: int, tau: float) -> torch.Tensor:
    """½ · log det(I + Σ_{i∈S} w_i v_i v_iᵀ) per (batch, KV head) for one layer's kept set S.

    w_i = exp(τ·(⟨k_i, μ_q⟩ − max_j ⟨k_j, μ_q⟩)) over all prompt tokens (CapKV's "paper" weights),
    so the kept sets of different methods on one prefill are measured on the same scale. The
    weights are computed once per layer and τ and kept in the prefill's score memo.
    `kept_indices` (batch, num_kv_heads, kept) may pad with -1; None means every token is kept.
    """
    layer = prefilled.cache.layers[layer_idx]
    weights = _prompt_weights(prefilled, layer_idx, tau)  # (batch, num_kv_heads, seq_len)
    values = layer.values
    if kept_indices is not None:
        # Only the kept tokens enter the sum. Padding reads token 0 with weight 0.
        padding = kept_indices < 0
        positions = kept_indices.masked_fill(padding, 0)
        weights = weights.gather(-1, positions).masked_fill_(padding, 0.0)
        values = gather_tokens(values, positions)
    _, gram = weighted_gram(values, weights)  # float32
    return 0.5 * torch.linalg.slogdet(gram).logabsdet


def _prompt_weights(prefilled: Prefill, layer_idx: int, tau: float) -> torch.Tensor:
    """Return CapKV's paper-mode weights of every prompt token of one layer, memoised in the prefill."""
    key = ("capacity weights", tau, layer_idx)
    memo = prefilled.score_memo
    if key not in memo:
        layer = prefilled.cache.layers[layer_idx]
        capture = prefilled.captures[layer_idx]
        if capture.num_sinks <= DEFAULT_NUM_SINKS <= capture.max_num_sinks:  # one scale for every method's kept set
            capture = capture.excluding(DEFAULT_NUM_SINKS)
        inputs = LayerInputs(layer_idx, len(prefilled.cache.layers), layer.keys, layer.values, capture)
        memo[key] = capacity_weights(relevance(inputs), tau)
    return memo[key]


def capacity(prefilled: Prefill, compressed: CompressedCache, tau: float = 5.0) -> float:
    """Mean over full-attention layers and KV heads of the kept set's ½ · log det(I + Σ_S w_i v_i v_iᵀ)."""
    per_layer = [
        layer_capacity(prefilled, compressed.kept_indices[layer_idx], layer_idx, tau)
        for layer_idx, layer in enumerate(prefilled.cache.layers)
        if not getattr(layer, "is_sliding", False)
    ]
    return float(torch.stack(per_layer).mean())
