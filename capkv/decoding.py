"""Decoding from a (possibly compressed) cache at the tokens' true positions: greedy or sampled."""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass

import torch
from torch import nn

from capkv.ragged import needs_ragged_attention, ragged_attention


@dataclass(frozen=True)
class Sampling:
    """Sampled decoding: softmax at `temperature`, restricted to the smallest set of tokens whose
    probability reaches `top_p` (nucleus sampling), drawn with a generator seeded by `seed`.
    Temperature 0 means greedy."""

    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise ValueError(f"invalid sampling temperature={self.temperature!r}; expected a number >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"invalid sampling top_p={self.top_p!r}; expected a number in (0, 1]")


def choose_token(logits: torch.Tensor, sampling: Sampling | None, generator: torch.Generator | None) -> int:
    """Return the next token from (vocab,) logits: the argmax, or a draw under `sampling`."""
    if sampling is None or sampling.temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float().cpu() / sampling.temperature, dim=-1)  # the seeded generator lives on the CPU
    if sampling.top_p < 1:
        sorted_probs, order = probs.sort(descending=True)
        # Keep a token while the mass before it is below top_p, so the most likely token always stays.
        outside = sorted_probs.cumsum(dim=-1) - sorted_probs >= sampling.top_p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        return int(order[torch.multinomial(sorted_probs, 1, generator=generator)])
    return int(torch.multinomial(probs, 1, generator=generator))


@dataclass
class Generation:
    """Continuation of a (possibly compressed) cache."""

    token_ids: list[int]
    seconds: float
    step_logits: torch.Tensor | None = None  # (steps, vocab) float32, when requested


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


def _decoding_context(model, cache, stack: ExitStack, decode_eviction) -> None:
    """Enter the attention and hook contexts decoding from `cache` needs."""
    if decode_eviction is not None:
        stack.enter_context(decode_eviction.session(model, cache))
    if decode_eviction is not None or needs_ragged_attention(cache):
        stack.enter_context(ragged_attention(model, cache))


def generate(
    model: nn.Module,
    cache,
    next_position: int,
    max_new_tokens: int,
    stop_token_ids: set[int],
    first_logits: torch.Tensor | None = None,
    suffix_ids: torch.Tensor | None = None,
    return_logits: bool = False,
    decode_eviction=None,
    sampling: Sampling | None = None,
) -> Generation:
    """Decode for batch size 1 from `cache`, whose next true position is `next_position`.

    Greedy unless `sampling` is given; a sampled generation depends only on `sampling.seed`
    (its own CPU generator), not on the global random state.

    Either `suffix_ids` (1, n) are fed first (the question after a compressed context), or
    `first_logits` from the prefill give the first token. The cache is extended in place. Caches
    whose layers or heads differ in length are attended with per-layer masks (`capkv.ragged`).
    With `decode_eviction` (a `capkv.decode_eviction.DecodeEviction`) the cache is kept near its
    target size while generating.
    """
    started = time.perf_counter()
    device = next(model.parameters()).device
    position = next_position
    tokens: list[int] = []
    step_logits: list[torch.Tensor] = []
    generator = None
    if sampling is not None:
        generator = torch.Generator(device="cpu").manual_seed(sampling.seed)
    with torch.no_grad(), ExitStack() as stack:
        _decoding_context(model, cache, stack, decode_eviction)
        if suffix_ids is not None and suffix_ids.shape[1] > 0:
            logits = _forward_step(model, cache, suffix_ids.to(device), position)
            position += suffix_ids.shape[1]
            if decode_eviction is not None:
                decode_eviction.after_forward(model, cache, position)
        elif first_logits is not None:
            logits = first_logits
        else:
            raise ValueError("generate needs suffix_ids or first_logits to produce the first token")

        for step in range(max_new_tokens):
            if return_logits:
                step_logits.append(logits[0])
            token = choose_token(logits[0], sampling, generator)
            tokens.append(token)
            if token in stop_token_ids or step == max_new_tokens - 1:
                break
            logits = _forward_step(model, cache, torch.tensor([[token]], device=device), position)
            position += 1
            if decode_eviction is not None:
                decode_eviction.after_forward(model, cache, position)

    return Generation(
        token_ids=tokens,
        seconds=time.perf_counter() - started,
        step_logits=torch.stack(step_logits) if return_logits and step_logits else None,
    )


def teacher_forced_logits(
    model: nn.Module,
    cache,
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
    with torch.no_grad(), ExitStack() as stack:
        _decoding_context(model, cache, stack, None)
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
