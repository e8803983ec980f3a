"""StreamingLLM: attention sinks plus a window of the most recent tokens."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from capkv.methods.base import EvictionMethod, LayerInputs, MethodError


@dataclass
class StreamingLLM(EvictionMethod):
    """Keeps the first `num_sinks` tokens and the most recent `budget - num_sinks` tokens.

    Xiao et al., "Efficient Streaming Language Models with Attention Sinks", arXiv 2309.17453.

    Parameters:
    - num_sinks (4): leading tokens always kept, because attention mass collects on them.
    """

    name = "streaming_llm"
    decode_policy = "rolling"
    num_sinks: int = 4

    def validate(self) -> None:
        if self.num_sinks < 0:
            raise MethodError(f"invalid streaming_llm num_sinks={self.num_sinks}; expected an integer >= 0")

    def min_budget(self) -> int:
        return self.num_sinks + 1

    def always_kept(self, seq_len: int, device: torch.device) -> torch.Tensor:
        return torch.arange(seq_len, device=device) < self.num_sinks

    def score(self, layer: LayerInputs) -> torch.Tensor:
        positions = torch.arange(layer.seq_len, device=layer.keys.device, dtype=torch.float32)
        return positions.expand(*layer.keys.shape[:3])  # later tokens score higher
