"""The hot path: prefill once, compress copies of the cache per method, decode at true positions."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache

from capkv.capture import LayerCapture, attention_modules, capture_queries
from capkv.memory import cache_bytes
from capkv.methods.base import EvictionMethod, LayerInputs


@dataclass
class Prefill:
    """A prompt encoded with the full cache, and the query statistics scorers read."""

    cache: DynamicCache
    captures: list[LayerCapture]
    last_logits: torch.Tensor  # (batch, vocab), float32, at the last prompt token
    context_length: int
    seconds: float


@dataclass
class CompressedCache:
    """A copy of a prefilled cache cut down to a budget per KV head."""

    cache: DynamicCache
    kept_indices: list[torch.Tensor | None]  # per layer (batch, num_kv_heads, kept); None = uncompressed
    kept_tokens_per_layer: list[float]  # mean over batch and KV heads
    kv_bytes: int
    seconds: float


@dataclass
class Generation:
    """Greedy continuation of a (possibly compressed) cache."""

    token_ids: list[int]
    seconds: float
    step_logits: torch.Tensor | None = None  # (steps, vocab) float32, when requested


def prefill(
    model: nn.Module,
    input_ids: torch.Tensor,
    window_size: int = 0,
    num_sinks: int = 4,
    second_moment: bool = False,
) -> Prefill:
    """Encode `input_ids` (batch, seq_len) with a full cache, capturing the queries scorers need."""
    started = time.perf_counter()
    cache = DynamicCache(config=model.config)
    window = min(window_size, input_ids.shape[1])
    with torch.no_grad(), capture_queries(model, window, num_sinks, second_moment) as captures:
        output = model(input_ids=input_ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    return Prefill(
        cache=output.past_key_values,
        captures=captures,
        last_logits=output.logits[:, -1].float(),
        context_length=input_ids.shape[1],
        seconds=time.perf_counter() - started,
    )


def compress(model: nn.Module, prefilled: Prefill, method: EvictionMethod, budget: int) -> CompressedCache:
    """Return a new cache keeping `budget` tokens per KV head in every full-attention layer.

    The prefilled cache is left untouched, so one prefill serves many (method, budget) pairs.
    Sliding-window layers keep their own rolling window and are not compressed.
    """
    started = time.perf_counter()
    modules = attention_modules(model)
    compressed = copy.copy(prefilled.cache)
    compressed.layers = [copy.copy(layer) for layer in prefilled.cache.layers]
    kept_indices: list[torch.Tensor | None] = []
    kept_tokens: list[float] = []

    with torch.no_grad():
        for layer_idx, layer in enumerate(compressed.layers):
            seq_len = layer.keys.shape[2]
            if getattr(layer, "is_sliding", False) or not method.evicts or budget >= seq_len:
                kept_indices.append(None)
                kept_tokens.append(float(seq_len))
                continue

            inputs = LayerInputs(
                layer_idx=layer_idx,
                num_layers=len(compressed.layers),
                keys=layer.keys,
                values=layer.values,
                capture=prefilled.captures[layer_idx],
                module=modules[layer_idx],
            )
            kept = method.select(inputs, budget)  # (batch, num_kv_heads, budget)
            gather_index = kept[..., None].expand(-1, -1, -1, layer.keys.shape[-1])
            layer.keys = layer.keys.gather(2, gather_index)
            layer.values = layer.values.gather(2, gather_index)
            kept_indices.append(kept)
            kept_tokens.append(float(kept.shape[-1]))

    return CompressedCache(
        cache=compressed,
        kept_indices=kept_indices,
        kept_tokens_per_layer=kept_tokens,
        kv_bytes=cache_bytes(compressed),
        seconds=time.perf_counter() - started,
    )


def _forward_step(model, cache, token_ids: torch.Tensor, first_position: int) -> torch.Tensor:
    """Run tokens (batch, n) at true positions first_position..; return last logits (batch, vocab)."""
    num_tokens = token_ids.shape[1]
    cache_length = cache.get_seq_length()
    # RoPE takes the true position; the mask and the cache index take the stored length.
    position_ids = torch.arange(first_position, first_position + num_tokens, device=token_ids.device)[None]
    cache_position = torch.arange(cache_length, cache_length + num_tokens, device=token_ids.device)
    output = model(
        input_ids=token_ids,
        past_key_values=cache,
        position_ids=position_ids.expand(token_ids.shape[0], -1),
        cache_position=cache_position,
        use_cache=True,
        logits_to_keep=1,
    )
    return output.logits[:, -1].float()


def generate(
    model: nn.Module,
    cache: DynamicCache,
    next_position: int,
    max_new_tokens: int,
    stop_token_ids: set[int],
    first_logits: torch.Tensor | None = None,
    suffix_ids: torch.Tensor | None = None,
    return_logits: bool = False,
) -> Generation:
    """Greedy decoding for batch size 1 from `cache`, whose next true position is `next_position`.

    Either `suffix_ids` (1, n) are fed first (the question after a compressed context), or
    `first_logits` from the prefill give the first token. The cache is extended in place.
    """
    started = time.perf_counter()
    device = next(model.parameters()).device
    position = next_position
    with torch.no_grad():
        if suffix_ids is not None and suffix_ids.shape[1] > 0:
            logits = _forward_step(model, cache, suffix_ids.to(device), position)
            position += suffix_ids.shape[1]
        elif first_logits is not None:
            logits = first_logits
        else:
            raise ValueError("generate needs suffix_ids or first_logits to produce the first token")

        tokens: list[int] = []
        step_logits: list[torch.Tensor] = []
        for step in range(max_new_tokens):
            if return_logits:
                step_logits.append(logits[0])
            token = int(logits[0].argmax())
            tokens.append(token)
            if token in stop_token_ids or step == max_new_tokens - 1:
                break
            logits = _forward_step(model, cache, torch.tensor([[token]], device=device), position)
            position += 1

    return Generation(
        token_ids=tokens,
        seconds=time.perf_counter() - started,
        step_logits=torch.stack(step_logits) if return_logits and step_logits else None,
    )


def teacher_forced_logits(
    model: nn.Module,
    cache: DynamicCache,
    next_position: int,
    target_ids: list[int],
    first_logits: torch.Tensor | None = None,
    suffix_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Next-token logits (len(target_ids), vocab) while feeding `target_ids` one by one.

    Row i is the distribution that predicts target_ids[i]. The cache is extended in place.
    """
    device = next(model.parameters()).device
    position = next_position
    rows: list[torch.Tensor] = []
    with torch.no_grad():
        if suffix_ids is not None and suffix_ids.shape[1] > 0:
            logits = _forward_step(model, cache, suffix_ids.to(device), position)
            position += suffix_ids.shape[1]
        else:
            logits = first_logits
        for index, token in enumerate(target_ids):
            rows.append(logits[0])
            if index == len(target_ids) - 1:
                break
            logits = _forward_step(model, cache, torch.tensor([[token]], device=device), position)
            position += 1
    return torch.stack(rows)
