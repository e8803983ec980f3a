"""Time compression per method with scores shared across ratios and with every ratio scoring again.

Each needle sample is prefilled once. Its cache is then compressed for every (ratio, method) pair
twice: once with scores shared as `compress` does (a method scores a layer once per prefill), and
once with sharing switched off (`score_memo=None`), so every ratio scores the cache again. The two
modes alternate which goes first from one sample to the next, and the kept tokens of the two are
checked to be identical.

    .venv/bin/python -u bench/compression_time.py --dtype float32 --samples 2
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections import Counter
from pathlib import Path

import torch
from transformers.utils import logging as transformers_logging

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import build_benchmark  # noqa: E402
from benchmarks.prompt import build_prompt  # noqa: E402
from capkv import build_method, compress, prefill, prefill_options  # noqa: E402
from workers.models import load_model  # noqa: E402

# Python puts the script's folder, bench/, first on the import path.
from needle_matrix import add_matrix_arguments  # noqa: E402

MODES = ("shared", "per ratio")


def same_kept(first: list, second: list) -> bool:
    """Tell whether two compressions kept the same tokens in every layer (None is a layer left whole)."""
    for a, b in zip(first, second):
        if (a is None) != (b is None) or (a is not None and not torch.equal(a, b)):
            return False
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_matrix_arguments(parser, methods_help="methods to compress with")
    args = parser.parse_args()
    transformers_logging.disable_progress_bar()

    loaded = load_model(args.model, dtype=args.dtype, device="cpu")
    samples = build_benchmark("needle", context_length=args.context_length).load(loaded.tokenizer, args.samples, seed=0)
    methods = [build_method(name) for name in args.methods]
    print(f"{len(methods)} methods x {len(args.ratios)} ratios x {len(samples)} needle samples at "
          f"{args.context_length} tokens, {args.dtype}; load average {os.getloadavg()[0]:.2f}", flush=True)

    seconds = {mode: Counter() for mode in MODES}
    mismatches = 0
    for index, sample in enumerate(samples):
        prompt = build_prompt(loaded.tokenizer, sample, chat_template=True, query_aware=False)
        prefilled = prefill(loaded.model, torch.tensor([prompt.context_ids]), **prefill_options(methods))
        kept = {}
        for mode in MODES if index % 2 == 0 else reversed(MODES):
            # A new memo per mode, so the shared mode scores this sample from scratch too.
            source = dataclasses.replace(prefilled, score_memo={} if mode == "shared" else None)
            for ratio in args.ratios:
                for method in methods:
                    compressed = compress(loaded.model, source, method, ratio=ratio)
                    seconds[mode][method.label] += compressed.seconds
                    kept[mode, ratio, method.label] = compressed.kept_indices
        mismatches += sum(not same_kept(kept["shared", ratio, method.label], kept["per ratio", ratio, method.label])
                          for ratio in args.ratios for method in methods)

    print(f"{'method':<20} {'per ratio (s)':>14} {'shared (s)':>11} {'ratio':>7}")
    for method in methods:
        before, after = seconds["per ratio"][method.label], seconds["shared"][method.label]
        print(f"{method.label:<20} {before:>14.3f} {after:>11.3f} {before / after:>6.2f}x")
    before, after = sum(seconds["per ratio"].values()), sum(seconds["shared"].values())
    print(f"{'all':<20} {before:>14.3f} {after:>11.3f} {before / after:>6.2f}x")
    pairs = len(samples) * len(args.ratios) * len(methods)
    print(f"kept tokens identical in {pairs - mismatches} of {pairs} compressions; "
          f"load average {os.getloadavg()[0]:.2f}")
    return 0 if mismatches == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
