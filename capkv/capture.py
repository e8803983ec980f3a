"""Capture the attention queries that scorers need while the prompt is prefilled.

Forward pre-hooks on each attention module recompute the queries from the layer's input
(q_proj, the model's q-norm when it has one, then RoPE with the positions of this forward).
The hooks live only inside the `capture_queries` context, so nothing global changes.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class LayerCapture:
    """Query statistics of one attention layer over the prefilled prompt.

    `window_queries` holds the last `window_size` post-RoPE queries, shape
    (batch, num_heads, window, head_dim). `query_sum` and `query_count` give the mean post-RoPE
    query over positions >= `num_sinks`; `prerope_sum` / `prerope_sq_sum` give the pre-RoPE
    mean and second moment over the same positions.
    """

    window_queries: torch.Tensor | None = None
    query_sum: torch.Tensor | None = None
    prerope_sum: torch.Tensor | None = None
    prerope_sq_sum: torch.Tensor | None = None
    query_count: int = 0
    tokens_seen: int = 0
    scaling: float = 1.0

    @property
    def query_mean(self) -> torch.Tensor | None:
        """Mean post-RoPE query per head, shape (batch, num_heads, head_dim)."""
        if self.query_sum is None or self.query_count == 0:
            return None
        return self.query_sum / self.query_count


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """Return the self-attention module of every decoder layer, in layer order."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    return [layer.self_attn for layer in decoder.layers]


def _rotary_function(module: nn.Module):
    # Each transformers model file defines its own apply_rotary_pos_emb; use the one that
    # belongs to this attention class so partial-rotary variants stay correct.
    model_module = sys.modules[type(module).__module__]
    return model_module.apply_rotary_pos_emb


def prerope_queries(module: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    """Project hidden states to queries before RoPE, shape (batch, num_heads, q_len, head_dim)."""
    batch, q_len, _ = hidden_states.shape
    queries = module.q_proj(hidden_states).view(batch, q_len, -1, module.head_dim)
    if hasattr(module, "q_norm"):
        queries = module.q_norm(queries)
    return queries.transpose(1, 2)


def rotate_queries(module: nn.Module, queries: torch.Tensor, position_embeddings) -> torch.Tensor:
    """Apply the layer's RoPE to queries of shape (batch, num_heads, q_len, head_dim)."""
    cos, sin = position_embeddings
    rotated, _ = _rotary_function(module)(queries, queries, cos, sin)
    return rotated


@contextmanager
def capture_queries(model: nn.Module, window_size: int, num_sinks: int, second_moment: bool = False):
    """Record per-layer query statistics for every forward pass run inside the context.

    Yields the list of `LayerCapture`, one per decoder layer. Intended for one prefill forward:
    a second forward inside the same context adds to the sums and replaces the window.
    """
    modules = attention_modules(model)
    captures = [LayerCapture(scaling=float(getattr(m, "scaling", m.head_dim**-0.5))) for m in modules]
    handles = []

    def make_hook(capture: LayerCapture):
        def hook(module, args, kwargs):
            hidden_states = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            with torch.no_grad():
                queries = prerope_queries(module, hidden_states)  # (batch, num_heads, q_len, head_dim)
                rotated = rotate_queries(module, queries, kwargs["position_embeddings"])
                skip = max(0, num_sinks - capture.tokens_seen)
                _accumulate(capture, queries, rotated, skip, second_moment)
                capture.tokens_seen += queries.shape[2]
                if window_size > 0:
                    capture.window_queries = rotated[:, :, -window_size:].float()
            return None

        return hook

    for module, capture in zip(modules, captures):
        handles.append(module.register_forward_pre_hook(make_hook(capture), with_kwargs=True))
    try:
        yield captures
    finally:
        for handle in handles:
            handle.remove()


def _accumulate(capture: LayerCapture, queries, rotated, skip: int, second_moment: bool) -> None:
    counted_pre = queries[:, :, skip:].float()
    counted_rot = rotated[:, :, skip:].float()
    if counted_rot.shape[2] == 0:
        return
    rot_sum = counted_rot.sum(dim=2)  # (batch, num_heads, head_dim)
    pre_sum = counted_pre.sum(dim=2)
    capture.query_sum = rot_sum if capture.query_sum is None else capture.query_sum + rot_sum
    capture.prerope_sum = pre_sum if capture.prerope_sum is None else capture.prerope_sum + pre_sum
    if second_moment:
        sq = torch.einsum("bhti,bhtj->bhij", counted_pre, counted_pre)  # (batch, num_heads, d, d)
        capture.prerope_sq_sum = sq if capture.prerope_sq_sum is None else capture.prerope_sq_sum + sq
    capture.query_count += counted_rot.shape[2]
