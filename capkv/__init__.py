"""KV-cache eviction library: prefill with query capture, per-head compression, decode at true positions.

Depends on torch and transformers only, so it can be imported without the rest of capkv-eval.
"""

from capkv.capacity import capacity
from capkv.capture import LayerCapture, capture_queries
from capkv.decode_eviction import DecodeEviction
from capkv.decoding import Sampling
from capkv.engine import CompressedCache, Generation, Prefill, compress, generate, prefill, prefill_options
from capkv.memory import cache_bytes
from capkv.methods import build_method, list_methods

__all__ = [
    "CompressedCache",
    "DecodeEviction",
    "Generation",
    "LayerCapture",
    "Prefill",
    "Sampling",
    "build_method",
    "cache_bytes",
    "capacity",
    "capture_queries",
    "compress",
    "generate",
    "list_methods",
    "prefill",
    "prefill_options",
]
