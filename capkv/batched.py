"""Greedy decoding of several compressed caches of one prompt in a single batch.

After one prefill, every (method, budget) pair gets its own compressed copy of the cache. Copies
whose layers have identical shapes (same budget, no ragged heads) can be stacked along the batch
dimension and decoded together: one forward pass per step serves every row.

Batching changes the shapes the matrix multiplications run with, so the floating-point
reduction order (and the rounding) can differ from decoding each row alone. `tests/test_batched_decode.py`
checks the token ids against `capkv.generate` for the dtypes and models it covers; greedy argmax can
still flip where two logits are nearly tied.
"""

from __future__ import annotations

import copy
import time
from contextlib import ExitStack

import torch
from torch import nn
from transformers import DynamicCache

from capkv.decoding import Generation, _forward_step, generate
from capkv.ragged import RaggedLayer, needs_ragged_attention, ragged_attention


# Dtypes whose batched tokens matched decoding one cache at a time in tests/test_batched_decode.py
# (CPU, torch 2.13). In bfloat16, oneDNN rounds some outputs of a one-row matrix product
# differently from the same row in a batch (first seen in SmolLM2's down projection, 1,536
# inputs). SmolLM2's greedy tokens then differed for 4 of 9 methods on a 2k-token needle prompt.
# NOTE: float32 on GPU was not checked.
EXACT_DTYPES = frozenset({torch.float32})


def _cache_of(item) -> DynamicCache:
    """Return the transformers cache of a `CompressedCache`, or the argument itself when it is a cache."""
    return getattr(item, "cache", item)


def batch_key(item) -> tuple | None:
    """Return a key equal for caches that can be stacked into one batch, or None if this one cannot.

    Caches with ragged layers (heads of different lengths) or a batch size other than 1 return None.
    """
    cache = _cache_of(item)
    shapes = []
    for layer in cache.layers:
        if isinstance(layer, RaggedLayer) or getattr(layer, "keys", None) is None:
            return None
        if layer.keys.shape[0] != 1:
            return None
        shapes.append((type(layer).__name__, tuple(layer.keys.shape), tuple(layer.values.shape)))
    first = cache.layers[0].keys
    return (first.dtype, str(first.device), tuple(shapes))


def group_by_shape(items: list, exact_only: bool = True) -> list[list[int]]:
    """Group positions of `items` (CompressedCache or caches) whose caches can be decoded in one batch.

    Groups keep the input order, both of their members and of their first members. A cache that
    cannot be batched (see `batch_key`) gets a group of its own. With `exact_only`, caches in a
    dtype outside `EXACT_DTYPES` also get groups of their own, so every token matches `capkv.generate`.
    """
    groups: dict[tuple, list[int]] = {}
    ordered: list[list[int]] = []
    for position, item in enumerate(items):
        key = batch_key(item)
        if key is not None and exact_only and key[0] not in EXACT_DTYPES:
            key = None
        if key is None:
            ordered.append([position])
            continue
        if key not in groups:
            groups[key] = []
            ordered.append(groups[key])
        groups[key].append(position)
    return ordered


def stack_caches(items: list) -> DynamicCache:
    """Return a new cache whose batch row i is the cache of `items[i]`; the inputs are not changed."""
    caches = [_cache_of(item) for item in items]
    keys = {batch_key(cache) for cache in caches}
    if None in keys or len(keys) != 1:
        raise ValueError(
            f"cannot stack {len(caches)} caches: every cache needs batch size 1, no ragged layers and "
            "the same per-layer shapes, dtype and device; group them with capkv.batched.group_by_shape"
        )
    stacked = copy.copy(caches[0])
    stacked.layers = []
    for layer_index, layer in enumerate(caches[0].layers):
        # Sliding-window layers are never compressed, so their counters are the same in every cache.
        merged = copy.copy(layer)
        merged.keys = torch.cat([cache.layers[layer_index].keys for cache in caches], dim=0)
        merged.values = torch.cat([cache.layers[layer_index].values for cache in caches], dim=0)
        stacked.layers.append(merged)
    return stacked


