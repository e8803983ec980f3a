"""Capture the attention queries that scorers need while the prompt is prefilled.

Forward hooks on each attention module recompute the queries from the layer's input
(q_proj, the model's q-norm when it has one, then RoPE with the positions of this forward).
The hooks live only inside the `capture_queries` context, so nothing global changes.
"""

from __future__ import annotations

import dataclasses

import sys
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

ATTENTION_SUM_CHUNK = 256  # queries per block when summing the attention each token receives


@dataclass
class LayerCapture:
    """Query statistics of one attention layer over the prefilled prompt.

    `window_queries` contains the last `window_size` post-RoPE queries, shape
    (batch, num_heads, window, head_dim). `query_sum` / `prerope_sum` and `query_count` give the
    mean post-RoPE and pre-RoPE query over positions >= `num_sinks`. With `second_moment`,
    `prerope_mean` and `prerope_m2` (sum of centred outer products, merged across forwards with
    Chan's update) give the pre-RoPE covariance over the same positions. `attention_sums`
    (batch, num_heads, seq_len) is the causal attention each token received from every query,
    `attention_counts` (seq_len,) how many queries could see each token, and `hidden_states`
    (batch, seq_len, hidden) the attention module's input. `leading_prerope` and `leading_rotated`
    (batch, num_heads, k, head_dim) keep the first k counted queries (positions num_sinks ..
    num_sinks + k - 1), so that `excluding` can serve methods that leave out more sink tokens.
    """

    window_queries: torch.Tensor | None = None
    query_sum: torch.Tensor | None = None
    prerope_sum: torch.Tensor | None = None
    prerope_mean: torch.Tensor | None = None
    prerope_m2: torch.Tensor | None = None
    attention_sums: torch.Tensor | None = None
    attention_counts: torch.Tensor | None = None
    hidden_states: torch.Tensor | None = None
    query_count: int = 0
    tokens_seen: int = 0
    scaling: float = 1.0
    num_sinks: int = 0
    leading_prerope: torch.Tensor | None = None
    leading_rotated: torch.Tensor | None = None

    @property
    def max_num_sinks(self) -> int:
        """Largest sink count `excluding` can serve."""
        recorded = 0 if self.leading_rotated is None else self.leading_rotated.shape[2]
        return self.num_sinks + recorded

    def excluding(self, num_sinks: int) -> LayerCapture:
        """Return the statistics over positions >= `num_sinks` instead of >= `self.num_sinks`.

        The recorded leading queries are subtracted from the sums. With the second moment, they are
        also removed from the mean and the centred second moment by the inverse of Chan's update.
        The result equals a capture with that sink count up to float32 rounding. Raises ValueError
        outside num_sinks .. max_num_sinks.
        """
        if num_sinks == self.num_sinks:
            return self
        if not self.num_sinks <= num_sinks <= self.max_num_sinks:
            raise ValueError(
                f"cannot leave out {num_sinks} sink tokens from statistics captured without the first "
                f"{self.num_sinks}; this capture serves {self.num_sinks} to {self.max_num_sinks}"
            )
        removed = num_sinks - self.num_sinks
        removed_pre = self.leading_prerope[:, :, :removed]
        removed_rot = self.leading_rotated[:, :, :removed]
        count = self.query_count - removed
        result = dataclasses.replace(
            self,
            query_sum=self.query_sum - removed_rot.sum(dim=2),
            prerope_sum=self.prerope_sum - removed_pre.sum(dim=2),
            query_count=count,
            num_sinks=num_sinks,
            leading_prerope=self.leading_prerope[:, :, removed:],
            leading_rotated=self.leading_rotated[:, :, removed:],
        )
        if self.prerope_mean is not None:
            block_mean = removed_pre.mean(dim=2)
            centred = removed_pre - block_mean[:, :, None]
            block_m2 = torch.einsum("bhti,bhtj->bhij", centred, centred)
            remaining_mean = (self.prerope_mean * self.query_count - block_mean * removed) / max(count, 1)
            delta = block_mean - remaining_mean
            result.prerope_mean = remaining_mean
            result.prerope_m2 = self.prerope_m2 - block_m2 - torch.einsum("bhi,bhj->bhij", delta, delta) * (
                count * removed / self.query_count
            )
        return result

    @property
    def query_mean(self) -> torch.Tensor | None:
        """Mean post-RoPE query per head, shape (batch, num_heads, head_dim)."""
        if self.query_sum is None or self.query_count == 0:
            return None
        return self.query_sum / self.query_count

    @property
    def prerope_query_mean(self) -> torch.Tensor | None:
        """Mean pre-RoPE query per head, shape (batch, num_heads, head_dim)."""
        if self.prerope_mean is not None:
            return self.prerope_mean
        if self.prerope_sum is None or self.query_count == 0:
            return None
        return self.prerope_sum / self.query_count

    @property
    def prerope_covariance(self) -> torch.Tensor | None:
        """Population covariance of the pre-RoPE queries, shape (batch, num_heads, head_dim, head_dim)."""
        if self.prerope_m2 is None or self.query_count == 0:
            return None
        return self.prerope_m2 / self.query_count


