"""Compare the physical cache bytes each method keeps with budget / context length.

Every registered method compresses the same prefilled essay prompt at each budget. The table shows
kept bytes / full-cache bytes (sums of `nbytes` of every stored tensor, padding and per-head
length tensors included) next to budget / length, and their relative gap. Methods that spread one
total over layers (PyramidKV) or heads (Ada-KV) are compared with the same overall budget.

    .venv/bin/python bench/memory_ratio.py --tokens 2048 --budgets 128 512
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
from transformers.utils import logging as transformers_logging

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.haystack import haystack_token_ids  # noqa: E402
from capkv import build_method, cache_bytes, compress, list_methods, prefill, prefill_options  # noqa: E402
from workers.models import load_model  # noqa: E402

TOLERANCE = 0.01  # relative gap the table flags as met


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="bundled model name, folder or hub id")
    parser.add_argument("--dtype", default="bfloat16", help="model dtype")
    parser.add_argument("--tokens", type=int, default=2048, help="prompt length in tokens")
    parser.add_argument("--budgets", type=int, nargs="+", default=[128, 512], help="tokens kept per KV head")
    parser.add_argument("--methods", nargs="*", default=None, help="methods to measure (default: every registered one)")
    args = parser.parse_args()

    transformers_logging.disable_progress_bar()
    loaded = load_model(args.model, dtype=args.dtype, device="cpu")
    input_ids = torch.tensor([list(haystack_token_ids(loaded.tokenizer))[: args.tokens]])
    names = args.methods or list_methods()
    print(f"model {args.model} {args.dtype}, {args.tokens} tokens, load average {os.getloadavg()[0]:.2f}")
    print(f"{'method':<20} {'budget':>6} {'kept/full bytes':>16} {'budget/length':>14} {'gap':>8}  within 1%")

    failures = 0
    for name in names:
        method = build_method(name)
        prefilled = prefill(loaded.model, input_ids, **prefill_options([method]))
        full_bytes = cache_bytes(prefilled.cache)
        for budget in args.budgets:
            compressed = compress(loaded.model, prefilled, method, budget if method.evicts else None)
            kept_share = compressed.kv_bytes / full_bytes
            target = min(budget, args.tokens) / args.tokens if method.evicts else 1.0
            gap = kept_share / target - 1
            met = abs(gap) <= TOLERANCE
            failures += not met
            print(f"{name:<20} {budget:>6} {kept_share:>16.5f} {target:>14.5f} {gap:>+8.2%}  {'yes' if met else 'NO'}",
                  flush=True)
    print(f"{failures} of {len(names) * len(args.budgets)} rows outside {TOLERANCE:.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
