"""CapKV greedy: grow the kept set one token at a time by the largest gain in log det."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from capkv.methods.base import EvictionMethod, LayerInputs, MethodError
from capkv.methods.capkv import capacity_weights, relevance

# Steps between two checks for "every untaken candidate has weight 0". Each check copies one bool from the device.
ZERO_WEIGHT_CHECK_INTERVAL = 16


def greedy_log_det(values: torch.Tensor, weights: torch.Tensor, count: int) -> torch.Tensor:
    """Pick `count` tokens per (batch, head) greedily maximising log det(I + Σ_S w_i u_i u_iᵀ).

    values: (batch, heads, n, d) float, weights: (batch, heads, n) with w_i >= 0. Returns the picked
    indices (batch, heads, count) in pick order. Adding token i to S raises log det by
    log(1 + w_i q_i) with q_i = u_iᵀ M u_i and M = A_S⁻¹, so each step picks the largest w_i q_i
    (log1p is monotonic), ties going to the lowest index.

    Picking s updates M by Sherman–Morrison, M ← M − z zᵀ with z = √c · M u_s and
    c = w_s / (1 + w_s q_s), and every q_i by q_i ← q_i − (zᵀ u_i)²: one matrix-vector product
    per step, O(n·d + d²). Keeping √c inside z holds z in the normal float range when w_s is tiny.
    Once every untaken weight is 0, the remaining picks are the untaken tokens in index order.
    """
    batch, heads, num_tokens, head_dim = values.shape
    count = min(count, num_tokens)
    problems = batch * heads  # each (batch, head) pair is an independent selection
    device = values.device
    flat_values = values.reshape(problems * num_tokens, head_dim)
    weights = weights.reshape(problems, num_tokens).contiguous()
    # Per problem an (n, d) view of a contiguous (d, n) block, for one torch.mv per problem and step.
    # The loop avoids torch.bmm: on CPU it opens a parallel region on every call, and with 2 threads
    # on 2 loaded cores (torch 2.13) each call took ~8 ms where torch.mv took ~50 µs.
    token_rows = values.reshape(problems, num_tokens, head_dim).transpose(1, 2).contiguous().transpose(1, 2).unbind(0)

    quadratic = (values * values).sum(dim=-1).reshape(problems, num_tokens)  # q_i with M = I
    penalty = torch.zeros(problems, num_tokens, dtype=values.dtype, device=device)  # -inf once picked
    inverse = torch.eye(head_dim, dtype=values.dtype, device=device).repeat(problems, 1, 1)  # M, (problems, d, d)
    offsets = torch.arange(problems, device=device) * num_tokens
    gains = torch.empty_like(quadratic)
    projection = torch.empty_like(quadratic)  # zᵀ u_i, (problems, n)
    picks = []
    for step in range(count):
        if step % ZERO_WEIGHT_CHECK_INTERVAL == 0 and not bool(((weights != 0) & (penalty == 0)).any()):
            picks.append(_untaken_in_index_order(penalty, count - step))
            break

        torch.addcmul(penalty, weights, quadratic, out=gains)  # w_i q_i, -inf for picked tokens
        best = gains.argmax(dim=-1, keepdim=True)  # (problems, 1), first maximum
        picks.append(best)
        flat = (best + offsets[:, None]).view(-1)
        best_gain = gains.view(-1).index_select(0, flat)
        penalty.view(-1).index_fill_(0, flat, float("-inf"))

        vector = flat_values.index_select(0, flat)  # u_s, (problems, d)
        weight = weights.view(-1).index_select(0, flat)
        residual = (inverse * vector[:, None, :]).sum(dim=-1)  # M u_s, (problems, d)
        residual.mul_((weight / (best_gain + 1)).sqrt_()[:, None])  # z
        for rows, residual_row, projection_row in zip(token_rows, residual.unbind(0), projection.unbind(0)):
            torch.mv(rows, residual_row, out=projection_row)
        quadratic.addcmul_(projection, projection, value=-1)
        inverse.addcmul_(residual[:, :, None], residual[:, None, :], value=-1)
    if not picks:
        return torch.zeros(batch, heads, 0, dtype=torch.long, device=device)
    return torch.cat(picks, dim=-1).reshape(batch, heads, count)


def _untaken_in_index_order(penalty: torch.Tensor, count: int) -> torch.Tensor:
    """Return the first `count` untaken indices per problem, ascending.

    Once every untaken weight is 0, this is the greedy order. Every remaining gain is then 0, so ties
    send the picks in index order, and a pick with c = 0 changes neither M nor any q.
    """
    problems, num_tokens = penalty.shape
    untaken = penalty == 0  # (problems, n), the same number of untaken tokens in every problem
    indices = torch.arange(num_tokens, device=penalty.device).expand(problems, -1)[untaken]
    return indices.view(problems, -1)[:, :count]


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
        # NOTE: in float32 most weights can underflow to 0 (SmolLM2, 1k-2k-token essay, tau = 5: a median
        # of ~90% of a head's tokens), so a large budget fills up with those tokens in index order, and
        # tokens whose gains are subnormal floats are ordered by rounding.
        picks = greedy_log_det(layer.values[:, :, sinks:].float(), weights, budget - sinks) + sinks
        sink_indices = torch.arange(sinks, device=device).expand(batch, num_kv_heads, sinks)
        return torch.cat([sink_indices, picks], dim=-1).sort(dim=-1).values
