"""Greedy decoding of several compressed caches of one prompt in a single batch.

After one prefill, every (method, budget) pair gets its own compressed copy of the cache. Copies
whose layers have identical shapes (same budget, no ragged heads) are stacked along the batch
dimension. Copies of other shapes join the same batch as parts of a mixed cache
(`capkv.mixed`), each part attended over its own keys. One forward pass per step serves every row.

Batching changes the shapes the matrix multiplications run with, so the floating-point
reduction order (and the rounding) can differ from decoding each row alone. In float32 most
outputs of a linear layer differ in their last bits (about 1e-6 relative), which changed no greedy
token in the tests. In bfloat16 each difference is a whole rounding step (about 0.4%), and greedy
tokens changed. So in bfloat16 the linear layers whose product for one row changes with the batch's
row count and tokens per row (`batch_dependent_linears`) run row by row inside a batch. `tests/test_batched_decode.py`
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
from transformers.cache_utils import DynamicLayer

from capkv.decoding import Generation, _forward_step, generate
from capkv.mixed import MixedLayer, MixedPart, can_mix, mixed_attention
from capkv.ragged import RaggedLayer, needs_ragged_attention, ragged_attention


# Dtypes whose batched tokens matched decoding one cache at a time in tests/test_batched_decode.py
# (CPU, torch 2.13), bfloat16 with its batch-dependent linear layers run row by row.
# NOTE: no GPU was checked. Nor was float16, so float16 caches are decoded one at a time.
EXACT_DTYPES = frozenset({torch.float32, torch.bfloat16})

# Dtypes whose batch-dependent linear layers run row by row, and the probe that finds them. In
# torch 2.13 on an AMD EPYC CPU, oneDNN's bfloat16 product of one row rounded about 1 output in
# 4,000 differently from the same row in a batch for layers of 1,152 to 2,048 inputs. It rounded
# none differently for 256 to 1,024 inputs. On an Intel Xeon with AMX, one-token rows matched in
# batches of up to 16, but 8 rows of a 22-token question together (176 rows in one product) gave
# SmolLM2's 576-input value projection other outputs than each 22-token row alone. So the probe
# uses the batch's own row count and tokens per row.
_ROW_BY_ROW_DTYPES = frozenset({torch.bfloat16, torch.float16})
_PROBE_OUTPUTS = 1 << 18
_PROBE_MAX_TRIALS = 64
_batch_dependence: dict[tuple, bool] = {}


def _changes_with_batch(layer: nn.Linear, rows: int, tokens: int) -> bool:
    """Return True if some row's output of `layer` differs between `rows` rows of `tokens` tokens in one product and each row alone.

    Random inputs go through the layer's own weight, in as many trials as it takes to compare about
    `_PROBE_OUTPUTS` outputs (at most `_PROBE_MAX_TRIALS`).
    """
    weight = layer.weight
    trials = min(_PROBE_MAX_TRIALS, max(1, math.ceil(_PROBE_OUTPUTS / (rows * tokens * weight.shape[0]))))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(trials):
            inputs = torch.randn(rows, tokens, weight.shape[1], generator=generator).to(weight.device, weight.dtype)
            together = functional.linear(inputs, weight, layer.bias)
            if not torch.equal(together, _linear_row_by_row(layer, inputs)):
                return True
    return False


def batch_dependent_linears(model: nn.Module, rows: int, tokens: int = 1) -> list[nn.Linear]:
    """Return the 16-bit linear layers of `model` whose output for one row changes when `rows` rows of `tokens` tokens share the product.

    The probe runs once per weight shape, dtype, device, torch thread count, row count and token
    count in a process, since the kernel that torch picks depends on those. Layers in other
    dtypes are not probed.
    """
    found = []
    for module in model.modules():
        if not isinstance(module, nn.Linear) or module.weight.dtype not in _ROW_BY_ROW_DTYPES:
            continue
        weight = module.weight
        key = (tuple(weight.shape), weight.dtype, str(weight.device), module.bias is not None,
               torch.get_num_threads(), rows, tokens)
        if key not in _batch_dependence:
            _batch_dependence[key] = _changes_with_batch(module, rows, tokens)
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


class ReservedLayer(DynamicLayer):
    """A cache layer whose keys and values fill the front of buffers with room for more tokens.

    A `DynamicLayer` concatenates every new token to a copy of the whole layer. Here a new token
    is written into the free space, and `keys` / `values` become longer views of the buffers. The
    attention reads the same numbers either way. When the room runs out, or when other code has
    replaced `keys` or `values`, the layer falls back to concatenation.
    """

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], reserve: int):
        """Stack `keys` and `values` (each a list of (1, heads, length, head_dim)) along the batch, with `reserve` free slots."""
        super().__init__()
        batch, heads, length, head_dim = sum(part.shape[0] for part in keys), *keys[0].shape[1:]
        self._key_buffer = keys[0].new_empty(batch, heads, length + reserve, head_dim)
        self._value_buffer = values[0].new_empty(batch, values[0].shape[1], length + reserve, values[0].shape[-1])
        torch.cat(keys, dim=0, out=self._key_buffer[:, :, :length])
        torch.cat(values, dim=0, out=self._value_buffer[:, :, :length])
        self.keys = self._key_buffer[:, :, :length]
        self.values = self._value_buffer[:, :, :length]
        self.dtype, self.device = self.keys.dtype, self.keys.device
        self.is_initialized = True

    def _views_of_buffers(self) -> bool:
        """Return True if `keys` and `values` are still the leading views of the buffers."""
        return all(
            view.data_ptr() == buffer.data_ptr() and view.shape[:2] == buffer.shape[:2]
            and view.stride() == buffer.stride()
            for view, buffer in ((self.keys, self._key_buffer), (self.values, self._value_buffer))
        )

    def update(self, key_states, value_states, cache_kwargs=None) -> tuple[torch.Tensor, torch.Tensor]:
        start = self.keys.shape[-2]
        end = start + key_states.shape[-2]
        if end > self._key_buffer.shape[-2] or not self._views_of_buffers():
            return super().update(key_states, value_states, cache_kwargs)
        self._key_buffer[:, :, start:end] = key_states
        self._value_buffer[:, :, start:end] = value_states
        self.keys = self._key_buffer[:, :, :end]
        self.values = self._value_buffer[:, :, :end]
        return self.keys, self.values


def _with_room(layer, reserve: int):
    """Return a copy of `layer` with room for `reserve` more tokens: a `ReservedLayer` for a filled plain
    `DynamicLayer`, `RaggedLayer.with_room` for ragged heads, else a shallow copy."""
    keys = getattr(layer, "keys", None)
    if type(layer) is DynamicLayer and keys is not None and keys.dim() == 4:
        return ReservedLayer([keys], [layer.values], reserve)
    if isinstance(layer, RaggedLayer):
        return layer.with_room(reserve)
    return copy.copy(layer)


def stack_caches(items: list, reserve: int = 0) -> DynamicCache:
    """Return a new cache whose batch row i is the cache of `items[i]`; the inputs are not changed.

    Plain `DynamicLayer` layers become `ReservedLayer` layers with `reserve` free token slots, so
    that decoding up to `reserve` tokens appends without copying the layer.
    """
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
        layer_keys = [cache.layers[layer_index].keys for cache in caches]
        layer_values = [cache.layers[layer_index].values for cache in caches]
        if type(layer) is DynamicLayer:
            stacked.layers.append(ReservedLayer(layer_keys, layer_values, reserve))
            continue
        # Sliding-window layers are never compressed, so their counters are the same in every cache.
        merged = copy.copy(layer)
        merged.keys = torch.cat(layer_keys, dim=0)
        merged.values = torch.cat(layer_values, dim=0)
        stacked.layers.append(merged)
    return stacked


def _room_copy(cache, reserve: int):
    """Return a copy of `cache` whose layers have room for `reserve` more tokens (`_with_room`); `cache` is not changed."""
    duplicate = copy.copy(cache)
    duplicate.layers = [_with_room(layer, reserve) for layer in cache.layers]
    return duplicate


def _cache_dtype(cache) -> torch.dtype:
    return cache.layers[0].dtype


def mix_caches(model: nn.Module, groups: list[list], reserve: int = 0) -> DynamicCache:
    """Return a cache of `MixedLayer`s whose batch rows are the caches of `groups`, group after group.

    Each group contains caches that `stack_caches` accepts, or a single cache of any shape that
    `can_mix` accepts. A group becomes one part of every layer, with `reserve` free token slots.
    Decode the result inside `capkv.mixed.mixed_attention`. The inputs are not changed.
    """
    parts = []
    for group in groups:
        caches = [_cache_of(item) for item in group]
        if not all(can_mix(model, cache) for cache in caches):
            raise ValueError(
                "cannot mix these caches into one batch: the model must attend with 'sdpa' and every layer needs "
                "batch size 1 and no sliding window; check them with capkv.mixed.can_mix"
            )
        stored = _room_copy(caches[0], reserve) if len(caches) == 1 else stack_caches(caches, reserve)
        parts.append((len(caches), stored, needs_ragged_attention(caches[0])))
    dtypes = {_cache_dtype(stored) for _, stored, _ in parts}
    if len(dtypes) != 1:
        raise ValueError(
            f"cannot mix caches of dtypes {sorted(map(str, dtypes))} into one batch; "
            "capkv.batched.decoding_batches puts each dtype in batches of its own"
        )
    layers = []
    for layer_index in range(len(parts[0][1].layers)):
        start, layer_parts = 0, []
        for rows, stored, ragged in parts:
            layer_parts.append(MixedPart(start, start + rows, stored.layers[layer_index], ragged))
            start += rows
        layers.append(MixedLayer(layer_parts))
    mixed = copy.copy(parts[0][1])
    mixed.layers = layers
    return mixed


# Rows of one mixed batch; larger mixed batches are split into near-equal ones. On an Intel Xeon
# with AMX (torch 2.13), bfloat16 products of 2 to 32 one-token rows gave each row the output it
# gets alone (12 row counts, bench/batched_decode.py). At 33, 40 and 64 rows every SmolLM2 linear
# layer rounded differently, so every one would have run row by row.
# NOTE: measured on that CPU only. The probe keeps other CPUs exact, but their best size may differ.
MAX_MIXED_ROWS = 32


def decoding_batches(
    model: nn.Module, items: list, exact_only: bool = True, mix_shapes: bool = True, max_rows: int = MAX_MIXED_ROWS
) -> list[list[int]]:
    """Split positions of `items` into the batches `generate_grouped` decodes.

    Without `mix_shapes` these are `group_by_shape`'s groups. With it, every cache that `can_mix`
    accepts joins one batch per dtype and device, whatever its shape. Each such batch is cut into
    near-equal batches of at most `max_rows`, and caches of equal shapes stay next to each other.
    With `exact_only`, only dtypes in `EXACT_DTYPES` are mixed, and other caches keep their own batches.
    """
    shape_groups = group_by_shape(items, exact_only=exact_only)
    if not mix_shapes:
        return shape_groups
    batches: dict[tuple, list[int]] = {}
    ordered: list[list[int]] = []
    for group in shape_groups:
        cache = _cache_of(items[group[0]])
        dtype = _cache_dtype(cache)
        if not can_mix(model, cache) or (exact_only and dtype not in EXACT_DTYPES):
            ordered.append(group)
            continue
        key = (dtype, str(cache.layers[0].device))
        if key not in batches:
            batches[key] = []
            ordered.append(batches[key])
        batches[key].extend(group)
    split: list[list[int]] = []
    for batch in ordered:
        pieces = math.ceil(len(batch) / max_rows)
        bounds = [round(len(batch) * piece / pieces) for piece in range(pieces + 1)]
        split.extend(batch[bounds[piece]:bounds[piece + 1]] for piece in range(pieces))
    return split


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

    `caches` contains CompressedCache objects or transformers caches. Caches of equal shapes (one
    `group_by_shape` group) are stacked into a new cache; caches of different shapes become parts
    of a mixed batch (`mix_caches`), attended part by part. The inputs are not extended.
    `suffix_ids` (1, n) are fed to every row first; otherwise `first_logits`, (1, vocab) from the
    shared prefill or (rows, vocab), give the first token. Each row stops at its own stop token or
    after `max_new_tokens`. Rows that stopped are still fed their last token until every row has
    stopped, and their later outputs are dropped. With `exact`, the linear layers that
    `batch_dependent_linears` finds run row by row. `Generation.seconds` is the batch's wall time
    divided by the number of rows.
    """
    started = time.perf_counter()
    rows = len(caches)
    if rows == 0:
        return []
    device = next(model.parameters()).device
    suffix_length = suffix_ids.shape[1] if suffix_ids is not None else 0
    reserve = suffix_length + max_new_tokens
    parts = group_by_shape(caches, exact_only=False)
    order = [position for part in parts for position in part]  # batch row -> input position
    mixed = len(parts) > 1 or batch_key(caches[0]) is None
    if mixed:
        stacked = mix_caches(model, [[caches[position] for position in part] for part in parts], reserve)
    else:
        stacked = stack_caches(caches, reserve=reserve)
    if first_logits is not None and first_logits.shape[0] == rows:
        first_logits = first_logits[order]
    position = next_position
    tokens: list[list[int]] = [[] for _ in range(rows)]
    finished = [False] * rows

    with torch.no_grad(), ExitStack() as stack:
        if mixed:
            stack.enter_context(mixed_attention(model, stacked))
        elif needs_ragged_attention(stacked):  # layers of different lengths (PyramidKV) need their own masks
            stack.enter_context(ragged_attention(model, stacked))
        step_split = batch_dependent_linears(model, rows) if exact else []
        if suffix_ids is not None and suffix_ids.shape[1] > 0:
            suffix_split = batch_dependent_linears(model, rows, suffix_length) if exact else []
            # The output head receives only the last token of each row (logits_to_keep=1), so the
            # layers found for one-token rows run row by row in this step too.
            listed = {id(layer) for layer in suffix_split}
            suffix_split += [layer for layer in step_split if id(layer) not in listed]
            with _rows_apart(suffix_split):
                logits = _forward_step(model, stacked, suffix_ids.to(device).expand(rows, -1), position)
            position += suffix_length
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
            with _rows_apart(step_split):
                logits = _forward_step(model, stacked, next_tokens[:, None].to(device), position)
            position += 1

    share = (time.perf_counter() - started) / rows
    generations: list[Generation | None] = [None] * rows
    for row, input_position in enumerate(order):
        generations[input_position] = Generation(token_ids=tokens[row], seconds=share)
    return generations