def decoder_of(model: nn.Module) -> nn.Module:
    """Return the decoder stack (the module holding `layers` and `rotary_emb`)."""
    return model.get_decoder() if hasattr(model, "get_decoder") else model.model


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """Return the self-attention module of every decoder layer, in layer order."""
    return [layer.self_attn for layer in decoder_of(model).layers]


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


def causal_attention_sums(
    queries: torch.Tensor, keys: torch.Tensor, scaling: float, first_query: int
) -> torch.Tensor:
    """Sum over queries of their causal softmax attention, shape (batch, num_heads, num_keys).

    queries: (batch, num_heads, q_len, head_dim) at absolute indices first_query.., keys:
    (batch, num_kv_heads, num_keys, head_dim). Blocks of queries bound the memory to
    O(block · num_keys) instead of the quadratic full attention matrix.
    """
    group = queries.shape[1] // keys.shape[1]
    keys = keys.float().repeat_interleave(group, dim=1)
    key_index = torch.arange(keys.shape[2], device=keys.device)
    sums = torch.zeros(*queries.shape[:2], keys.shape[2], device=keys.device)
    for start in range(0, queries.shape[2], ATTENTION_SUM_CHUNK):
        block = queries[:, :, start : start + ATTENTION_SUM_CHUNK].float()
        query_index = first_query + start + torch.arange(block.shape[2], device=keys.device)
        logits = torch.matmul(block, keys.transpose(2, 3)) * scaling  # (batch, num_heads, block, num_keys)
        logits = logits.masked_fill(key_index[None, :] > query_index[:, None], float("-inf"))
        sums += logits.softmax(dim=-1).sum(dim=2)
    return sums


def _accumulate(capture: LayerCapture, queries, rotated, skip: int, second_moment: bool, leading: int) -> None:
    counted_pre = queries[:, :, skip:].float()
    counted_rot = rotated[:, :, skip:].float()
    count = counted_rot.shape[2]
    if count == 0:
        return
    recorded = 0 if capture.leading_rotated is None else capture.leading_rotated.shape[2]
    if recorded < leading:
        new_pre, new_rot = counted_pre[:, :, : leading - recorded], counted_rot[:, :, : leading - recorded]
        if capture.leading_rotated is None:
            capture.leading_prerope, capture.leading_rotated = new_pre, new_rot
        else:
            capture.leading_prerope = torch.cat([capture.leading_prerope, new_pre], dim=2)
            capture.leading_rotated = torch.cat([capture.leading_rotated, new_rot], dim=2)
    rot_sum = counted_rot.sum(dim=2)  # (batch, num_heads, head_dim)
    pre_sum = counted_pre.sum(dim=2)
    capture.query_sum = rot_sum if capture.query_sum is None else capture.query_sum + rot_sum
    capture.prerope_sum = pre_sum if capture.prerope_sum is None else capture.prerope_sum + pre_sum
    if second_moment:
        _merge_moments(capture, counted_pre, count)
    capture.query_count += count


