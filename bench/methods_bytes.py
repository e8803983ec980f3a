"""Measure the cache bytes every built-in method keeps after prefill compression and after decode-time eviction.

Both phases read one Paul Graham essay (the whole of `aord.txt`, 2,001 SmolLM2 tokens, by default).

- Prefill compression: the essay is prefilled once, and `capkv.compress` cuts a copy of the cache
  to `--budget` tokens per KV head for each method. The table gives `kv_bytes` over
  `capkv.cache_bytes` of the prefilled cache, next to budget / prompt length.
- Decode-time eviction: the first `--decode-prompt-tokens` tokens are prefilled, compressed to
  `--target` with the same method (so the bound applies from the first generated token), and
  `capkv.generate` then greedily generates `--new-tokens` tokens under
  `DecodeEviction(method, target, interval)`. The table gives the bytes of the final cache over the
  bytes a full cache of the prompt and every fed token would hold. It also gives the largest
  per-layer cache seen (`stats.max_tokens_per_layer`) next to its bound. The bound is the largest
  layer budget plus the interval, or plus 1 for per-token policies, and the largest layer budget
  is the target unless PyramidKV spreads it over depth.
- kvpress presses (`--presses`): every press class kvpress exports compresses the first
  `--press-tokens` tokens to `--press-budget` tokens per KV head through our engine, as
  `kvpress:<class name>`. A press that needs another press as a parameter gets `--inner-press`.
  The "ragged" column marks presses that only set `module.masked_key_indices` (they mask in
  kvpress), which our engine stores as ragged heads. Presses that fail are listed with their error.

    .venv/bin/python bench/methods_bytes.py --presses
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# Presses that need a download (QFilter, KVzap, DuoAttention) fail instead of reaching the network.
# Set HF_HUB_OFFLINE=0 to let them download.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers.utils import logging as transformers_logging  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.haystack import essay_texts, essays_folder  # noqa: E402
from capkv import (  # noqa: E402
    DecodeEviction,
    build_method,
    cache_bytes,
    compress,
    generate,
    prefill,
    prefill_options,
)
from capkv.methods import MethodError  # noqa: E402
from capkv.methods.kvpress_presses import import_kvpress, kvpress_method_class  # noqa: E402
from capkv.ragged import RaggedLayer  # noqa: E402
from workers.models import load_model  # noqa: E402

# (row label, method name, parameters): every built-in method, CapKV in both of its modes.
METHODS = [
    ("full", "full", {}),
    ("streaming_llm", "streaming_llm", {}),
    ("snapkv", "snapkv", {}),
    ("capkv (paper)", "capkv", {}),
    ("capkv (kvpress-compat)", "capkv", {"mode": "kvpress-compat"}),
    ("capkv-greedy", "capkv-greedy", {}),
    ("random", "random", {}),
    ("h2o", "h2o", {}),
    ("pyramidkv", "pyramidkv", {}),
    ("adakv", "adakv", {}),
    ("tova", "tova", {}),
    ("knorm", "knorm", {}),
    ("keydiff", "keydiff", {}),
    ("expected_attention", "expected_attention", {}),
]


def essay_token_ids(tokenizer, essay: str) -> list[int]:
    """Tokens of the essay whose file is named `essay`, without special tokens."""
    names = [path.name for path in sorted(essays_folder().glob("*.txt"))]
    if essay not in names:
        raise SystemExit(f"essay {essay!r} not found in {essays_folder()}; available: {', '.join(names)}")
    text = essay_texts()[names.index(essay)]
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def prefill_rows(model, token_ids: list[int], budget: int) -> list[str]:
    """Return one markdown row per method: kept / full bytes after `compress` at `budget`."""
    methods = [build_method(name, **params) for _, name, params in METHODS]
    prefilled = prefill(model, torch.tensor([token_ids]), **prefill_options(methods))
    full_bytes = cache_bytes(prefilled.cache)
    length = len(token_ids)
    rows = []
    for (label, _, _), method in zip(METHODS, methods):
        compressed = compress(model, prefilled, method, budget if method.evicts else None)
        target = min(budget, length) / length if method.evicts else 1.0
        kept_tokens = sum(compressed.kept_tokens_per_layer) / len(compressed.kept_tokens_per_layer)
        rows.append(f"| {label} | {compressed.kv_bytes / full_bytes:.4f} | {target:.4f} | {kept_tokens:.1f} |")
        print(f"prefill {label}: {compressed.kv_bytes} of {full_bytes} bytes", file=sys.stderr, flush=True)
    return rows


def decode_rows(model, token_ids: list[int], target: int, interval: int, new_tokens: int) -> list[str]:
    """Return one markdown row per method: final / full bytes after generating under decode-time eviction."""
    methods = [build_method(name, **params) for _, name, params in METHODS]
    prompt = torch.tensor([token_ids])
    prefilled = prefill(model, prompt, **prefill_options(methods))
    bytes_per_token = cache_bytes(prefilled.cache) / prompt.shape[1]
    rows = []
    for (label, _, _), method in zip(METHODS, methods):
        eviction = None
        if method.evicts:
            compressed = compress(model, prefilled, method, target)
            eviction = DecodeEviction(method, target=target, interval=interval)
            eviction.resume_from(compressed.kept_indices, prefilled.captures)
        else:
            compressed = compress(model, prefilled, method)
        generation = generate(model, compressed.cache, prompt.shape[1], new_tokens, set(),
                              first_logits=prefilled.last_logits, decode_eviction=eviction)

        fed = prompt.shape[1] + len(generation.token_ids) - 1  # the last generated token is never fed
        final_bytes = cache_bytes(compressed.cache)
        share = final_bytes / (bytes_per_token * fed)
        if eviction is None:
            rows.append(f"| {label} | {share:.4f} | 1.0000 | {fed} | - | - |")
        else:
            largest_budget = max(method.layer_budgets(target, 10**9, len(eviction.stats.max_tokens_per_layer)))
            bound = largest_budget + (1 if eviction.every_step else interval)
            largest = max(eviction.stats.max_tokens_per_layer.values())
            rows.append(f"| {label} | {share:.4f} | {target / fed:.4f} | {largest} | {bound} | "
                        f"{eviction.stats.compressions} |")
        print(f"decode {label}: {final_bytes} bytes after {fed} tokens", file=sys.stderr, flush=True)
    return rows


def press_class_names() -> list[str]:
    """Class names of every concrete press kvpress exports (`AdaKVPress`, `SnapKVPress`, ...)."""
    kvpress = import_kvpress()
    abstract = {"BasePress", "ScorerPress"}
    names = []
    for name in kvpress.__all__:
        candidate = getattr(kvpress, name)
        if isinstance(candidate, type) and issubclass(candidate, kvpress.BasePress) and name not in abstract:
            names.append(name)
    return sorted(names)


def press_rows(model, token_ids: list[int], budget: int, inner_press: str) -> list[str]:
    """Return one markdown row per kvpress press: kept / full bytes, or the error it failed with."""
    built, rows = [], []
    for name in press_class_names():
        try:
            params = {field: inner_press for field in kvpress_method_class(name).required_presses}
            built.append((name, build_method(f"kvpress:{name}", **params)))
        except MethodError as error:
            rows.append(f"| {name} | failed | | | {_one_line(error)} |")
    prefilled = prefill(model, torch.tensor([token_ids]), **prefill_options([method for _, method in built]))
    full_bytes = cache_bytes(prefilled.cache)
    for name, method in built:
        try:
            compressed = compress(model, prefilled, method, budget)
        except MethodError as error:
            rows.append(f"| {name} | failed | | | {_one_line(error)} |")
            continue
        ragged = any(isinstance(layer, RaggedLayer) for layer in compressed.cache.layers)
        kept_tokens = sum(compressed.kept_tokens_per_layer) / len(compressed.kept_tokens_per_layer)
        rows.append(f"| {name} | {compressed.kv_bytes / full_bytes:.4f} | {kept_tokens:.1f} | "
                    f"{'yes' if ragged else 'no'} | |")
        print(f"press {name}: {compressed.kv_bytes} of {full_bytes} bytes", file=sys.stderr, flush=True)
    return sorted(rows)


def _one_line(error: Exception) -> str:
    text = " ".join(str(error).split()).replace("|", "/")
    return text if len(text) <= 160 else text[:157] + "..."


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="bundled model name, folder or hub id")
    parser.add_argument("--dtype", default="bfloat16", help="model dtype")
    parser.add_argument("--essay", default="aord.txt", help="file name of the Paul Graham essay to read")
    parser.add_argument("--budget", type=int, default=256, help="prefill phase: tokens kept per KV head")
    parser.add_argument("--decode-prompt-tokens", type=int, default=300, help="decode phase: prompt length in tokens")
    parser.add_argument("--new-tokens", type=int, default=200, help="decode phase: tokens generated greedily")
    parser.add_argument("--target", type=int, default=128, help="decode phase: tokens per KV head after each cut")
    parser.add_argument("--interval", type=int, default=32, help="decode phase: generated tokens between two cuts")
    parser.add_argument("--presses", action="store_true", help="also measure every kvpress press")
    parser.add_argument("--press-tokens", type=int, default=1100, help="kvpress presses: prompt length in tokens")
    parser.add_argument("--press-budget", type=int, default=256, help="kvpress presses: tokens kept per KV head")
    parser.add_argument("--inner-press", default="knorm", help="press given to presses that wrap another press")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    transformers_logging.disable_progress_bar()
    loaded = load_model(args.model, dtype=args.dtype, device="cpu")
    token_ids = essay_token_ids(loaded.tokenizer, args.essay)
    print(f"model {args.model} {args.dtype}, essay {args.essay} ({len(token_ids)} tokens), "
          f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}\n")

    print(f"Prefill compression: {len(token_ids)}-token prompt, budget {args.budget} tokens per KV head\n")
    print("| method | kept / full bytes | budget / length | kept tokens per head (mean) |")
    print("|---|---|---|---|")
    print("\n".join(prefill_rows(loaded.model, token_ids, args.budget)), flush=True)

    prompt_ids = token_ids[: args.decode_prompt_tokens]
    print(f"\nDecode-time eviction: {len(prompt_ids)}-token prompt, {args.new_tokens} tokens generated greedily, "
          f"target {args.target}, interval {args.interval}\n")
    print("| method | final / full bytes | target / tokens | max tokens per layer | bound | cuts |")
    print("|---|---|---|---|---|---|")
    print("\n".join(decode_rows(loaded.model, prompt_ids, args.target, args.interval, args.new_tokens)), flush=True)

    if args.presses:
        press_ids = token_ids[: args.press_tokens]
        print(f"\nkvpress presses: {len(press_ids)}-token prompt, budget {args.press_budget} tokens per KV head "
              f"(budget / length {args.press_budget / len(press_ids):.4f}), inner press {args.inner_press}\n")
        print("| press | kept / full bytes | kept tokens per head (mean) | ragged | error |")
        print("|---|---|---|---|---|")
        print("\n".join(press_rows(loaded.model, press_ids, args.press_budget, args.inner_press)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
