"""Command-line options shared by the benchmarks that run a (method, ratio) matrix over needle samples."""

from __future__ import annotations

import argparse

# The 9 methods of the throughput comparison with kvpress.
METHODS = ["streaming_llm", "snapkv", "tova", "knorm", "keydiff", "expected_attention", "capkv", "random", "adakv"]
RATIOS = [0.5, 0.75, 0.875, 0.9375]


def add_matrix_arguments(parser: argparse.ArgumentParser, methods_help: str) -> None:
    """Add --model, --dtype, --samples, --context-length, --methods and --ratios to `parser`."""
    parser.add_argument("--model", default="smollm2-135m", help="bundled model name, folder or hub id")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="model dtype")
    parser.add_argument("--samples", type=int, default=2, help="needle samples")
    parser.add_argument("--context-length", type=int, default=2000, help="needle context length in tokens")
    parser.add_argument("--methods", nargs="+", default=METHODS, help=methods_help)
    parser.add_argument("--ratios", type=float, nargs="+", default=RATIOS,
                        help="compression ratios: the share of context tokens evicted")
