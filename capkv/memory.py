"""Physical memory accounting for caches: bytes actually stored, not tokens reported."""

from __future__ import annotations

import resource
import sys

import torch


def cache_bytes(cache) -> int:
    """Sum of `nbytes` of every key and value tensor stored in a transformers cache."""
    total = 0
    for layer in cache.layers:
        for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(tensor, torch.Tensor):
                total += tensor.nbytes
    return total


def peak_memory_bytes(device: torch.device | str) -> int:
    """CUDA peak allocated bytes on a GPU, else the process's resident-set high-water mark."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # Linux reports KiB, macOS bytes
