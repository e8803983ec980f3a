"""Compare evaluation throughput of this engine with kvpress's pipeline on the same needle samples.

Throughput is (cell, sample) pairs per second, where a cell is one (method, compression ratio).
Three ways of running the same pairs are timed, model loads excluded from the first two:

- ours: one prefill per sample, a compressed copy of the cache per cell, and the copies decoded
  with `capkv.batched.generate_grouped` (batched only where it gives identical tokens unless
  `--batch always`; caches of different shapes share batches unless `--mix-shapes off`);
- kvpress pipeline: `KVPressTextGenerationPipeline` called once per (press, ratio, sample) with
  the model loaded once. This runs in a subprocess because importing kvpress patches
  transformers' attention functions for the whole process;
- kvpress evaluation-script style: kvpress's evaluation script evaluates one (press, ratio) per
  invocation, so every cell is a fresh Python process that imports kvpress, loads the model and
  runs the pipeline over the samples. Each such process is timed from its start to its exit.
  `--script-runs estimate` skips these runs and adds one warm model load per cell to the pipeline
  time instead, a lower bound on the script's time.

Both sides decode greedily for at most `--max-new-tokens` tokens and stop at the model's EOS.
The prompt is the chat-templated context, and the question is fed after compression on both sides.

    .venv/bin/python -u bench/throughput.py --dtype float32 --samples 2 --max-new-tokens 8
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from transformers.utils import logging as transformers_logging

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import build_benchmark  # noqa: E402
from benchmarks.prompt import build_prompt  # noqa: E402
from capkv import build_method, compress, prefill, prefill_options  # noqa: E402
from capkv.batched import decoding_batches, generate_grouped  # noqa: E402
from workers.models import load_model, stop_token_ids  # noqa: E402

# Our method name -> kvpress 0.5.5 press class (AdaKV wraps SnapKV in kvpress).
METHODS = {
    "streaming_llm": "StreamingLLMPress",
    "snapkv": "SnapKVPress",
    "tova": "TOVAPress",
    "knorm": "KnormPress",
    "keydiff": "KeyDiffPress",
    "expected_attention": "ExpectedAttentionPress",
    "capkv": "CapPress",
    "random": "RandomPress",
    "adakv": "AdaKVPress",
}


def load_samples(tokenizer, num_samples: int, context_length: int):
    benchmark = build_benchmark("needle", context_length=context_length)
    return benchmark.load(tokenizer, num_samples, seed=0)


def run_ours(args) -> dict:
    """Evaluate every (method, ratio, sample) pair with one prefill per sample; return timings and answers."""
    loaded = load_model(args.model, dtype=args.dtype, device="cpu")
    samples = load_samples(loaded.tokenizer, args.samples, args.context_length)
    methods = [build_method(name) for name in args.methods]
    stops = stop_token_ids(loaded)
    timings = {"prefill": 0.0, "compress": 0.0, "decode": 0.0}
    answers: dict[str, str] = {}
    tokens_generated = 0
    batch_sizes: list[int] = []

    started = time.perf_counter()
    for sample in samples:
        prompt = build_prompt(loaded.tokenizer, sample, chat_template=True, query_aware=False)
        input_ids = torch.tensor([prompt.context_ids])
        suffix_ids = torch.tensor([prompt.suffix_ids]) if prompt.suffix_ids else None
        # One prefill serves every method, whatever number of sink tokens it leaves out.
        prefilled = prefill(loaded.model, input_ids, **prefill_options(methods))
        timings["prefill"] += prefilled.seconds
        labels, caches = [], []
        for ratio in args.ratios:
            for method in methods:
                compressed = compress(loaded.model, prefilled, method, ratio=ratio)
                timings["compress"] += compressed.seconds
                labels.append(f"{method.name}@{ratio} {sample.sample_id}")
                caches.append(compressed)
        exact_only = args.batch == "exact"
        mix_shapes = args.mix_shapes == "on"
        if args.batch == "never":
            groups = [[i] for i in range(len(caches))]
        else:
            groups = decoding_batches(loaded.model, caches, exact_only=exact_only, mix_shapes=mix_shapes)
        batch_sizes.extend(len(group) for group in groups)
        decode_started = time.perf_counter()
        if args.batch == "never":
            generations = [generate_grouped(loaded.model, [cache], prefilled.context_length, args.max_new_tokens,
                                            stops, prefilled.last_logits, suffix_ids)[0] for cache in caches]
        else:
            generations = generate_grouped(loaded.model, caches, prefilled.context_length, args.max_new_tokens,
                                           stops, prefilled.last_logits, suffix_ids, exact_only=exact_only,
                                           mix_shapes=mix_shapes)
        timings["decode"] += time.perf_counter() - decode_started
        for label, generation in zip(labels, generations):
            answers[label] = loaded.tokenizer.decode(generation.token_ids, skip_special_tokens=True).strip()
            tokens_generated += len(generation.token_ids)
    total = time.perf_counter() - started
    return {"seconds": total, "timings": timings, "answers": answers, "tokens_generated": tokens_generated,
            "mean_batch": sum(batch_sizes) / max(len(batch_sizes), 1), "pairs": len(answers)}


def build_press(kvpress, name: str, ratio: float):
    press_class = METHODS[name]
    if press_class == "AdaKVPress":
        return kvpress.AdaKVPress(kvpress.SnapKVPress(compression_ratio=ratio))
    return getattr(kvpress, press_class)(compression_ratio=ratio)


def run_kvpress(args, measure_reload: bool = True) -> dict:
    """Run kvpress's pipeline per (press, ratio, sample) with the model loaded once; return timings and answers."""
    import kvpress
    from transformers import pipeline

    load_started = time.perf_counter()
    loaded = load_model(args.model, dtype=args.dtype, device="cpu")
    first_load = time.perf_counter() - load_started
    model_load = None
    if measure_reload:
        load_started = time.perf_counter()
        load_model(args.model, dtype=args.dtype, device="cpu")  # a warm reload, as each kvpress run does
        model_load = time.perf_counter() - load_started

    pipe = pipeline("kv-press-text-generation", model=loaded.model, tokenizer=loaded.tokenizer, device="cpu")
    samples = load_samples(loaded.tokenizer, args.samples, args.context_length)
    answers: dict[str, str] = {}
    started = time.perf_counter()
    for ratio in args.ratios:
        for name in args.methods:
            press = build_press(kvpress, name, ratio)
            for sample in samples:
                output = pipe(sample.context, question=sample.question, press=press,
                              max_new_tokens=args.max_new_tokens)
                answers[f"{name}@{ratio} {sample.sample_id}"] = output["answer"].strip()
    total = time.perf_counter() - started
    return {"seconds": total, "model_load": model_load, "first_load": first_load, "answers": answers,
            "pairs": len(answers)}


