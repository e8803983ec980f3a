"""Compare the tokens our methods keep with those kvpress 0.5.5's presses keep, on a real model and real text.

For each method, the prompt is compressed once by our engine and once by the kvpress press, through
kvpress's own forward hooks. A (layer, KV head) counts as identical when both keep exactly the same
positions. Prints, per method, the share of identical heads and the mean overlap
|ours ∩ theirs| / budget over all heads.

    .venv/bin/python bench/parity_kvpress.py --samples 3 --tokens 2048 --ratio 0.5
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from transformers import DynamicCache
from transformers.utils import logging as transformers_logging

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.haystack import essay_texts  # noqa: E402
from capkv import build_method, compress, prefill, prefill_options  # noqa: E402
from capkv.methods.kvpress_presses import import_kvpress, recover_indices  # noqa: E402
from workers.models import load_model  # noqa: E402

kvpress = import_kvpress()

CASES = {
    "knorm": ({}, lambda ratio: kvpress.KnormPress(ratio)),
    "snapkv": ({"window_size": 64, "kernel_size": 5, "pooling": "avg"}, lambda ratio: kvpress.SnapKVPress(ratio)),
    "streaming_llm": ({}, lambda ratio: kvpress.StreamingLLMPress(ratio)),
    "tova": ({}, lambda ratio: kvpress.TOVAPress(ratio)),
    "keydiff": ({}, lambda ratio: kvpress.KeyDiffPress(ratio)),
    "expected_attention": ({}, lambda ratio: kvpress.ExpectedAttentionPress(ratio)),
    "capkv": ({"mode": "kvpress-compat"}, lambda ratio: kvpress.CapPress(ratio)),
}


def kvpress_kept(model, press, input_ids: torch.Tensor, full_cache) -> list[torch.Tensor]:
    """Ascending kept positions per layer (batch, num_kv_heads, kept) after running the press in kvpress."""
    cache = DynamicCache(config=model.config)
    with torch.no_grad(), press(model):
        model(input_ids=input_ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    kept = [recover_indices(full.keys, compressed.keys) for full, compressed in zip(full_cache.layers, cache.layers)]
    return [indices.sort(dim=-1).values for indices in kept]


def compare(ours: list[torch.Tensor], theirs: list[torch.Tensor]) -> tuple[int, int, float]:
    """Return (identical heads, heads, summed overlap share) over all layers and KV heads."""
    identical, heads, overlap = 0, 0, 0.0
    for mine, reference in zip(ours, theirs):
        for head in range(mine.shape[1]):
            mine_set, reference_set = set(mine[0, head].tolist()), set(reference[0, head].tolist())
            identical += mine_set == reference_set
            overlap += len(mine_set & reference_set) / max(len(reference_set), 1)
            heads += 1
    return identical, heads, overlap


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="bundled model name, folder or hub id")
    parser.add_argument("--dtype", default="float32", help="model dtype (float32 avoids bf16 score ties)")
    parser.add_argument("--samples", type=int, default=3, help="essays used as prompts")
    parser.add_argument("--tokens", type=int, default=2048, help="prompt length in tokens")
    parser.add_argument("--ratio", type=float, default=0.5, help="compression ratio given to both sides")
    parser.add_argument("--methods", nargs="*", default=list(CASES), help="methods to compare")
    args = parser.parse_args()

    transformers_logging.disable_progress_bar()
    loaded = load_model(args.model, dtype=args.dtype, device="cpu")
    model, tokenizer = loaded.model, loaded.tokenizer
    methods = {name: build_method(name, **CASES[name][0]) for name in args.methods}
    essays = [text for text in essay_texts() if len(tokenizer(text)["input_ids"]) >= args.tokens][: args.samples]
    totals = {name: [0, 0, 0.0] for name in methods}

    for sample, text in enumerate(essays):
        input_ids = torch.tensor([tokenizer(text)["input_ids"][: args.tokens]])
        started = time.perf_counter()
        prefilled = prefill(model, input_ids, **prefill_options(list(methods.values())))
        for name, method in methods.items():
            ours = compress(model, prefilled, method, ratio=args.ratio).kept_indices
            theirs = kvpress_kept(model, CASES[name][1](args.ratio), input_ids, prefilled.cache)
            for index, value in enumerate(compare(ours, theirs)):
                totals[name][index] += value
        print(f"sample {sample + 1}/{len(essays)}: {args.tokens} tokens, {time.perf_counter() - started:.1f} s",
              flush=True)

    print(f"\n{args.model} {args.dtype}, {len(essays)} essays x {args.tokens} tokens, ratio {args.ratio}")
    print(f"{'method':<20} {'identical heads':>16} {'share':>8} {'mean overlap':>13}")
    for name, (identical, heads, overlap) in totals.items():
        print(f"{name:<20} {f'{identical}/{heads}':>16} {identical / heads:>8.1%} {overlap / heads:>13.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
