"""One decoding batch for compressed caches of different shapes: each row attends over its own cache.

`capkv.batched.stack_caches` needs caches of equal shapes. Caches of one prompt compressed to
different budgets, or by Ada-KV with heads of different lengths, can still share everything in a
forward pass except the attention: the linear layers, norms and rotary embeddings treat each row
on its own. A `MixedLayer` holds, for one model layer, one part per run of batch rows: caches of
equal shapes stacked into one `ReservedLayer`, or a single cache's own layer. Inside
`mixed_attention(model, cache)` the attention runs part by part with the function and mask that
decoding the part's caches without the others would use: SDPA with transformers' causal mask, or
`capkv.ragged`'s attention for caches whose heads or layers differ in length. So every row gets
the attention output it gets alone; the linear layers are the only products shared by the rows.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.cache_utils import CacheLayerMixin
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, causal_mask_function
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from capkv.ragged import RaggedLayer, attend_ragged

MIXED_ATTENTION = "capkv_mixed"

# The attention implementation a model must use for its caches to be mixed: the dense parts are
# attended with it, so a part's rows see the same kernel and mask as when decoded alone.
MIXABLE_ATTENTION = "sdpa"

_active: ContextVar[Any] = ContextVar("capkv_mixed_cache", default=None)


@dataclass
class MixedPart:
    """Batch rows [start, stop) of a `MixedLayer` and the cache layer that contains their tokens."""

    start: int
    stop: int
    layer: CacheLayerMixin
    ragged: bool  # attended with capkv.ragged's attention, as the part's caches are when decoded alone
    keys: torch.Tensor | None = None  # what `layer.update` returned for the latest tokens
    values: torch.Tensor | None = None


class MixedLayer(CacheLayerMixin):
    """One model layer of a batch whose rows hold caches of different shapes, as consecutive parts."""

    is_sliding = False
    is_compileable = False

    def __init__(self, parts: list[MixedPart]):
        super().__init__()
        self.parts = parts
        first = parts[0].layer
        self.dtype, self.device = first.dtype, first.device
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        return None  # built from filled caches, never empty

    def update(self, key_states, value_states, cache_kwargs=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Append each part's rows of the new keys and values to the part's layer."""
        for part in self.parts:
            rows = slice(part.start, part.stop)
            part.keys, part.values = part.layer.update(key_states[rows], value_states[rows], cache_kwargs)
        # The attention reads every part's own keys; the model passes these on unread.
        return key_states, value_states

    def get_seq_length(self) -> int:
        """Return the largest length of the parts; the caller gives the new tokens their true positions."""
        return max(part.layer.get_seq_length() for part in self.parts)

    def get_mask_sizes(self, cache_position: torch.Tensor) -> tuple[int, int]:
        return self.get_seq_length() + cache_position.shape[0], 0

    def get_max_cache_shape(self) -> int:
        return -1


def can_mix(model: nn.Module, cache) -> bool:
    """Return True when `cache` can be one or more rows of a mixed batch decoded by `model`.

    The model must attend with SDPA. Every layer of the cache must have batch size 1 and no sliding
    window, and be either plain keys and values (batch, num_kv_heads, length, head_dim) or a
    `RaggedLayer`.
    """
    if model.config._attn_implementation != MIXABLE_ATTENTION:
        return False
    for layer in cache.layers:
        if getattr(layer, "is_sliding", False):
            return False
        if isinstance(layer, RaggedLayer):
            if layer.head_lengths.shape[0] != 1:
                return False
            continue
        keys = getattr(layer, "keys", None)
        if keys is None or keys.dim() != 4 or keys.shape[0] != 1:
            return False
    return True


def _dense_mask(config, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor | None:
    """Build the causal mask that transformers builds for these rows when their caches are decoded without the others."""
    q_len, kv_len = query.shape[2], keys.shape[2]
    return ALL_MASK_ATTENTION_FUNCTIONS[MIXABLE_ATTENTION](
        batch_size=query.shape[0],
        cache_position=torch.arange(kv_len - q_len, kv_len, device=query.device),
        kv_length=kv_len,
        kv_offset=0,
        mask_function=causal_mask_function,
        attention_mask=None,
        allow_is_causal_skip=True,
        dtype=query.dtype,
        config=config,
        use_vmap=False,
    )


def mixed_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Compute each part's attention over its own keys in the active mixed cache; return (batch, q_len, num_heads, head_dim).

    `key`, `value` and the model's `attention_mask` are ignored: each part brings its own keys and mask.
    """
    cache, config = _active.get()
    dense_attention = ALL_ATTENTION_FUNCTIONS[MIXABLE_ATTENTION]
    outputs = []
    for part in cache.layers[module.layer_idx].parts:
        rows = query[part.start:part.stop]
        if part.ragged:
            output, _ = attend_ragged(module, rows, part.keys, part.values, part.layer, scaling=scaling, **kwargs)
        else:
            mask = _dense_mask(config, rows, part.keys)
            output, _ = dense_attention(module, rows, part.keys, part.values, mask, dropout=dropout,
                                        scaling=scaling, **kwargs)
        outputs.append(output)
    return torch.cat(outputs), None


AttentionInterface.register(MIXED_ATTENTION, mixed_attention_forward)


@contextmanager
def mixed_attention(model: nn.Module, cache):
    """Run the model's attention through `mixed_attention_forward` over `cache` (of `MixedLayer`s) inside the context."""
    previous = model.config._attn_implementation
    if previous != MIXABLE_ATTENTION:
        raise ValueError(
            f"mixed batches need a model attending with {MIXABLE_ATTENTION!r}, not {previous!r}; "
            "capkv.batched.decoding_batches keeps the caches of such a model in batches of equal shapes"
        )
    token = _active.set((cache, model.config))
    model.set_attn_implementation(MIXED_ATTENTION)
    try:
        yield
    finally:
        model.set_attn_implementation(previous)
        _active.reset(token)


__all__ = ["MIXED_ATTENTION", "MixedLayer", "MixedPart", "can_mix", "mixed_attention", "mixed_attention_forward"]
