"""Greedy decoding of several compressed caches of one prompt in a single batch.

After one prefill, every (method, budget) pair gets its own compressed copy of the cache. Copies
whose layers have identical shapes (same budget, no ragged heads) can be stacked along the batch
dimension and decoded together: one forward pass per step serves every row.

Batching changes the shapes the matrix multiplications run with, so the floating-point
reduction order (and the rounding) can differ from decoding each row alone. In float32 most
outputs of a linear layer differ in their last bits (about 1e-6 relative), which changed no greedy
token in the tests. In bfloat16 each difference is a whole rounding step (about 0.4%), and greedy
tokens changed. So in bfloat16 the linear layers whose product for one row changes with the batch
size (`batch_dependent_linears`) run row by row inside a batch. `tests/test_batched_decode.py`
checks the token ids against `capkv.generate` for the dtypes and models it covers.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import time
from contextlib import ExitStack

import torch
from torch import nn
from torch.nn import functional
from transformers import DynamicCache

from capkv.decoding import Generation, _forward_step, generate
from capkv.ragged import RaggedLayer, needs_ragged_attention, ragged_attention


# Dtypes whose batched tokens matched decoding one cache at a time in tests/test_batched_decode.py
# (CPU, torch 2.13), bfloat16 with its batch-dependent linear layers run row by row.
# NOTE: no GPU was checked. Nor was float16, so float16 caches are decoded one at a time.
EXACT_DTYPES = frozenset({torch.float32, torch.bfloat16})

# Dtypes whose batch-dependent linear layers run row by row, and the probe that finds them. In
# torch 2.13 on an AMD EPYC CPU, oneDNN's bfloat16 product of one row rounded about 1 output in
# 4,000 differently from the same row in a batch for layers of 1,152 to 2,048 inputs. It rounded
# none differently for 256 to 1,024 inputs.
_ROW_BY_ROW_DTYPES = frozenset({torch.bfloat16, torch.float16})
_PROBE_BATCH_SIZES = (2, 3, 4, 8, 16)
_PROBE_OUTPUTS = 1 << 18
_PROBE_MAX_ROWS = 256
_batch_dependence: dict[tuple, bool] = {}


def _changes_with_batch(layer: nn.Linear) -> bool:
    """Return True if a row's output of `layer` differs between a one-row product and some batched product.

    Random rows go through the layer's own weight once each and then in batches of every size in
    `_PROBE_BATCH_SIZES`, until about `_PROBE_OUTPUTS` outputs are compared per batch size.
    """
    weight = layer.weight
    rows = max(max(_PROBE_BATCH_SIZES), min(_PROBE_MAX_ROWS, math.ceil(_PROBE_OUTPUTS / weight.shape[0])))
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(rows, weight.shape[1], generator=generator).to(weight.device, weight.dtype)
    with torch.no_grad():
        alone = _linear_row_by_row(layer, inputs)
        for size in _PROBE_BATCH_SIZES:
            usable = rows - rows % size
            batched = torch.cat([functional.linear(inputs[start:start + size], weight, layer.bias)
                                 for start in range(0, usable, size)])
            if not torch.equal(batched, alone[:usable]):
                return True
    return False


def batch_dependent_linears(model: nn.Module) -> list[nn.Linear]:
    """Return the 16-bit linear layers of `model` whose output for one row changes when other rows share the batch.

    The probe runs once per weight shape, dtype, device and torch thread count in a process, since
    the kernel that torch picks depends on those. Layers in other dtypes are not probed.
    """
    found = []
    for module in model.modules():
        if not isinstance(module, nn.Linear) or module.weight.dtype not in _ROW_BY_ROW_DTYPES:
            continue
        weight = module.weight
        key = (tuple(weight.shape), weight.dtype, str(weight.device), module.bias is not None,
               torch.get_num_threads())
        if key not in _batch_dependence:
            _batch_dependence[key] = _changes_with_batch(module)
        if _batch_dependence[key]:
            found.append(module)
    return found


def _linear_row_by_row(layer: nn.Linear, inputs: torch.Tensor) -> torch.Tensor:
    rows = [functional.linear(inputs[row:row + 1], layer.weight, layer.bias) for row in range(inputs.shape[0])]
    return torch.cat(rows)


@contextlib.contextmanager
def _rows_apart(layers: list[nn.Linear]):
    """Run each layer in `layers` on one batch row at a time inside the context (this model instance only)."""
    for layer in layers:
        layer.forward = functools.partial(_linear_row_by_row, layer)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward


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
    exact: bool = True,
) -> list[Generation]:
    """Greedy decoding of several caches of the same prompt in one batch; return one Generation per cache.

    `caches` contains CompressedCache objects or transformers caches, all with the shapes
    `group_by_shape` puts in one group. They are stacked into a new cache, so the inputs are not
    extended. `suffix_ids` (1, n) are fed to every row first; otherwise `first_logits`, (1, vocab)
    from the shared prefill or (rows, vocab), give the first token. Each row stops at its own stop
    token or after `max_new_tokens`. Rows that stopped are still fed their last token until every
    row has stopped, and their later outputs are dropped. With `exact`, the linear layers that
    `batch_dependent_linears` finds run row by row. `Generation.seconds` is the batch's wall time
    divided by the number of rows.
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
        if exact:
            stack.enter_context(_rows_apart(batch_dependent_linears(model)))
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
                                 first_logits=first_logits, suffix_ids=suffix_ids, exact=exact_only)
        for position, generation in zip(group, batch):
            generations[position] = generation
    return generations


__all__ = [
    "EXACT_DTYPES", "batch_dependent_linears", "batch_key", "generate_batched", "generate_grouped", "group_by_shape",
    "stack_caches",
]
