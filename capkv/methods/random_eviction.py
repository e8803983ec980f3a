"""Random eviction: the floor any scoring method has to beat."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from capkv.methods.base import EvictionMethod, LayerInputs


@dataclass
class RandomEviction(EvictionMethod):
    """Keeps a uniformly random subset of tokens per KV head, reproducible from `seed`.

    Scores are drawn from a generator seeded with (seed, layer, next position), so two runs with
    the same seed keep the same tokens, and layers and decode-time re-compressions draw anew.

    Parameters:
    - seed (0): random seed.
    """

    name = "random"
    seed: int = 0

    def score(self, layer: LayerInputs) -> torch.Tensor:
        generator = torch.Generator(device=layer.keys.device)
        generator.manual_seed(hash((self.seed, layer.layer_idx, layer.future_start)) & 0x7FFF_FFFF_FFFF_FFFF)
        return torch.rand(layer.keys.shape[:3], generator=generator, device=layer.keys.device)
