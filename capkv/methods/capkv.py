"""CapKV: keep the tokens that add most to the information capacity of the kept cache."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from capkv.methods.base import EvictionMethod, LayerInputs, MethodError


def relevance(layer: LayerInputs) -> torch.Tensor:
    """Dot product of each key with the mean prompt query of its KV head's group.

    Returns (batch, num_kv_heads, seq_len) in float32.
    """
    query_mean = layer.capture.query_mean  # (batch, num_heads, head_dim)
    group = query_mean.shape[1] // layer.num_kv_heads
    kv_query_mean = query_mean.view(query_mean.shape[0], layer.num_kv_heads, group, -1).mean(dim=2)
    return torch.einsum("bhtd,bhd->bht", layer.keys.float(), kv_query_mean)


def capacity_weights(relevance_scores: torch.Tensor, tau: float) -> torch.Tensor:
    """w_i = exp(tau * (a_i - max_j a_j)); subtracting the max per head avoids overflow."""
    scaled = tau * relevance_scores
    return torch.exp(scaled - scaled.amax(dim=-1, keepdim=True))


def leverage_scores(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Ridge leverage s_i = w_i u_i^T A^{-1} u_i with A = I + sum_j w_j u_j u_j^T.

    values: (batch, heads, n, d) in float32, weights: (batch, heads, n). Returns (batch, heads, n).
    """
    head_dim = values.shape[-1]
    identity = torch.eye(head_dim, dtype=values.dtype, device=values.device)
    gram = torch.einsum("bhnd,bhn,bhne->bhde", values, weights, values) + identity  # (batch, heads, d, d)
    cholesky = torch.linalg.cholesky(gram)
    solved = torch.cholesky_solve(values.transpose(-1, -2), cholesky)  # (batch, heads, d, n) = A^{-1} U^T
    return weights * (values * solved.transpose(-1, -2)).sum(dim=-1)


def log_capacity(values: torch.Tensor, weights: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """½ · log det(I + sum_{i in kept} w_i v_i v_i^T) per (batch, head).

    values: (batch, heads, seq_len, d), weights: (batch, heads, seq_len), kept: (batch, heads, k).
    """
    kept_values = values.gather(2, kept[..., None].expand(-1, -1, -1, values.shape[-1])).float()
    kept_weights = weights.gather(2, kept).float()
    identity = torch.eye(values.shape[-1], dtype=torch.float32, device=values.device)
    gram = torch.einsum("bhnd,bhn,bhne->bhde", kept_values, kept_weights, kept_values) + identity
    return 0.5 * torch.linalg.slogdet(gram).logabsdet


@dataclass
class CapKV(EvictionMethod):
    """Keeps the tokens with the highest ridge leverage under relevance weights, plus the sinks.

    CapKV, arXiv 2604.25975. The mutual information between future attention outputs and the
    kept set S is ½·log det(I + Σ_{i∈S} w_i v_i v_iᵀ); the leverage score s_i approximates each
    token's share of it, balancing query relevance (w) against new directions in value space.
    In "paper" mode w_i = exp(τ·⟨k_i, μ_q⟩ − max), μ_q the mean prompt query of the head.

    Parameters:
    - tau (5.0): relevance temperature; 0 makes the scores independent of queries and keys.
    - num_sinks (4): leading tokens always kept and left out of A.
    - mode ("paper"): the relevance variant.
    """

    name = "capkv"
    needs_query_mean = True
    tau: float = 5.0
    num_sinks: int = 4
    mode: str = "paper"

    def validate(self) -> None:
        if self.tau < 0:
            raise MethodError(f"invalid capkv tau={self.tau}; expected a number >= 0")
        if self.num_sinks < 0:
            raise MethodError(f"invalid capkv num_sinks={self.num_sinks}; expected an integer >= 0")
        if self.mode not in ("paper",):
            raise MethodError(f"invalid capkv mode={self.mode!r}; expected 'paper'")

    def min_budget(self) -> int:
        return self.num_sinks + 1

    def always_kept(self, seq_len: int, device: torch.device) -> torch.Tensor:
        return torch.arange(seq_len, device=device) < self.num_sinks

    def score(self, layer: LayerInputs) -> torch.Tensor:
        sinks = min(self.num_sinks, layer.seq_len)
        candidate_relevance = relevance(layer)[..., sinks:]
        weights = capacity_weights(candidate_relevance, self.tau)
        scores = leverage_scores(layer.values[:, :, sinks:].float(), weights)
        return torch.nn.functional.pad(scores, (sinks, 0), value=0.0)  # sinks are kept through always_kept
