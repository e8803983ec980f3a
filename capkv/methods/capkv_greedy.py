"""CapKV greedy: grow the kept set one token at a time by the largest gain in log det."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from capkv.methods.base import EvictionMethod, LayerInputs, MethodError
from capkv.methods.capkv import capacity_weights, relevance

DEFAULT_ACTIVE_SIZE = 64
MAX_STEPS_PER_PRODUCT = 64  # bounds the (problems, n, steps) tensor of one catch-up product


def greedy_log_det(
    values: torch.Tensor, weights: torch.Tensor, count: int, active_size: int = DEFAULT_ACTIVE_SIZE
) -> torch.Tensor:
    """Pick `count` tokens per (batch, head) greedily maximising log det(I + Σ_S w_i u_i u_iᵀ).

    values: (batch, heads, n, d) float, weights: (batch, heads, n) with w_i >= 0. Returns the picked
    indices (batch, heads, count) in pick order. Each step picks the largest gain log(1 + w_i u_iᵀ M u_i)
    with M = A_S⁻¹, ties going to the lowest index. `active_size` sets how many leading candidates
    are updated at every step (see `LazyGreedySearch`); it changes the speed, not the picks.
    """
    batch, heads, num_tokens, head_dim = values.shape
    count = min(count, num_tokens)
    if count == 0:
        return torch.zeros(batch, heads, 0, dtype=torch.long, device=values.device)

    search = LazyGreedySearch(
        values.reshape(batch * heads, num_tokens, head_dim), weights.reshape(batch * heads, num_tokens), active_size
    )
    picks = [search.pick() for _ in range(count)]
    return torch.stack(picks, dim=-1).reshape(batch, heads, count)


class LazyGreedySearch:
    """Greedy log-det selection over independent problems that updates only the leading candidates per step.

    Adding token s to the kept set changes M = A_S⁻¹ by a rank-one Sherman–Morrison term, so every
    candidate's quadratic form u_iᵀ M u_i drops by c_s (u_iᵀ M u_s)² with c_s = w_s / (1 + w_s u_sᵀ M u_s).
    The drops are never negative, so a gain computed earlier is an upper bound on the current one,
    in floating point too (subtracting a non-negative number never increases a float). This is
    lazy greedy (Minoux, 1978): a refresh brings all candidates up to date with one batched matrix
    product, takes the `active_size` largest gains as the active set and records the largest gain
    left outside it as the bound. Steps then update only the active set, and a step whose best
    active gain is not strictly above the bound refreshes first. A pick therefore has the largest
    gain of all candidates, and ties go to the lowest index, as in the plain greedy loop.

    values: (problems, n, d), weights: (problems, n). Per step the cost is O(active_size · d + d²),
    and a refresh costs O(n · d) per step since the previous refresh.
    """

    def __init__(self, values: torch.Tensor, weights: torch.Tensor, active_size: int):
        if active_size < 1:
            raise ValueError(f"invalid active_size={active_size}; expected an integer >= 1")
        problems, num_tokens, head_dim = values.shape
        self.values = values
        self.weights = weights
        self.active_size = active_size
        self.quadratic = (values * values).sum(dim=-1)  # u_iᵀ M u_i as of the last refresh, (problems, n)
        self.inverse = torch.eye(head_dim, dtype=values.dtype, device=values.device).repeat(problems, 1, 1)
        self.taken = torch.zeros(problems, num_tokens, dtype=torch.bool, device=values.device)
        self.rows = torch.arange(problems, device=values.device)
        # Per pick since the last refresh: the picked index (problems,), M u_s (problems, d) and c_s (problems,).
        self.pending_picks: list[torch.Tensor] = []
        self.pending_directions: list[torch.Tensor] = []
        self.pending_coefficients: list[torch.Tensor] = []
        self.refresh()

    def refresh(self) -> None:
        """Bring every candidate's quadratic form up to date and choose a new active set and bound."""
        num_tokens = self.values.shape[1]
        if self.pending_picks:
            self.taken.scatter_(1, torch.stack(self.pending_picks, dim=1), True)
            directions = torch.stack(self.pending_directions, dim=2)  # (problems, d, steps)
            coefficients = torch.stack(self.pending_coefficients, dim=1)  # (problems, steps)
            for start in range(0, directions.shape[2], MAX_STEPS_PER_PRODUCT):
                chunk = slice(start, start + MAX_STEPS_PER_PRODUCT)
                projections = torch.bmm(self.values, directions[:, :, chunk])  # u_iᵀ M u_s, (problems, n, steps)
                self.quadratic -= (projections.square() * coefficients[:, None, chunk]).sum(dim=-1)
            self.pending_picks, self.pending_directions, self.pending_coefficients = [], [], []

        gains = (self.weights * self.quadratic).masked_fill(self.taken, float("-inf"))
        sorted_gains, order = gains.sort(dim=-1, descending=True, stable=True)
        size = self._active_set_size(sorted_gains)
        self.bound = sorted_gains[:, size] if size < num_tokens else torch.full_like(sorted_gains[:, 0], float("-inf"))

        # Ascending token order makes the first maximum of a step the lowest index among tied gains.
        self.active = order[:, :size].sort(dim=-1).values  # (problems, size)
        self.active_values = self.values.gather(1, self.active[..., None].expand(-1, -1, self.values.shape[2]))
        self.active_weights = self.weights.gather(1, self.active)
        self.active_quadratic = self.quadratic.gather(1, self.active)
        self.active_taken = self.taken.gather(1, self.active)

    def _active_set_size(self, sorted_gains: torch.Tensor) -> int:
        """Smallest size >= active_size whose last active gain is strictly above the next one in every problem.

        A tie across the cut would leave the best active gain equal to the bound, so no step could
        pass its check; cutting only between two different gains avoids that. Returns n when no cut fits.
        """
        num_tokens = sorted_gains.shape[1]
        if self.active_size >= num_tokens:
            return num_tokens
        allowed = (sorted_gains[:, self.active_size - 1 : -1] > sorted_gains[:, self.active_size :]).all(dim=0)
        offsets = allowed.nonzero()
        return self.active_size + int(offsets[0]) if len(offsets) else num_tokens

    def pick(self) -> torch.Tensor:
        """Pick the next token of every problem and update the active set and M; returns (problems,) indices."""
        while True:
            gains = (self.active_weights * self.active_quadratic).masked_fill_(self.active_taken, float("-inf"))
            best_gain, slot = gains.max(dim=-1)  # first maximum, so the lowest index among ties
            if bool((best_gain > self.bound).all()):
                break
            self.refresh()

        picked = self.active[self.rows, slot]
        self.active_taken[self.rows, slot] = True
        vector = self.active_values[self.rows, slot]  # (problems, d)
        weight = self.active_weights[self.rows, slot]
        direction = (self.inverse * vector[:, None, :]).sum(dim=-1)  # M u_s
        coefficient = weight / (1 + weight * (vector * direction).sum(dim=-1))

        projection = (self.active_values * direction[:, None, :]).sum(dim=-1)  # u_iᵀ M u_s, (problems, size)
        self.active_quadratic -= coefficient[:, None] * projection.square()
        self.inverse -= coefficient[:, None, None] * (direction[:, :, None] * direction[:, None, :])

        self.pending_picks.append(picked)
        self.pending_directions.append(direction)
        self.pending_coefficients.append(coefficient)
        return picked


