"""Knorm: keep the keys with the smallest L2 norm."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from capkv.methods.base import EvictionMethod, LayerInputs


@dataclass
class KNorm(EvictionMethod):
    """Keeps the tokens whose keys have the lowest L2 norm, which tend to draw the most attention.

    Devoto et al., arXiv 2406.11430. Needs no queries, so it works with any attention implementation.
    The norm is taken in float32 so that bf16 caches do not tie distinct keys. No parameters.
    """

    name = "knorm"

    def score(self, layer: LayerInputs) -> torch.Tensor:
        return -torch.linalg.vector_norm(layer.keys.float(), dim=-1)  # (batch, num_kv_heads, seq_len)
