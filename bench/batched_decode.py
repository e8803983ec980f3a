"""Compare batched greedy decoding of compressed caches with decoding each cache alone.

Each needle sample is prefilled once and compressed by every method at every compression ratio.
The caches of a sample are split into batches as the worker splits them
(`capkv.batched.decoding_batches`): with `--mix-shapes on`, caches of every shape, Ada-KV's
ragged heads included, share batches of up to `MAX_MIXED_ROWS` rows; with `off`, only caches of
equal shapes share one. Each batch of two or more is decoded three ways, one after the other:

- one by one with `capkv.generate`, the reference;
- with `capkv.batched.generate_batched` as the worker runs it (`exact=True`: in bfloat16 the
  linear layers that `batch_dependent_linears` finds run row by row);
- with every layer batched (`exact=False`), unless `--skip-unsplit`.

The script prints how many rows give the reference's tokens and the time of each way.

    .venv/bin/python -u bench/batched_decode.py --dtype bfloat16 --samples 2 --max-new-tokens 24
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from transformers.utils import logging as transformers_logging

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import build_benchmark  # noqa: E402
from benchmarks.prompt import build_prompt  # noqa: E402
from capkv import build_method, compress, generate, prefill, prefill_options  # noqa: E402
from capkv.batched import batch_dependent_linears, decoding_batches, generate_batched  # noqa: E402
from workers.fidelity import copy_cache  # noqa: E402
from workers.models import load_model, stop_token_ids  # noqa: E402

# Python puts the script's folder, bench/, first on the import path.
from needle_matrix import add_matrix_arguments  # noqa: E402


PROBED_ROW_COUNTS = (2, 3, 5, 8, 13, 18, 24, 31, 32, 33, 40, 64)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_matrix_arguments(parser, methods_help="methods, one cache each per ratio")
    parser.add_argument("--max-new-tokens", type=int, default=24, help="tokens decoded per cache")
    parser.add_argument("--mix-shapes", choices=["on", "off"], default="on",
                        help="on: every cache of a sample in batches of up to capkv.batched.MAX_MIXED_ROWS rows, "
                             "whatever its shape; off: only caches of equal shapes share a batch")
    parser.add_argument("--skip-unsplit", action="store_true", help="do not decode with every layer batched")
    args = parser.parse_args()
    transformers_logging.disable_progress_bar()

    loaded = load_model(args.model, dtype=args.dtype, device="cpu")
    model = loaded.model
    stops = stop_token_ids(loaded)
    methods = [build_method(name) for name in args.methods]
    print(f"{args.model} in {args.dtype}, {len(methods)} methods x {len(args.ratios)} ratios x {args.samples} needle "
          f"samples at {args.context_length} tokens, {args.max_new_tokens} tokens each; "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)

    ways = ["exact"] if args.skip_unsplit else ["exact", "unsplit"]
    seconds = {"alone": 0.0, **{way: 0.0 for way in ways}}
    identical = {way: 0 for way in ways}
    differing: dict[str, list[str]] = {way: [] for way in ways}
    rows = 0
    batch_sizes: list[int] = []
    # Linear layers that run row by row, per (rows, tokens per row) of a batched forward pass.
    split_layers: dict[tuple[int, int], int] = {}
    benchmark = build_benchmark("needle", context_length=args.context_length)
    for sample in benchmark.load(loaded.tokenizer, args.samples, seed=0):
        prompt = build_prompt(loaded.tokenizer, sample, chat_template=True, query_aware=False)
        prefilled = prefill(model, torch.tensor([prompt.context_ids]), **prefill_options(methods))
        suffix = torch.tensor([prompt.suffix_ids])
        labels, caches = [], []
        for ratio in args.ratios:
            for method in methods:
                labels.append(f"{method.name}@{ratio} {sample.sample_id}")
                caches.append(compress(model, prefilled, method, ratio=ratio))
        for group in decoding_batches(model, caches, exact_only=False, mix_shapes=args.mix_shapes == "on"):
            if len(group) < 2:
                continue
            members = [caches[index] for index in group]
            batch_sizes.append(len(members))
            started = time.perf_counter()
            expected = [generate(model, copy_cache(item.cache), prefilled.context_length, args.max_new_tokens,
                                 stops, suffix_ids=suffix).token_ids for item in members]
            seconds["alone"] += time.perf_counter() - started
            rows += len(members)
            # Probed here, before the timing: the question step, then the one-token steps.
            for shape in ((len(members), suffix.shape[1]), (len(members), 1)):
                split_layers[shape] = len(batch_dependent_linears(model, *shape))
            for way in ways:
                started = time.perf_counter()
                batch = generate_batched(model, members, prefilled.context_length, args.max_new_tokens, stops,
                                         suffix_ids=suffix, exact=way == "exact")
                seconds[way] += time.perf_counter() - started
                for index, generation, tokens in zip(group, batch, expected):
                    if generation.token_ids == tokens:
                        identical[way] += 1
                    else:
                        differing[way].append(labels[index])
        print(f"sample {sample.sample_id} done; load average {os.getloadavg()[0]:.2f}", flush=True)

    # Why MAX_MIXED_ROWS: one-token rows, as in every decoding step, at row counts on both sides of it.
    one_token = {rows: len(batch_dependent_linears(model, rows)) for rows in PROBED_ROW_COUNTS}
    print("linear layers whose product of one-token rows changes with the batch: " + ", ".join(
        f"{count} at {rows} rows" for rows, count in one_token.items()))
    print("linear layers run row by row: " + "; ".join(
        f"{count} for {batch} rows of {tokens} token(s)" for (batch, tokens), count in sorted(split_layers.items())))
    print(f"batches of {', '.join(map(str, batch_sizes))} rows")
    print(f"one by one: {rows} rows in {seconds['alone']:.1f} s")
    for way in ways:
        label = "batched as the worker runs it" if way == "exact" else "batched, every layer"
        print(f"{label}: {identical[way]} of {rows} rows identical, {seconds[way]:.1f} s "
              f"({seconds['alone'] / seconds[way]:.2f}x faster than one by one); differing: "
              f"{', '.join(differing[way]) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
