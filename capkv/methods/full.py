"""The full cache: the reference every eviction method is compared against."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from capkv.methods.base import EvictionMethod, LayerInputs


@dataclass
class FullCache(EvictionMethod):
    """Keeps every token. Takes no parameters and ignores the budget."""

    name = "full"
    evicts = False

    def score(self, layer: LayerInputs) -> torch.Tensor:
        return torch.zeros(layer.keys.shape[:3], device=layer.keys.device)