def kvpress_command(args, mode: str, methods: list[str], ratios: list[float]) -> list[str]:
    return [sys.executable, __file__, mode, "--model", args.model, "--dtype", args.dtype,
            "--samples", str(args.samples), "--context-length", str(args.context_length),
            "--max-new-tokens", str(args.max_new_tokens), "--methods", *methods, "--ratios", *map(str, ratios)]


def run_script_style(args) -> dict | None:
    """Run each (press, ratio) as kvpress's evaluation script does, in a process of its own; time each to its exit."""
    answers: dict[str, str] = {}
    per_cell: list[float] = []
    pipeline_seconds = 0.0
    for ratio in args.ratios:
        for name in args.methods:
            started = time.perf_counter()
            completed = subprocess.run(kvpress_command(args, "--kvpress-cell", [name], [ratio]),
                                       capture_output=True, text=True, check=False)
            per_cell.append(time.perf_counter() - started)
            if completed.returncode != 0:
                print(f"kvpress process for {name} at ratio {ratio} failed with exit code {completed.returncode}:\n"
                      f"{completed.stderr[-3000:]}")
                return None
            cell = json.loads(completed.stdout.strip().splitlines()[-1])
            answers.update(cell["answers"])
            pipeline_seconds += cell["seconds"]
    return {"seconds": sum(per_cell), "per_cell": per_cell, "pipeline": pipeline_seconds, "answers": answers}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="bundled model name, folder or hub id")
    parser.add_argument("--dtype", default="bfloat16", help="model dtype")
    parser.add_argument("--samples", type=int, default=2, help="needle samples")
    parser.add_argument("--context-length", type=int, default=2000, help="needle context length in tokens")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS), help="methods (cells)")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.5, 0.75, 0.875, 0.9375],
                        help="compression ratios: the share of context tokens evicted")
    parser.add_argument("--max-new-tokens", type=int, default=12, help="maximum answer tokens")
    parser.add_argument("--batch", choices=["exact", "always", "never"], default="exact",
                        help="batch decoding: only where tokens stay identical (float32), always, or never")
    parser.add_argument("--mix-shapes", choices=["on", "off"], default="on",
                        help="on: caches of different shapes share batches (capkv.batched.decoding_batches); "
                             "off: only caches of equal shapes do")
    parser.add_argument("--script-runs", choices=["run", "estimate"], default="run",
                        help="evaluation-script style: one process per cell, or the pipeline time plus a load per cell")
    parser.add_argument("--kvpress-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--kvpress-cell", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--skip-kvpress", action="store_true", help="time only our engine")
    args = parser.parse_args()
    transformers_logging.disable_progress_bar()

    if args.kvpress_worker or args.kvpress_cell:
        print(json.dumps(run_kvpress(args, measure_reload=args.kvpress_worker)))
        return 0

    print(f"{len(args.methods)} methods x {len(args.ratios)} ratios x {args.samples} needle samples at "
          f"{args.context_length} tokens, {args.dtype}, max {args.max_new_tokens} new tokens, batch={args.batch}, "
          f"mixed shapes {args.mix_shapes}; "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    ours = run_ours(args)
    pairs = ours["pairs"]
    timings = ", ".join(f"{key} {value:.1f} s" for key, value in ours["timings"].items())
    print(f"ours: {pairs} pairs in {ours['seconds']:.1f} s ({timings}; mean decode batch {ours['mean_batch']:.1f}, "
          f"{ours['tokens_generated']} tokens) -> {pairs / ours['seconds']:.3f} pairs/s; "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    if args.skip_kvpress:
        return 0

    completed = subprocess.run(kvpress_command(args, "--kvpress-worker", args.methods, args.ratios),
                               capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        print(f"kvpress subprocess failed with exit code {completed.returncode}:\n{completed.stderr[-3000:]}")
        return 1
    theirs = json.loads(completed.stdout.strip().splitlines()[-1])
    ours_rate = pairs / ours["seconds"]
    pipeline_rate = theirs["pairs"] / theirs["seconds"]
    print(f"kvpress pipeline: {theirs['pairs']} pairs in {theirs['seconds']:.1f} s -> {pipeline_rate:.3f} pairs/s "
          f"(first model load {theirs['first_load']:.2f} s, warm reload {theirs['model_load']:.2f} s); "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    cells = len(args.methods) * len(args.ratios)
    if args.script_runs == "estimate":
        script_seconds = theirs["seconds"] + theirs["model_load"] * cells
        script_pairs = theirs["pairs"]
        print(f"kvpress evaluation-script style, estimated: + {theirs['model_load']:.2f} s warm model load x {cells} "
              f"cells -> {script_pairs / script_seconds:.3f} pairs/s (not run)")
    else:
        script = run_script_style(args)
        if script is None:
            return 1
        script_seconds, script_pairs = script["seconds"], len(script["answers"])
        differing = [key for key, answer in script["answers"].items() if answer != theirs["answers"].get(key)]
        differing_methods = ", ".join(sorted({key.split("@")[0] for key in differing})) or "none"
        print(f"kvpress evaluation-script style: {cells} processes, {script_pairs} pairs in {script_seconds:.1f} s "
              f"(per process {min(script['per_cell']):.1f} to {max(script['per_cell']):.1f} s, of which the pipeline "
              f"calls {script['pipeline']:.1f} s in all) -> {script_pairs / script_seconds:.3f} pairs/s; answers equal "
              f"to the one-process pipeline's: {script_pairs - len(differing)} of {script_pairs} (differing methods: "
              f"{differing_methods}); load average {os.getloadavg()[0]:.2f}")
    script_rate = script_pairs / script_seconds
    print(f"speed-up: {ours_rate / pipeline_rate:.1f}x over the pipeline, {ours_rate / script_rate:.1f}x over the "
          f"evaluation-script style")
    same = sum(ours["answers"][key] == theirs["answers"].get(key) for key in ours["answers"])
    print(f"answers equal to kvpress's: {same} of {pairs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
