"""Caches whose heads or layers hold different numbers of tokens, and attention over them.

`RaggedLayer` stores the tokens of each head of a layer one head after the other, without padding,
so a compressed layer's bytes are the sum of the per-head budgets. Tokens appended while decoding
go after each head's kept tokens. Attention reads each head's tokens as one contiguous slice, so
no padded copy of the layer is built while decoding.

transformers builds one attention mask per attention type from one layer's length, which is
wrong for layers of different lengths (PyramidKV) or heads of different lengths (Ada-KV). Inside
the `ragged_attention(model, cache)` context the model's attention implementation is switched to
`capkv_ragged`, an extra entry registered in transformers' `AttentionInterface`, which builds the
causal (and sliding-window) mask of each layer from that layer's own storage. The previous
implementation is restored on exit; no existing attention function is changed.
"""

from __future__ import annotations

import copy
import itertools
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
from torch import nn
from torch.nn import functional
from transformers import AttentionInterface
from transformers.cache_utils import CacheLayerMixin

RAGGED_ATTENTION = "capkv_ragged"

_active_cache: ContextVar[Any] = ContextVar("capkv_ragged_cache", default=None)


class RaggedLayer(CacheLayerMixin):
    """A cache layer whose KV heads keep different numbers of prompt tokens, stored without padding.

    `flat_keys` / `flat_values` (slots, head_dim) hold the heads in row-major (batch, head) order.
    Head i starts at slot `starts[i]` with its `head_lengths` (batch, num_kv_heads) kept prompt
    tokens in their original order, followed by the `new_tokens` tokens decoded since. A compressed
    layer has no free slots; `with_room(n)` returns a copy with n free slots after every head, which
    decoding fills in place. Appending to a full layer copies it into a layout with just enough slots.
    """

    is_sliding = False
    is_compileable = False

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, keep_mask: torch.Tensor):
        super().__init__()
        self.head_lengths = keep_mask.sum(dim=-1)  # (batch, num_kv_heads)
        self.flat_keys = keys[keep_mask].contiguous()  # row-major order: head by head, positions ascending
        self.flat_values = values[keep_mask].contiguous()
        self.new_tokens = 0
        self._lengths = self.head_lengths.flatten().tolist()
        self._capacity = list(self._lengths)  # slots of each head, its tokens included
        self.starts = [0, *itertools.accumulate(self._capacity)][:-1]
        self.dtype, self.device = keys.dtype, keys.device
        self.is_initialized = True

    def __copy__(self) -> RaggedLayer:
        """Return a copy that reads this layer's storage and copies it at its first append, so that
        neither layer writes into slots the other uses."""
        duplicate = object.__new__(type(self))
        duplicate.__dict__.update(self.__dict__)
        duplicate._capacity = [length + self.new_tokens for length in self._lengths]
        return duplicate

    def _relayout(self, room: int) -> None:
        """Copy the stored tokens into new storage with `room` free slots after every head."""
        used = [length + self.new_tokens for length in self._lengths]
        capacity = [count + room for count in used]
        flat_keys = self.flat_keys.new_empty(sum(capacity), self.flat_keys.shape[-1])
        flat_values = self.flat_values.new_empty(sum(capacity), self.flat_values.shape[-1])
        destination = 0
        for start, count, slots in zip(self.starts, used, capacity):
            flat_keys[destination:destination + count] = self.flat_keys[start:start + count]
            flat_values[destination:destination + count] = self.flat_values[start:start + count]
            destination += slots
        self.flat_keys, self.flat_values = flat_keys, flat_values
        self._capacity = capacity
        self.starts = [0, *itertools.accumulate(capacity)][:-1]

    def with_room(self, room: int) -> RaggedLayer:
        """Return a copy with `room` free slots after every head; this layer is not changed."""
        duplicate = copy.copy(self)
        duplicate._relayout(room)
        return duplicate

    def head_keys_values(self, head: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values (tokens, head_dim) of head `head` in row-major (batch, head) order: slices of the storage."""
        start = self.starts[head]
        end = start + self._lengths[head] + self.new_tokens
        return self.flat_keys[start:end], self.flat_values[start:end]

    @property
    def prefix_width(self) -> int:
        """Length of the padded view of the prompt part: the longest head."""
        return max(self._lengths, default=0)

    def prefix_mask(self) -> torch.Tensor:
        """Boolean (batch, num_kv_heads, prefix_width): which slots of the padded view hold a token."""
        slots = torch.arange(self.prefix_width, device=self.head_lengths.device)
        return slots < self.head_lengths[..., None]

    def key_mask(self) -> torch.Tensor:
        """Boolean (batch, num_kv_heads, prefix_width + new_tokens) over the view that `padded` returns."""
        tail = torch.ones(*self.head_lengths.shape, self.new_tokens, dtype=torch.bool, device=self.device)
        return torch.cat([self.prefix_mask(), tail], dim=-1)

    def padded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values (batch, num_kv_heads, prefix_width + new_tokens, head_dim): each head's prompt
        tokens padded with zeros to the longest head, then the decoded tokens."""
        batch, num_kv_heads = self.head_lengths.shape
        width, head_dim = self.prefix_width, self.flat_keys.shape[-1]
        keys = self.flat_keys.new_zeros(batch, num_kv_heads, width + self.new_tokens, head_dim)
        values = self.flat_values.new_zeros(batch, num_kv_heads, width + self.new_tokens, self.flat_values.shape[-1])
        for head, length in enumerate(self._lengths):
            row, column = divmod(head, num_kv_heads)
            head_keys, head_values = self.head_keys_values(head)
            keys[row, column, :length] = head_keys[:length]
            values[row, column, :length] = head_values[:length]
            keys[row, column, width:] = head_keys[length:]
            values[row, column, width:] = head_values[length:]
        return keys, values

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        return None  # built from an existing cache, never empty

    def update(self, key_states, value_states, cache_kwargs=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Append (batch, num_kv_heads, q_len, head_dim) tokens after each head's tokens.

        Returns the arguments: attention reads each head through `head_keys_values`.
        """
        q_len = key_states.shape[2]
        if any(length + self.new_tokens + q_len > slots for length, slots in zip(self._lengths, self._capacity)):
            self._relayout(q_len)
        positions = torch.tensor(
            [start + length + self.new_tokens for start, length in zip(self.starts, self._lengths)], device=self.device
        )[:, None] + torch.arange(q_len, device=self.device)  # (batch · num_kv_heads, q_len)
        self.flat_keys[positions.flatten()] = key_states.reshape(-1, key_states.shape[-1])
        self.flat_values[positions.flatten()] = value_states.reshape(-1, value_states.shape[-1])
        self.new_tokens += q_len
        return key_states, value_states

    def get_seq_length(self) -> int:
        return self.prefix_width + self.new_tokens

    def get_mask_sizes(self, cache_position: torch.Tensor) -> tuple[int, int]:
        return self.get_seq_length() + cache_position.shape[0], 0

    def get_max_cache_shape(self) -> int:
        return -1

    def kept_tokens(self) -> torch.Tensor:
        """Tokens stored per head, (batch, num_kv_heads)."""
        return self.head_lengths + self.new_tokens

    def stored_tensors(self) -> list[torch.Tensor]:
        """Return every tensor this layer keeps alive between steps, free slots included, for byte accounting."""
        return [self.flat_keys, self.flat_values, self.head_lengths]


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
    """Softmax attention with a per-head mask built from the layer's own storage (see `attend_ragged`).

    The model's `attention_mask` is ignored, so batches with padding are not supported.
    """
    layer = _active_cache.get().layers[module.layer_idx]
    return attend_ragged(module, query, key, value, layer, scaling=scaling, **kwargs)


def attend_ragged(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    layer,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention over `layer`'s keys with a per-head mask built from its storage.

    query: (batch, num_heads, q_len, head_dim); key/value: (batch, num_kv_heads, kv_len, head_dim)
    as `layer.update` returned them, the last q_len of which are the new tokens (a `RaggedLayer`'s
    heads are read from the layer). Returns the output (batch, q_len, num_heads, head_dim) and,
    except for a `RaggedLayer`'s heads, the attention weights (batch, num_heads, q_len, kv_len).
    """
    batch, num_heads, q_len, head_dim = query.shape
    scaling = head_dim**-0.5 if scaling is None else scaling
    softcap = kwargs.get("softcap") or getattr(module, "attn_logit_softcapping", None)
    if isinstance(layer, RaggedLayer):
        if not kwargs.get("sliding_window"):
            return _attend_heads(query, layer, scaling, softcap), None
        key, value = layer.padded()
    num_kv_heads, kv_len = key.shape[1], key.shape[2]
    group = num_heads // num_kv_heads

    allowed = _allowed_keys(layer, batch, num_kv_heads, q_len, kv_len, kwargs.get("sliding_window"), query.device)

    # The query heads sharing a KV head become rows of one matrix product per KV head. Broadcasting
    # the keys over a group dimension took ~1.7x as long (SmolLM2 shapes, bf16, torch 2.13, AMD EPYC CPU).
    rows = query.reshape(batch, num_kv_heads, group * q_len, head_dim)
    logits = torch.matmul(rows, key.transpose(2, 3)) * scaling  # (batch, kv, group · q_len, kv_len)
    logits = logits.view(batch, num_kv_heads, group, q_len, kv_len)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    logits = logits.masked_fill(~allowed[:, :, None], float("-inf"))
    weights = logits.softmax(dim=-1, dtype=torch.float32).to(query.dtype)
    output = torch.matmul(weights.view(batch, num_kv_heads, group * q_len, kv_len), value)
    output = output.view(batch, num_heads, q_len, head_dim).transpose(1, 2).contiguous()
    return output, weights.view(batch, num_heads, q_len, kv_len)


def _attend_heads(query: torch.Tensor, layer: RaggedLayer, scaling: float, softcap: float | None) -> torch.Tensor:
    """Attention of each KV head's query group over that head's own tokens; returns (batch, q_len, num_heads, head_dim).

    The last q_len tokens of every head are the new ones, causal among themselves. Each head goes
    through SDPA: head lengths change at every step, and a bfloat16 matrix product of a new shape
    took about 1 ms on the CPU against 24 us for SDPA (torch 2.13, oneDNN builds a kernel per shape).
    """
    batch, num_heads, q_len, head_dim = query.shape
    num_kv_heads = layer.head_lengths.shape[1]
    group = num_heads // num_kv_heads
    output = query.new_empty(batch, q_len, num_heads, head_dim)
    for head in range(batch * num_kv_heads):
        row, kv_head = divmod(head, num_kv_heads)
        keys, values = layer.head_keys_values(head)  # (tokens, head_dim)
        heads = slice(kv_head * group, (kv_head + 1) * group)
        rows = query[row:row + 1, heads]  # (1, group, q_len, head_dim)
        if softcap:
            attended = _softcapped_attention(rows[0], keys, values, scaling, softcap)
        else:
            mask = None
            if q_len > 1:  # every kept token, then causal among the new ones
                mask = torch.ones(q_len, keys.shape[0], dtype=torch.bool, device=query.device)
                mask[:, -q_len:] = torch.ones(q_len, q_len, dtype=torch.bool, device=query.device).tril()
            attended = functional.scaled_dot_product_attention(
                rows, keys[None, None], values[None, None], attn_mask=mask, scale=scaling, enable_gqa=True
            )[0]
        output[row, :, heads] = attended.transpose(0, 1)
    return output


def _softcapped_attention(rows, keys, values, scaling: float, softcap: float) -> torch.Tensor:
    """Eager attention of (group, q_len, head_dim) queries over one head's (tokens, head_dim) keys with tanh capping."""
    group, q_len, head_dim = rows.shape
    logits = torch.matmul(rows.reshape(group * q_len, head_dim), keys.T) * scaling
    logits = torch.tanh(logits / softcap) * softcap
    if q_len > 1:
        future = torch.ones(q_len, q_len, dtype=torch.bool, device=rows.device).triu(1)
        logits.view(group, q_len, -1)[:, :, -q_len:].masked_fill_(future, float("-inf"))
    weights = logits.softmax(dim=-1, dtype=torch.float32).to(rows.dtype)
    return torch.matmul(weights, values).view(group, q_len, head_dim)


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
