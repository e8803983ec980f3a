"""Expected Attention: keep the tokens that future queries are expected to attend to."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from capkv.methods.base import EvictionMethod, LayerInputs, MethodError
from capkv.methods.rope import mean_future_rotation


@dataclass
class ExpectedAttention(EvictionMethod):
    """Keeps the tokens with the highest expected attention from future queries, times their value norm.

    Future queries are modelled as Gaussian with the mean μ and covariance Σ of the pre-RoPE prompt
    queries (after the sinks), rotated by the mean RoPE matrix R of the next `future_positions`
    positions. For a Gaussian q, E[exp(qᵀk/√d)] = exp(μᵀk/√d + kᵀΣk/(2d)), so the score is the
    softmax over tokens of that exponent, averaged over the query heads of a KV head and scaled by
    ‖v_i‖. Follows kvpress 0.5.5's ExpectedAttentionPress, including its defaults.

    Parameters:
    - num_sinks (4): leading tokens always kept and left out of the query statistics.
    - future_positions (512): positions averaged for the RoPE rotation.
    - use_covariance (True): include the kᵀΣk/(2d) term.
    - use_vnorm (True): multiply by the value norm.
    - epsilon (0.0): added to the expected attention before the value-norm scaling.
    """

    name = "expected_attention"
    needs_query_covariance = True
    needs_rope = True
    num_sinks: int = 4
    future_positions: int = 512
    use_covariance: bool = True
    use_vnorm: bool = True
    epsilon: float = 0.0

    def validate(self) -> None:
        if self.num_sinks < 0:
            raise MethodError(f"invalid expected_attention num_sinks={self.num_sinks}; expected an integer >= 0")
        if self.future_positions < 1:
            raise MethodError(
                f"invalid expected_attention future_positions={self.future_positions}; expected an integer >= 1"
            )
        if self.epsilon < 0:
            raise MethodError(f"invalid expected_attention epsilon={self.epsilon}; expected a number >= 0")

    @property
    def num_sinks_needed(self) -> int:
        return self.num_sinks

    def min_budget(self) -> int:
        return self.num_sinks + 1

    def always_kept(self, seq_len: int, device: torch.device) -> torch.Tensor:
        return torch.arange(seq_len, device=device) < self.num_sinks

    def score(self, layer: LayerInputs) -> torch.Tensor:
        capture = layer.capture
        if capture.prerope_query_mean is None or (self.use_covariance and capture.prerope_covariance is None):
            raise MethodError(
                f"expected_attention needs the pre-RoPE query mean and covariance of layer {layer.layer_idx}; "
                "prefill with second_moment=True"
            )
        sinks = min(self.num_sinks, layer.seq_len)
        keys = layer.keys[:, :, sinks:]
        batch, num_kv_heads, candidates, head_dim = keys.shape
        rotation = mean_future_rotation(
            layer.rotary_emb, layer.module, layer.future_start, self.future_positions, head_dim, keys.device, keys.dtype
        )
        mean = torch.matmul(capture.prerope_query_mean.to(keys.dtype), rotation.T)  # (batch, num_heads, head_dim)
        group = mean.shape[1] // num_kv_heads

        keys_t = keys.repeat_interleave(group, dim=1).transpose(2, 3)  # (batch, num_heads, head_dim, candidates)
        exponent = torch.matmul(mean[:, :, None], keys_t).squeeze(2) / math.sqrt(head_dim)
        if self.use_covariance:
            covariance = torch.matmul(rotation, torch.matmul(capture.prerope_covariance.to(keys.dtype), rotation.T))
            exponent = exponent + torch.einsum("bhin,bhij,bhjn->bhn", keys_t, covariance, keys_t) / head_dim / 2
        if layer.valid is not None:  # padding slots of a ragged cache get no attention
            exponent = exponent.masked_fill(~layer.valid[:, :, sinks:].repeat_interleave(group, dim=1), float("-inf"))
        scores = F.softmax(exponent, dim=-1).view(batch, num_kv_heads, group, candidates).mean(dim=2)

        if self.use_vnorm:
            scores = (scores + self.epsilon) * layer.values[:, :, sinks:].norm(dim=-1)
        return F.pad(scores.float(), (sinks, 0), value=0.0)  # sinks are kept through always_kept
