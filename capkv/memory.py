"""Physical memory accounting for caches: bytes actually stored, not tokens reported."""

from __future__ import annotations

import resource
import sys

import torch


def cache_bytes(cache) -> int:
    """Sum of `nbytes` of every tensor stored in a transformers cache, padding and offsets included.

    Layers that define `stored_tensors()` (ragged layers) report their own storage; other layers
    count their `keys` and `values`.
    """
    total = 0
    for layer in cache.layers:
        if hasattr(layer, "stored_tensors"):
            tensors = layer.stored_tensors()
        else:
            tensors = [getattr(layer, "keys", None), getattr(layer, "values", None)]
        total += sum(tensor.nbytes for tensor in tensors if isinstance(tensor, torch.Tensor))
    return total


def peak_memory_bytes(device: torch.device | str) -> int:
    """CUDA peak allocated bytes on a GPU, else the process's resident-set high-water mark."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # Linux reports KiB, macOS bytes
