"""Fidelity of a compressed cache to the full one: teacher-forced KL and top-1 agreement.

Both caches are fed the same reference tokens, so the metrics show how far compression moves the
next-token distribution even where a small model's task score is zero.
"""

from __future__ import annotations

import copy
from contextlib import ExitStack

import torch

from capkv.ragged import needs_ragged_attention, ragged_attention


def copy_cache(cache):
    """Return a copy whose layers can be extended without touching the original's tensors."""
    duplicate = copy.copy(cache)
    duplicate.layers = [copy.copy(layer) for layer in cache.layers]
    return duplicate


def answer_logits(
    model,
    cache,
    next_position: int,
    target_ids: list[int],
    first_logits: torch.Tensor,
    suffix_ids: list[int],
) -> torch.Tensor:
    """Logits (len(target_ids), vocab) predicting each target token, in one forward pass.

    Feeds the suffix (if any) and all target tokens but the last at their true positions.
    Without a suffix, the first row comes from the prefill's `first_logits`.
    """
    device = first_logits.device
    fed = list(suffix_ids) + list(target_ids[:-1])
    rows: list[torch.Tensor] = [] if suffix_ids else [first_logits[0].float()]
    if fed:
        cache_length = cache.get_seq_length()
        positions = torch.arange(next_position, next_position + len(fed), device=device)[None]
        cache_positions = torch.arange(cache_length, cache_length + len(fed), device=device)
        with torch.no_grad(), ExitStack() as stack:
            if needs_ragged_attention(cache):  # heads or layers of different lengths need their own masks
                stack.enter_context(ragged_attention(model, cache))
            output = model(
                input_ids=torch.tensor([fed], device=device),
                past_key_values=cache,
                position_ids=positions,
                cache_position=cache_positions,
                use_cache=True,
                logits_to_keep=len(target_ids) - len(rows),
            )
        rows.extend(output.logits[0].float())
    return torch.stack(rows)[: len(target_ids)]


def kl_and_agreement(full_logits: torch.Tensor, compressed_logits: torch.Tensor) -> tuple[float, float]:
    """Mean KL(full || compressed) over reference positions, and the share of equal argmax tokens."""
    full_log_probs = full_logits.log_softmax(dim=-1)
    compressed_log_probs = compressed_logits.log_softmax(dim=-1)
    kl = (full_log_probs.exp() * (full_log_probs - compressed_log_probs)).sum(dim=-1)
    agreement = (full_logits.argmax(dim=-1) == compressed_logits.argmax(dim=-1)).float()
    return float(kl.clamp_min(0).mean()), float(agreement.mean())