def generate_grouped(
    model: nn.Module,
    caches: list,
    next_position: int,
    max_new_tokens: int,
    stop_token_ids: set[int],
    first_logits: torch.Tensor | None = None,
    suffix_ids: torch.Tensor | None = None,
    exact_only: bool = True,
    mix_shapes: bool = True,
) -> list[Generation]:
    """Greedy decoding of every cache in the batches of `decoding_batches`; return Generations in input order.

    A batch of one is decoded by `capkv.generate` on a copy of its cache whose plain layers have
    room for the new tokens (`ReservedLayer`), so no input is extended in either case.
    """
    reserve = (suffix_ids.shape[1] if suffix_ids is not None else 0) + max_new_tokens
    generations: list[Generation | None] = [None] * len(caches)
    for group in decoding_batches(model, caches, exact_only=exact_only, mix_shapes=mix_shapes):
        if len(group) == 1:
            duplicate = _room_copy(_cache_of(caches[group[0]]), reserve)
            generations[group[0]] = generate(model, duplicate, next_position, max_new_tokens, stop_token_ids,
                                             first_logits=first_logits, suffix_ids=suffix_ids)
            continue
        batch = generate_batched(model, [caches[i] for i in group], next_position, max_new_tokens, stop_token_ids,
                                 first_logits=first_logits, suffix_ids=suffix_ids, exact=exact_only)
        for position, generation in zip(group, batch):
            generations[position] = generation
    return generations


__all__ = [
    "EXACT_DTYPES", "ReservedLayer", "batch_dependent_linears", "batch_key", "decoding_batches", "generate_batched",
    "generate_grouped", "group_by_shape", "mix_caches", "stack_caches",
]