@dataclass
class CapKVGreedy(EvictionMethod):
    """Keeps the sinks and a set grown greedily by the largest increase of ½·log det(I + Σ_S w_i v_i v_iᵀ).

    CapKV, arXiv 2604.25975, iterative variant: where one-shot CapKV ranks tokens by ridge
    leverage against all candidates, this picks each token against the set kept so far, so a
    token that duplicates an already kept direction loses its gain. Weights as in CapKV's
    "paper" mode. Cost O(budget · seq_len · head_dim) per head.

    Parameters:
    - tau (5.0): relevance temperature.
    - num_sinks (4): leading tokens always kept and left out of A.
    """

    name = "capkv-greedy"
    needs_query_mean = True
    tau: float = 5.0
    num_sinks: int = 4

    def validate(self) -> None:
        if self.tau < 0:
            raise MethodError(f"invalid capkv-greedy tau={self.tau}; expected a number >= 0")
        if self.num_sinks < 0:
            raise MethodError(f"invalid capkv-greedy num_sinks={self.num_sinks}; expected an integer >= 0")

    @property
    def num_sinks_needed(self) -> int:
        return self.num_sinks

    def min_budget(self) -> int:
        return self.num_sinks + 1

    def always_kept(self, seq_len: int, device: torch.device) -> torch.Tensor:
        return torch.arange(seq_len, device=device) < self.num_sinks

    def score(self, layer: LayerInputs) -> torch.Tensor:
        raise MethodError("capkv-greedy picks tokens for a given budget and has no budget-free score to wrap")

    def select(self, layer: LayerInputs, budget: int) -> torch.Tensor:
        batch, num_kv_heads, seq_len, _ = layer.keys.shape
        device = layer.keys.device
        if budget >= seq_len:
            return torch.arange(seq_len, device=device).expand(batch, num_kv_heads, seq_len)

        sinks = min(self.num_sinks, seq_len)
        weights = capacity_weights(relevance(layer)[..., sinks:], self.tau)
        picks = greedy_log_det(layer.values[:, :, sinks:].float(), weights, budget - sinks) + sinks
        sink_indices = torch.arange(sinks, device=device).expand(batch, num_kv_heads, sinks)
        return torch.cat([sink_indices, picks], dim=-1).sort(dim=-1).values