def _merge_moments(capture: LayerCapture, counted_pre: torch.Tensor, count: int) -> None:
    block_mean = counted_pre.mean(dim=2)  # (batch, num_heads, head_dim)
    centred = counted_pre - block_mean[:, :, None]
    block_m2 = torch.einsum("bhti,bhtj->bhij", centred, centred)  # (batch, num_heads, d, d)
    if capture.prerope_mean is None:
        capture.prerope_mean, capture.prerope_m2 = block_mean, block_m2
        return
    # Chan et al. (1979) parallel update of mean and centred second moment.
    seen = capture.query_count
    total = seen + count
    delta = block_mean - capture.prerope_mean
    capture.prerope_mean = capture.prerope_mean + delta * (count / total)
    capture.prerope_m2 = capture.prerope_m2 + block_m2 + torch.einsum("bhi,bhj->bhij", delta, delta) * (
        seen * count / total
    )


@contextmanager
def capture_queries(
    model: nn.Module,
    window_size: int,
    num_sinks: int,
    second_moment: bool = False,
    attention_sums: bool = False,
    hidden_states: bool = False,
    extra_sinks: int = 0,
):
    """Record per-layer query statistics for every forward pass run inside the context.

    Statistics leave out the first `num_sinks` tokens. With `extra_sinks`, the next queries are
    also kept so that `LayerCapture.excluding` serves up to num_sinks + extra_sinks.

    Yields the list of `LayerCapture`, one per decoder layer. Intended for one prefill forward:
    a second forward inside the same context adds to the sums and replaces the window.
    `attention_sums` needs the cache passed to the forward (the keys are read from it) and is
    skipped on sliding-window layers, whose cache drops old keys.
    """
    modules = attention_modules(model)
    captures = [
        LayerCapture(scaling=float(getattr(m, "scaling", m.head_dim**-0.5)), num_sinks=num_sinks) for m in modules
    ]

    def make_hook(capture: LayerCapture):
        def hook(module, args, kwargs, output):
            layer_input = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            with torch.no_grad():
                queries = prerope_queries(module, layer_input)  # (batch, num_heads, q_len, head_dim)
                position_embeddings = kwargs.get("position_embeddings")
                # Models without rotary embeddings have position-free queries.
                rotated = queries
                if position_embeddings is not None:
                    rotated = rotate_queries(module, queries, position_embeddings)
                skip = max(0, num_sinks - capture.tokens_seen)
                _accumulate(capture, queries, rotated, skip, second_moment, extra_sinks)
                if attention_sums:
                    _add_attention_sums(capture, module, rotated, kwargs.get("past_key_values"))
                if hidden_states:
                    previous = capture.hidden_states
                    capture.hidden_states = layer_input if previous is None else torch.cat([previous, layer_input], 1)
                capture.tokens_seen += queries.shape[2]
                if window_size > 0:
                    capture.window_queries = rotated[:, :, -window_size:].float()
            return None

        return hook

    handles = [
        module.register_forward_hook(make_hook(capture), with_kwargs=True) for module, capture in zip(modules, captures)
    ]
    try:
        yield captures
    finally:
        for handle in handles:
            handle.remove()


def _add_attention_sums(capture: LayerCapture, module: nn.Module, rotated: torch.Tensor, cache) -> None:
    if cache is None:
        raise ValueError("attention sums need the forward to run with a cache (past_key_values)")
    layer = cache.layers[module.layer_idx]
    if getattr(layer, "is_sliding", False):
        return
    sums = causal_attention_sums(rotated, layer.keys, capture.scaling, capture.tokens_seen)
    if capture.attention_sums is not None:
        sums[..., : capture.attention_sums.shape[-1]] += capture.attention_sums
    capture.attention_sums = sums
    num_keys = sums.shape[-1]
    capture.attention_counts = (num_keys - torch.arange(num_keys, device=sums.device)).float()
