"""KeyDiff: keep the keys that differ most from the average key direction."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from capkv.methods.base import EvictionMethod, LayerInputs


@dataclass
class KeyDiff(EvictionMethod):
    """Keeps the tokens whose keys point away from the mean of the normalised keys of their head.

    KeyDiff, arXiv 2504.15364. The score is −cos(k_i, mean_j k_j/‖k_j‖),
    so distinctive keys survive. Scored once over the whole prompt here; the paper's block-wise
    prefill corresponds to decode-time eviction with interval = block size. No parameters.
    """

    name = "keydiff"

    def score(self, layer: LayerInputs) -> torch.Tensor:
        keys = layer.keys.float()
        anchor = F.normalize(keys, p=2, dim=-1).mean(dim=2, keepdim=True)  # (batch, num_kv_heads, 1, head_dim)
        return -F.cosine_similarity(keys, anchor, dim=-1)  # (batch, num_kv_heads, seq_len)
