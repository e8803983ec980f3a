"""Decode-time eviction: keep the cache near a target size while generating long outputs.

Methods with a native decode policy evict after every generated token: StreamingLLM rolls its
window, H2O adds each new query's attention to the scores and drops the lowest, TOVA drops the
token the current query attends to least. Every other method is re-run every `interval` tokens
over the whole cache, with the most recent generated tokens' queries as its observation
queries, and cuts the cache back to `target`. Between two cuts a layer stores at most
target + interval tokens per KV head.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from capkv.capture import LayerCapture, attention_modules, causal_attention_sums, prerope_queries, rotate_queries
from capkv.methods.base import EvictionMethod, MethodError, check_budget
from capkv.ragged import RaggedLayer

NATIVE_POLICIES = ("rolling", "accumulated_attention", "current_attention")
UNBOUNDED_LENGTH = 2**62


@dataclass
class _LayerState:
    """Per-layer record of the decode hooks since decoding started, for one full-attention layer."""

    positions: torch.Tensor  # (batch, num_kv_heads, cached) true position of every cached token
    scaling: float
    recent_prerope: torch.Tensor | None = None  # (batch, num_heads, observed, head_dim) float32
    recent_rotated: torch.Tensor | None = None
    recent_inputs: torch.Tensor | None = None  # (batch, observed, hidden), only for methods that read them
    attention_sums: torch.Tensor | None = None  # (batch, num_heads, cached)
    attention_counts: torch.Tensor | None = None  # (batch, num_kv_heads, cached)
    tokens_since_compression: int = 0
    pending_tokens: int = 0


@dataclass
class DecodeEvictionStats:
    """Counters of decode-time eviction over one generation."""

    compressions: int = 0
    # Largest cache seen after a forward, in tokens per KV head (ragged layers: mean over heads, rounded up).
    max_tokens_per_layer: dict[int, int] = field(default_factory=dict)


@dataclass
class DecodeEviction:
    """Keeps every full-attention layer at about `target` tokens per KV head during `generate`.

    Parameters:
    - method: the eviction method that scores the cache.
    - target: tokens per KV head left after each cut.
    - interval (32): generated tokens between two cuts of the periodic wrapper.
    - observation_size (None): recent generated tokens whose queries the scorer reads; None means
      max(interval, method.window_size).
    - native (True): use the method's own per-token policy when it has one.

    A prompt longer than `target` is cut only after the first forward. Compress it to `target`
    at prefill time to keep the bound from the start.
    """

    method: EvictionMethod
    target: int
    interval: int = 32
    observation_size: int | None = None
    native: bool = True
    stats: DecodeEvictionStats = field(default_factory=DecodeEvictionStats, init=False)

    def __post_init__(self) -> None:
        check_budget(self.target)
        self.method.validate_budget(self.target)
        if isinstance(self.interval, bool) or not isinstance(self.interval, int) or self.interval < 1:
            raise MethodError(f"invalid decode interval {self.interval!r}; expected an integer >= 1")
        self._initial_positions: list[torch.Tensor | None] | None = None
        self._initial_captures: list[LayerCapture] | None = None
        self._states: dict[int, _LayerState] = {}

    @property
    def every_step(self) -> bool:
        """True when the method's native policy evicts after every generated token."""
        return self.native and self.method.decode_policy in NATIVE_POLICIES

    @property
    def observed(self) -> int:
        return self.observation_size or max(self.interval, self.method.window_size, 1)

    def resume_from(self, kept_indices: list[torch.Tensor | None], captures: list[LayerCapture] | None = None):
        """Continue from a compressed prefill: true positions from its `kept_indices` (None = all kept),
        and H2O's attention sums from the prefill `captures`, so prompt tokens keep their scores."""
        self._initial_positions = kept_indices
        self._initial_captures = captures
        return self

    def positions(self, layer_idx: int) -> torch.Tensor:
        """True positions (batch, num_kv_heads, cached) of the tokens now cached in a layer.

        For ragged layers the layout is the layer's padded view, with -1 in padding slots.
        """
        return self._states[layer_idx].positions

    @contextmanager
    def session(self, model, cache):
        """Install the decode hooks for one `generate` call over `cache`."""
        self.method.check_model(model)
        self.stats = DecodeEvictionStats()
        self._states = {}
        modules = attention_modules(model)
        for layer_idx, layer in enumerate(cache.layers):
            if isinstance(layer, RaggedLayer) and not self.method.ragged:
                raise MethodError(f"{self.method.label} keeps the same tokens in every head and cannot cut a cache "
                                  "with ragged heads; use a ragged method such as adakv")
            if getattr(layer, "is_sliding", False):
                continue
            state = _LayerState(
                positions=self._start_positions(layer_idx, layer),
                scaling=float(getattr(modules[layer_idx], "scaling", modules[layer_idx].head_dim**-0.5)),
            )
            self._start_attention(state, layer_idx)
            self._states[layer_idx] = state
        handles = [
            modules[layer_idx].register_forward_hook(self._make_hook(cache, layer_idx), with_kwargs=True)
            for layer_idx in self._states
        ]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def _start_positions(self, layer_idx: int, layer) -> torch.Tensor:
        """True positions laid out like the layer's (padded) view; -1 marks padding slots."""
        initial = None if self._initial_positions is None else self._initial_positions[layer_idx]
        if initial is not None:
            return initial.clone()
        if isinstance(layer, RaggedLayer):
            raise MethodError("decode-time eviction over ragged heads needs their positions; "
                              "call resume_from(compressed.kept_indices) first")
        batch, num_kv_heads, seq_len, _ = layer.keys.shape
        return torch.arange(seq_len, device=layer.keys.device).expand(batch, num_kv_heads, seq_len).clone()

    def _start_attention(self, state: _LayerState, layer_idx: int) -> None:
        capture = None if self._initial_captures is None else self._initial_captures[layer_idx]
        if self.method.decode_policy != "accumulated_attention" or capture is None or capture.attention_sums is None:
            return
        kept = state.positions  # (batch, num_kv_heads, cached), prompt positions only at this point
        group = capture.attention_sums.shape[1] // kept.shape[1]
        state.attention_sums = capture.attention_sums.gather(2, kept.repeat_interleave(group, dim=1))
        state.attention_counts = capture.attention_counts[kept].float()

    def _make_hook(self, cache, layer_idx: int):
        state = self._states[layer_idx]

        def hook(module, args, kwargs, output):
            layer_input = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            prerope = prerope_queries(module, layer_input)  # (batch, num_heads, q_len, head_dim)
            rotated = rotate_queries(module, prerope, kwargs["position_embeddings"])
            self._record_queries(state, prerope.float(), rotated.float(), layer_input)
            if self.method.decode_policy == "accumulated_attention":
                _add_attention(state, rotated, cache.layers[layer_idx].keys)
            state.pending_tokens += prerope.shape[2]
            return None

        return hook

    def _record_queries(self, state: _LayerState, prerope, rotated, layer_input) -> None:
        keep = self.observed
        state.recent_prerope = _append_recent(state.recent_prerope, prerope, keep, dim=2)
        state.recent_rotated = _append_recent(state.recent_rotated, rotated, keep, dim=2)
        if self.method.needs_hidden_states:
            state.recent_inputs = _append_recent(state.recent_inputs, layer_input, keep, dim=1)

    def after_forward(self, model, cache, next_position: int) -> None:
        """Record the tokens just fed and cut every layer that is due; `next_position` is the next true position."""
        from capkv.engine import layer_inputs  # the engine imports the decoding loop

        due = []
        for layer_idx, state in self._states.items():
            layer = cache.layers[layer_idx]
            new = state.pending_tokens
            state.pending_tokens = 0
            state.tokens_since_compression += new
            new_positions = torch.arange(next_position - new, next_position, device=state.positions.device)
            state.positions = torch.cat([state.positions, new_positions.expand(*state.positions.shape[:2], new)], -1)
            length = _stored_tokens(layer)
            seen = self.stats.max_tokens_per_layer.get(layer_idx, 0)
            self.stats.max_tokens_per_layer[layer_idx] = max(seen, length)
            if length > self.target and (self.every_step or state.tokens_since_compression >= self.interval):
                due.append(layer_idx)
        if not due:
            return

        # No length cap: the split over depth stays the same for the whole generation.
        budgets = self.method.layer_budgets(self.target, UNBOUNDED_LENGTH, len(self._states))
        budget_of = dict(zip(self._states, budgets))
        for layer_idx in due:
            state = self._states[layer_idx]
            layer = cache.layers[layer_idx]
            if self.method.ragged:
                self._cut_ragged(model, cache, layer_idx, budget_of[layer_idx], next_position)
            else:
                capture = self._observation(state)
                inputs = layer_inputs(model, layer_idx, layer.keys, layer.values, capture, next_position)
                kept = self.method.select(inputs, min(budget_of[layer_idx], layer.keys.shape[2]))
                _gather_layer(layer, state, kept)
            state.tokens_since_compression = 0
        self.stats.compressions += 1

    def _cut_ragged(self, model, cache, layer_idx: int, budget: int, next_position: int) -> None:
        """Re-select a ragged method's per-head tokens over the padded view and store them as a new RaggedLayer."""
        from capkv.engine import layer_inputs

        state = self._states[layer_idx]
        layer = cache.layers[layer_idx]
        if isinstance(layer, RaggedLayer):
            keys, values = layer.padded()
            valid, tail = layer.key_mask(), layer.new_tokens
        else:
            keys, values, valid, tail = layer.keys, layer.values, None, layer.keys.shape[2]
        # NOTE: the observation window ends at the tail, the only slots that are the last tokens of
        # every head; with interval < window_size the window is shortened to the tail.
        capture = self._observation(state, window_limit=tail)
        inputs = layer_inputs(model, layer_idx, keys, values, capture, next_position)
        inputs.valid = valid
        keep_mask = self.method.select_mask(inputs, budget)  # (batch, num_kv_heads, view length)
        ragged = RaggedLayer(keys, values, keep_mask)
        cache.layers[layer_idx] = ragged
        positions = torch.full(ragged.prefix_mask().shape, -1, dtype=torch.long, device=keys.device)
        positions[ragged.prefix_mask()] = state.positions[keep_mask]
        state.positions = positions

    def _observation(self, state: _LayerState, window_limit: int | None = None) -> LayerCapture:
        """Query statistics of the recent generated tokens, in the form scorers read after a prefill."""
        prerope, rotated = state.recent_prerope, state.recent_rotated
        count = rotated.shape[2]
        window = min(self.method.window_size, count if window_limit is None else window_limit)
        capture = LayerCapture(
            window_queries=rotated[:, :, -max(window, 1) :],
            query_sum=rotated.sum(dim=2),
            prerope_sum=prerope.sum(dim=2),
            attention_sums=state.attention_sums,
            attention_counts=state.attention_counts,
            hidden_states=state.recent_inputs,
            query_count=count,
            tokens_seen=count,
            scaling=state.scaling,
            num_sinks=self.method.num_sinks_needed or 0,
        )
        if self.method.needs_query_covariance:
            capture.prerope_mean = prerope.mean(dim=2)
            centred = prerope - capture.prerope_mean[:, :, None]
            capture.prerope_m2 = torch.einsum("bhti,bhtj->bhij", centred, centred)
        return capture


