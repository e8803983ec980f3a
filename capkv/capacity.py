"""Information capacity of a kept set: the quantity CapKV maximises, logged for every sample."""

from __future__ import annotations

import torch

from capkv.engine import DEFAULT_NUM_SINKS, CompressedCache, Prefill, indices_to_mask
from capkv.methods.base import LayerInputs
from capkv.methods.capkv import capacity_weights, relevance


def layer_capacity(prefilled: Prefill, kept_indices: torch.Tensor | None, layer_idx: int, tau: float) -> torch.Tensor:
    """½ · log det(I + Σ_{i∈S} w_i v_i v_iᵀ) per (batch, KV head) for one layer's kept set S.

    w_i = exp(τ·(⟨k_i, μ_q⟩ − max_j ⟨k_j, μ_q⟩)) over all prompt tokens (CapKV's "paper" weights),
    so the kept sets of different methods on one prefill are measured on the same scale.
    `kept_indices` (batch, num_kv_heads, kept) may pad with -1; None means every token is kept.
    """
    layer = prefilled.cache.layers[layer_idx]
    capture = prefilled.captures[layer_idx]
    if capture.num_sinks <= DEFAULT_NUM_SINKS <= capture.max_num_sinks:  # one scale for every method's kept set
        capture = capture.excluding(DEFAULT_NUM_SINKS)
    inputs = LayerInputs(layer_idx, len(prefilled.cache.layers), layer.keys, layer.values, capture)
    weights = capacity_weights(relevance(inputs), tau)  # (batch, num_kv_heads, seq_len)
    if kept_indices is not None:
        weights = weights * indices_to_mask(kept_indices, weights.shape[-1])
    values = layer.values.float()
    identity = torch.eye(values.shape[-1], device=values.device)
    gram = torch.einsum("bhnd,bhn,bhne->bhde", values, weights, values) + identity
    return 0.5 * torch.linalg.slogdet(gram).logabsdet


def capacity(prefilled: Prefill, compressed: CompressedCache, tau: float = 5.0) -> float:
    """Mean over full-attention layers and KV heads of the kept set's ½ · log det(I + Σ_S w_i v_i v_iᵀ)."""
    per_layer = [
        layer_capacity(prefilled, compressed.kept_indices[layer_idx], layer_idx, tau)
        for layer_idx, layer in enumerate(prefilled.cache.layers)
        if not getattr(layer, "is_sliding", False)
    ]
    return float(torch.stack(per_layer).mean())
