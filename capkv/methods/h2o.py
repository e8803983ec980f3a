"""H2O: keep the heavy hitters (tokens that received the most attention) and the recent tokens."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from capkv.methods.base import EvictionMethod, LayerInputs, MethodError


@dataclass
class H2O(EvictionMethod):
    """Keeps the tokens with the most accumulated attention, plus the most recent ones.

    Zhang et al., "H2O: Heavy-Hitter Oracle", arXiv 2306.14048. A token's score is the attention
    it received from every query so far, divided by the number of queries that could see it, so
    early tokens are not favoured only for being old. Scores of the query heads of a group are
    averaged. Natively a decode-time policy: the attention of each generated token is added and
    the lowest-scored token outside the recent window is evicted.

    Parameters:
    - recent_ratio (0.5): share of the budget given to the most recent tokens.
    """

    name = "h2o"
    needs_attention_sums = True
    decode_policy = "accumulated_attention"
    recent_ratio: float = 0.5

    def validate(self) -> None:
        if not 0 <= self.recent_ratio < 1:
            raise MethodError(f"invalid h2o recent_ratio={self.recent_ratio}; expected a number in [0, 1)")

    def score(self, layer: LayerInputs) -> torch.Tensor:
        capture = layer.capture
        if capture.attention_sums is None or capture.attention_counts is None:
            raise MethodError(
                f"h2o needs the attention sums of layer {layer.layer_idx}; prefill with attention_sums=True"
            )
        seq_len = layer.seq_len
        sums = capture.attention_sums[..., :seq_len]  # (batch, num_heads, seq_len)
        batch, num_heads, _ = sums.shape
        grouped = sums.view(batch, layer.num_kv_heads, num_heads // layer.num_kv_heads, seq_len).mean(dim=2)
        # counts: (seq_len,) after the prefill, (batch, num_kv_heads, seq_len) while decoding
        return grouped / capture.attention_counts[..., :seq_len].clamp(min=1)

    def select(self, layer: LayerInputs, budget: int) -> torch.Tensor:
        batch, num_kv_heads, seq_len, _ = layer.keys.shape
        device = layer.keys.device
        if budget >= seq_len:
            return torch.arange(seq_len, device=device).expand(batch, num_kv_heads, seq_len)

        recent = int(budget * self.recent_ratio)
        scores = self.shared_score(layer).to(torch.float32, copy=True)
        scores[..., seq_len - recent :] = float("inf")
        return scores.topk(budget, dim=-1).indices.sort(dim=-1).values
