"""Measure CapKV's scoring time as a share of the prefill time, at several prompt lengths of real essay text.

For each length, three things are timed side by side, in rotating order, `--repeats` times:
the plain prefill (a forward pass with a full cache and no query capture), the prefill with the
query capture CapKV reads, and `capkv.compress` with CapKV (scoring, top-k and the gather) on that
prefill. The minimum over repeats is reported, because on a shared machine the noise only adds time.
The last column is the share of candidate tokens whose CapKV weight is exactly 0: the scoring
leaves them out of its matrix products, so its time depends on the text as well as the length.

    .venv/bin/python bench/capkv_overhead.py --lengths 1024 2048 4096 8192 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from transformers import DynamicCache
from transformers.utils import logging as transformers_logging

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.haystack import haystack_token_ids  # noqa: E402
from capkv import build_method, compress, prefill, prefill_options  # noqa: E402
from capkv.engine import layer_inputs  # noqa: E402
from capkv.methods.capkv import capacity_weights, relevance  # noqa: E402
from workers.models import load_model  # noqa: E402


def plain_prefill_seconds(model, input_ids: torch.Tensor) -> float:
    """Time one forward pass that fills a full cache, with no hooks."""
    started = time.perf_counter()
    with torch.no_grad():
        model(input_ids=input_ids, past_key_values=DynamicCache(config=model.config), use_cache=True,
              logits_to_keep=1)
    return time.perf_counter() - started


def zero_weight_share(model, prefilled, method) -> float:
    """Return the share of CapKV's candidate weights (all layers and KV heads) that are exactly 0.

    `leverage_scores` leaves those tokens out of A and of the matrix products, so this share
    sets how much of the scoring's work the prompt needs.
    """
    zeros = total = 0
    for layer_idx, layer in enumerate(prefilled.cache.layers):
        capture = prefilled.captures[layer_idx].excluding(method.num_sinks)
        inputs = layer_inputs(model, layer_idx, layer.keys, layer.values, capture, prefilled.context_length)
        weights = capacity_weights(relevance(inputs)[..., method.num_sinks:], method.tau)
        zeros += int((weights == 0).sum())
        total += weights.numel()
    return zeros / total


def measure_length(model, token_ids: list[int], length: int, budget: int, repeats: int) -> dict[str, float]:
    """Return the minimum seconds over `repeats` of the plain prefill, the capturing prefill and the
    compression, and the share of zero weights."""
    method = build_method("capkv")
    input_ids = torch.tensor([token_ids[:length]])
    timings: dict[str, list[float]] = {"plain": [], "capture": [], "score": []}
    zero_share = 0.0
    for repeat in range(repeats):
        steps = ["plain", "capture"] if repeat % 2 == 0 else ["capture", "plain"]
        for step in steps:
            if step == "plain":
                timings["plain"].append(plain_prefill_seconds(model, input_ids))
                continue
            prefilled = prefill(model, input_ids, **prefill_options([method]))
            timings["capture"].append(prefilled.seconds)
            compressed = compress(model, prefilled, method, budget)
            timings["score"].append(compressed.seconds)
            zero_share = zero_weight_share(model, prefilled, method)
            del prefilled, compressed
    return {**{name: min(values) for name, values in timings.items()}, "zero_share": zero_share}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="bundled model name, folder or hub id")
    parser.add_argument("--dtype", default="bfloat16", help="model dtype")
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192], help="prompt lengths in tokens")
    parser.add_argument("--budget", type=int, default=256, help="tokens CapKV keeps per KV head")
    parser.add_argument("--repeats", type=int, default=3, help="timings per length; the minimum is reported")
    args = parser.parse_args()

    transformers_logging.disable_progress_bar()
    loaded = load_model(args.model, dtype=args.dtype, device="cpu")
    token_ids = list(haystack_token_ids(loaded.tokenizer))
    print(f"model {args.model} {args.dtype}, torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'tokens':>7} {'prefill s':>10} {'capture s':>10} {'score s':>8} {'score/prefill':>14} "
          f"{'capture overhead':>17} {'score s per 1k':>15} {'zero weights':>13}")
    for length in args.lengths:
        result = measure_length(loaded.model, token_ids, length, args.budget, args.repeats)
        share = result["score"] / result["plain"]
        capture_overhead = result["capture"] / result["plain"] - 1
        print(f"{length:>7} {result['plain']:>10.3f} {result['capture']:>10.3f} {result['score']:>8.3f} "
              f"{share:>13.1%} {capture_overhead:>16.1%} {result['score'] / length * 1000:>15.4f} "
              f"{result['zero_share']:>12.1%}  "
              f"(load average {os.getloadavg()[0]:.2f})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
