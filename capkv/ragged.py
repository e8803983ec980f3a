"""Caches whose heads or layers hold different numbers of tokens, and attention over them.

`RaggedLayer` stores the kept tokens of all heads of a layer flattened, without padding, so its
bytes are the sum of the per-head budgets. Tokens appended while decoding go to a dense tail
shared by all heads. For attention the layer builds a padded view (up to the longest head) one
layer at a time, and `ragged_attention` computes softmax attention with a per-head mask.

transformers builds one attention mask per attention type from one layer's length, which is
wrong for layers of different lengths (PyramidKV) or heads of different lengths (Ada-KV). Inside
the `ragged_attention(model, cache)` context the model's attention implementation is switched to
`capkv_ragged`, an extra entry registered in transformers' `AttentionInterface`, which builds the
causal (and sliding-window) mask of each layer from that layer's own storage. The previous
implementation is restored on exit; no existing attention function is changed.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.cache_utils import CacheLayerMixin

RAGGED_ATTENTION = "capkv_ragged"

_active_cache: ContextVar[Any] = ContextVar("capkv_ragged_cache", default=None)


class RaggedLayer(CacheLayerMixin):
    """A cache layer whose KV heads keep different numbers of prompt tokens, stored without padding.

    `flat_keys` / `flat_values` (total_kept, head_dim) store the tokens of head (b, h) in their
    original order, head after head. `head_lengths` (batch, num_kv_heads) counts the tokens of each head.
    Decoded tokens go to `tail_keys` / `tail_values` (batch, num_kv_heads, new_tokens, head_dim).
    """

    is_sliding = False
    is_compileable = False

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, keep_mask: torch.Tensor):
        super().__init__()
        batch, num_kv_heads, _, head_dim = keys.shape
        self.head_lengths = keep_mask.sum(dim=-1)  # (batch, num_kv_heads)
        self.flat_keys = keys[keep_mask].contiguous()  # row-major order: head by head, positions ascending
        self.flat_values = values[keep_mask].contiguous()
        self.tail_keys = keys.new_zeros(batch, num_kv_heads, 0, head_dim)
        self.tail_values = values.new_zeros(batch, num_kv_heads, 0, head_dim)
        self.dtype, self.device = keys.dtype, keys.device
        self.is_initialized = True

    @property
    def prefix_width(self) -> int:
        """Length of the padded view of the prompt part: the longest head."""
        return int(self.head_lengths.max()) if self.head_lengths.numel() else 0

    def prefix_mask(self) -> torch.Tensor:
        """Boolean (batch, num_kv_heads, prefix_width): which slots of the padded view hold a token."""
        slots = torch.arange(self.prefix_width, device=self.head_lengths.device)
        return slots < self.head_lengths[..., None]

    def key_mask(self) -> torch.Tensor:
        """Boolean (batch, num_kv_heads, prefix_width + tail) over the view that `update` returns."""
        tail = torch.ones(*self.head_lengths.shape, self.tail_keys.shape[2], dtype=torch.bool, device=self.device)
        return torch.cat([self.prefix_mask(), tail], dim=-1)

    def padded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values (batch, num_kv_heads, prefix_width + tail, head_dim); padding slots are zero."""
        mask = self.prefix_mask()
        shape = (*mask.shape, self.flat_keys.shape[-1])
        keys = self.flat_keys.new_zeros(shape)
        values = self.flat_values.new_zeros(shape)
        keys[mask] = self.flat_keys
        values[mask] = self.flat_values
        return torch.cat([keys, self.tail_keys], dim=2), torch.cat([values, self.tail_values], dim=2)

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        return None  # built from an existing cache, never empty

    def update(self, key_states, value_states, cache_kwargs=None) -> tuple[torch.Tensor, torch.Tensor]:
        self.tail_keys = torch.cat([self.tail_keys, key_states], dim=2)
        self.tail_values = torch.cat([self.tail_values, value_states], dim=2)
        return self.padded()

    def get_seq_length(self) -> int:
        return self.prefix_width + self.tail_keys.shape[2]

    def get_mask_sizes(self, cache_position: torch.Tensor) -> tuple[int, int]:
        return self.get_seq_length() + cache_position.shape[0], 0

    def get_max_cache_shape(self) -> int:
        return -1

    def kept_tokens(self) -> torch.Tensor:
        """Tokens stored per head, (batch, num_kv_heads)."""
        return self.head_lengths + self.tail_keys.shape[2]

    def stored_tensors(self) -> list[torch.Tensor]:
        """Return every tensor this layer keeps alive between steps, for byte accounting."""
        return [self.flat_keys, self.flat_values, self.tail_keys, self.tail_values, self.head_lengths]