def generate_batched(
    model: nn.Module,
    caches: list,
    next_position: int,
    max_new_tokens: int,
    stop_token_ids: set[int],
    first_logits: torch.Tensor | None = None,
    suffix_ids: torch.Tensor | None = None,
) -> list[Generation]:
    """Greedy decoding of several caches of the same prompt in one batch; return one Generation per cache.

    `caches` contains CompressedCache objects or transformers caches, all with the shapes
    `group_by_shape` puts in one group. They are stacked into a new cache, so the inputs are not
    extended. `suffix_ids` (1, n) are fed to every row first; otherwise `first_logits`, (1, vocab)
    from the shared prefill or (rows, vocab), give the first token. Each row stops at its own stop
    token or after `max_new_tokens`. Rows that stopped are still fed their last token until every
    row has stopped, and their later outputs are dropped. `Generation.seconds` is the batch's wall
    time divided by the number of rows.
    """
    started = time.perf_counter()
    rows = len(caches)
    if rows == 0:
        return []
    device = next(model.parameters()).device
    stacked = stack_caches(caches)
    position = next_position
    tokens: list[list[int]] = [[] for _ in range(rows)]
    finished = [False] * rows

    with torch.no_grad(), ExitStack() as stack:
        if needs_ragged_attention(stacked):  # layers of different lengths (PyramidKV) need their own masks
            stack.enter_context(ragged_attention(model, stacked))
        if suffix_ids is not None and suffix_ids.shape[1] > 0:
            logits = _forward_step(model, stacked, suffix_ids.to(device).expand(rows, -1), position)
            position += suffix_ids.shape[1]
        elif first_logits is not None:
            logits = first_logits.expand(rows, -1) if first_logits.shape[0] == 1 else first_logits
        else:
            raise ValueError("generate_batched needs suffix_ids or first_logits to produce the first token")

        for step in range(max_new_tokens):
            next_tokens = logits.argmax(dim=-1)  # (rows,)
            for row in range(rows):
                if finished[row]:
                    continue
                token = int(next_tokens[row])
                tokens[row].append(token)
                finished[row] = token in stop_token_ids
            if all(finished) or step == max_new_tokens - 1:
                break
            logits = _forward_step(model, stacked, next_tokens[:, None].to(device), position)
            position += 1

    share = (time.perf_counter() - started) / rows
    return [Generation(token_ids=row_tokens, seconds=share) for row_tokens in tokens]


def generate_grouped(
    model: nn.Module,
    caches: list,
    next_position: int,
    max_new_tokens: int,
    stop_token_ids: set[int],
    first_logits: torch.Tensor | None = None,
    suffix_ids: torch.Tensor | None = None,
    exact_only: bool = True,
) -> list[Generation]:
    """Greedy decoding of every cache, batching those `group_by_shape` groups; return Generations in input order.

    A group of one is decoded by `capkv.generate` on a shallow copy of its cache, so no input is
    extended in either case.
    """
    generations: list[Generation | None] = [None] * len(caches)
    for group in group_by_shape(caches, exact_only=exact_only):
        if len(group) == 1:
            cache = _cache_of(caches[group[0]])
            duplicate = copy.copy(cache)
            duplicate.layers = [copy.copy(layer) for layer in cache.layers]
            generations[group[0]] = generate(model, duplicate, next_position, max_new_tokens, stop_token_ids,
                                             first_logits=first_logits, suffix_ids=suffix_ids)
            continue
        batch = generate_batched(model, [caches[i] for i in group], next_position, max_new_tokens, stop_token_ids,
                                 first_logits=first_logits, suffix_ids=suffix_ids)
        for position, generation in zip(group, batch):
            generations[position] = generation
    return generations


__all__ = ["EXACT_DTYPES", "batch_key", "generate_batched", "generate_grouped", "group_by_shape", "stack_caches"]
