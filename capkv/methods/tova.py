"""TOVA: keep the tokens the current query attends to, one token set per layer."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from capkv.methods.base import EvictionMethod, LayerInputs
from capkv.methods.snapkv import window_attention


@dataclass
class TOVA(EvictionMethod):
    """Keeps the tokens with the highest attention from the last query, averaged over all query heads.

    TOVA, Oren et al., arXiv 2401.06104. Every KV head of a layer
    keeps the same tokens. The last token is always kept (its own attention weight is usually the
    largest). Natively a decode-time policy: each generated token evicts the lowest-scored one.
    No parameters.
    """

    name = "tova"
    decode_policy = "current_attention"

    @property
    def window_size(self) -> int:
        return 1

    def min_budget(self) -> int:
        return 2

    def always_kept(self, seq_len: int, device: torch.device) -> torch.Tensor:
        return torch.arange(seq_len, device=device) == seq_len - 1

    def score(self, layer: LayerInputs) -> torch.Tensor:
        attention = window_attention(layer, 1)[:, :, 0, :-1]  # (batch, num_heads, seq_len - 1)
        scores = attention.mean(dim=1, keepdim=True).expand(-1, layer.num_kv_heads, -1)
        return F.pad(scores, (0, 1), value=0.0)  # the last token is kept through always_kept