def ragged_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention with a per-head mask built from the layer's own storage.

    query: (batch, num_heads, q_len, head_dim); key/value: (batch, num_kv_heads, kv_len, head_dim),
    the last q_len of which are the new tokens. The model's `attention_mask` is ignored, so
    batches with padding are not supported. Returns the output (batch, q_len, num_heads, head_dim)
    and the attention weights (batch, num_heads, q_len, kv_len).
    """
    cache = _active_cache.get()
    layer = cache.layers[module.layer_idx]
    batch, num_heads, q_len, head_dim = query.shape
    num_kv_heads, kv_len = key.shape[1], key.shape[2]
    group = num_heads // num_kv_heads
    scaling = head_dim**-0.5 if scaling is None else scaling

    allowed = _allowed_keys(layer, batch, num_kv_heads, q_len, kv_len, kwargs.get("sliding_window"), query.device)

    # The query heads sharing a KV head become rows of one matrix product per KV head. Broadcasting
    # the keys over a group dimension took ~1.7x as long (SmolLM2 shapes, bf16, torch 2.13, AMD EPYC CPU).
    rows = query.reshape(batch, num_kv_heads, group * q_len, head_dim)
    logits = torch.matmul(rows, key.transpose(2, 3)) * scaling  # (batch, kv, group · q_len, kv_len)
    logits = logits.view(batch, num_kv_heads, group, q_len, kv_len)
    softcap = kwargs.get("softcap") or getattr(module, "attn_logit_softcapping", None)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    logits = logits.masked_fill(~allowed[:, :, None], float("-inf"))
    weights = logits.softmax(dim=-1, dtype=torch.float32).to(query.dtype)
    output = torch.matmul(weights.view(batch, num_kv_heads, group * q_len, kv_len), value)
    output = output.view(batch, num_heads, q_len, head_dim).transpose(1, 2).contiguous()
    return output, weights.view(batch, num_heads, q_len, kv_len)


def _allowed_keys(
    layer, batch: int, num_kv_heads: int, q_len: int, kv_len: int, sliding_window, device
) -> torch.Tensor:
    """Return which keys each query may attend, (batch, num_kv_heads, q_len, kv_len) bool.

    A key is allowed when it is causal for the query, inside the sliding window (if any) and not padding.
    """
    ragged = isinstance(layer, RaggedLayer)
    if q_len == 1 and not sliding_window and ragged:
        return layer.key_mask()[:, :, None, :]  # a single new token may attend to every stored token

    key_index = torch.arange(kv_len, device=device)
    query_index = kv_len - q_len + torch.arange(q_len, device=device)
    allowed = key_index[None, :] <= query_index[:, None]  # (q_len, kv_len), causal among new tokens
    if sliding_window:
        allowed = allowed & (key_index[None, :] > query_index[:, None] - sliding_window)
    allowed = allowed.expand(batch, num_kv_heads, q_len, kv_len)
    if ragged:
        allowed = allowed & layer.key_mask()[:, :, None, :]
    return allowed


AttentionInterface.register(RAGGED_ATTENTION, ragged_attention_forward)


def needs_ragged_attention(cache) -> bool:
    """True when heads or layers of `cache` have seen different numbers of tokens.

    Sliding-window layers count every token they have seen, so a compressed full-attention layer
    next to them also counts: transformers would place new tokens by the sliding layer's length.
    """
    lengths = set()
    for layer in cache.layers:
        if isinstance(layer, RaggedLayer):
            return True
        lengths.add(layer.get_seq_length())
    return len(lengths) > 1


@contextmanager
def ragged_attention(model: nn.Module, cache):
    """Run the model's attention through `ragged_attention_forward` over `cache` inside the context."""
    previous = model.config._attn_implementation
    token = _active_cache.set(cache)
    model.set_attn_implementation(RAGGED_ATTENTION)
    try:
        yield
    finally:
        model.set_attn_implementation(previous)
        _active_cache.reset(token)