def _stored_tokens(layer) -> int:
    """Tokens per KV head in the layer; for ragged heads, the mean over heads rounded up."""
    if isinstance(layer, RaggedLayer):
        return math.ceil(float(layer.kept_tokens().float().mean()))
    return layer.keys.shape[2]


def _append_recent(buffer: torch.Tensor | None, new: torch.Tensor, keep: int, dim: int) -> torch.Tensor:
    joined = new if buffer is None else torch.cat([buffer, new], dim=dim)
    return joined.narrow(dim, max(0, joined.shape[dim] - keep), min(keep, joined.shape[dim]))


def _add_attention(state: _LayerState, rotated: torch.Tensor, keys: torch.Tensor) -> None:
    """Add the attention of the new queries to every cached token's running sum (H2O)."""
    q_len, num_keys = rotated.shape[2], keys.shape[2]
    sums = causal_attention_sums(rotated, keys, state.scaling, first_query=num_keys - q_len)  # (b, heads, keys)
    seen_by = (num_keys - torch.arange(num_keys, device=keys.device)).clamp(max=q_len).float()
    counts = seen_by.expand(*keys.shape[:2], num_keys).clone()
    if state.attention_sums is not None:
        previous = state.attention_sums.shape[-1]
        sums[..., :previous] += state.attention_sums
        counts[..., :previous] += state.attention_counts
    state.attention_sums, state.attention_counts = sums, counts


def _gather_layer(layer, state: _LayerState, kept: torch.Tensor) -> None:
    """Keep the `kept` (batch, num_kv_heads, budget) tokens in the layer and in the recorded state."""
    from capkv.engine import gather_tokens  # the engine imports the decoding loop

    layer.keys = gather_tokens(layer.keys, kept)
    layer.values = gather_tokens(layer.values, kept)
    state.positions = state.positions.gather(2, kept)
    if state.attention_sums is not None:
        group = state.attention_sums.shape[1] // kept.shape[1]
        state.attention_sums = state.attention_sums.gather(2, kept.repeat_interleave(group, dim=1))
        state.attention_counts = state.attention_counts.gather(2, kept)
