"""CapKV greedy: grow the kept set one token at a time by the largest gain in log det."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from capkv.methods.base import EvictionMethod, LayerInputs, MethodError
from capkv.methods.capkv import capacity_weights, relevance


def greedy_log_det(values: torch.Tensor, weights: torch.Tensor, count: int) -> torch.Tensor:
    """Pick `count` tokens per (batch, head) greedily maximising log det(I + Σ_S w_i u_i u_iᵀ).

    values: (batch, heads, n, d) float, weights: (batch, heads, n). Returns the picked indices
    (batch, heads, count) in pick order. Adding token i to S raises log det by log(1 + w_i u_iᵀ M u_i)
    with M = A_S⁻¹; Sherman–Morrison updates M and every u_iᵀ M u_i in O(n·d) per pick.
    """
    batch, heads, num_tokens, head_dim = values.shape
    quadratic = (values * values).sum(dim=-1)  # u_iᵀ M u_i with M = I, (batch, heads, n)
    inverse = torch.eye(head_dim, dtype=values.dtype, device=values.device).expand(batch, heads, -1, -1).clone()
    taken = torch.zeros(batch, heads, num_tokens, dtype=torch.bool, device=values.device)
    picks = []
    for _ in range(min(count, num_tokens)):
        gains = torch.log1p(weights * quadratic).masked_fill(taken, float("-inf"))
        best = gains.argmax(dim=-1)  # (batch, heads)
        picks.append(best)
        taken.scatter_(-1, best[..., None], True)

        vector = values.gather(2, best[..., None, None].expand(-1, -1, 1, head_dim)).squeeze(2)  # (batch, heads, d)
        weight = weights.gather(2, best[..., None]).squeeze(-1)  # (batch, heads)
        direction = torch.einsum("bhij,bhj->bhi", inverse, vector)  # M u_s
        denominator = 1 + weight * (vector * direction).sum(dim=-1)
        projection = torch.einsum("bhnd,bhd->bhn", values, direction)  # u_iᵀ M u_s
        quadratic = quadratic - weight[..., None] * projection**2 / denominator[..., None]
        outer = direction[..., :, None] * direction[..., None, :]
        inverse = inverse - (weight / denominator)[..., None, None] * outer
    return torch.stack(picks, dim=-1) if picks else torch.zeros(batch, heads, 0, dtype=torch.long)


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
