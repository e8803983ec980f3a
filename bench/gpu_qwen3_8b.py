"""Time prefill and CapKV scoring at a long context on a random-weight model shaped like Qwen3-8B.

The model is built from a config (36 layers, 32 query / 8 KV heads, head dim 128, hidden size 4096),
so nothing is downloaded; random weights give realistic timings but meaningless tokens. Prints
the prefill time, the CapKV compression time, their ratio, and the full and kept cache bytes.
Intended for a GPU with at least ~40 GB (16.4 GB of bf16 weights plus a 4.8 GB cache at 32k tokens,
an estimate). `--tiny` shrinks the model and the context so the script can be checked on a CPU.

    python bench/gpu_qwen3_8b.py --tokens 32768 --budget 1024
    python bench/gpu_qwen3_8b.py --tiny
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from capkv import build_method, cache_bytes, compress, prefill, prefill_options  # noqa: E402

QWEN3_8B = {
    "vocab_size": 151936,
    "hidden_size": 4096,
    "intermediate_size": 12288,
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "max_position_embeddings": 40960,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
}
TINY = {**QWEN3_8B, "vocab_size": 1024, "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 4,
        "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 32}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=32768, help="context length in tokens")
    parser.add_argument("--budget", type=int, default=1024, help="tokens CapKV keeps per KV head")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs after one warm-up; the minimum is reported")
    parser.add_argument("--tiny", action="store_true", help="a 4-layer model and 1,024 tokens, for a CPU check")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16
    shape = TINY if args.tiny else QWEN3_8B
    tokens = min(args.tokens, 1024) if args.tiny else args.tokens
    budget = min(args.budget, 128) if args.tiny else args.budget
    torch.manual_seed(0)
    config = Qwen3Config(**shape, attn_implementation="sdpa")
    with torch.device(device):
        model = Qwen3ForCausalLM(config).to(dtype).eval()
    input_ids = torch.randint(0, shape["vocab_size"], (1, tokens), device=device)
    method = build_method("capkv")
    options = prefill_options([method])
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
          f"{'tiny ' if args.tiny else ''}Qwen3-8B shape, {tokens} tokens, budget {budget}, {dtype}")

    prefill_times, score_times = [], []
    for run in range(args.repeats + 1):
        synchronize(device)
        prefilled = prefill(model, input_ids, **options)
        synchronize(device)
        compressed = compress(model, prefilled, method, budget)
        synchronize(device)
        if run > 0:  # the first run warms up kernels and the allocator
            prefill_times.append(prefilled.seconds)
            score_times.append(compressed.seconds)
        full_bytes, kept_bytes = cache_bytes(prefilled.cache), compressed.kv_bytes
        del prefilled, compressed

    prefill_s, score_s = min(prefill_times), min(score_times)
    print(f"prefill {prefill_s:.3f} s ({tokens / prefill_s:,.0f} tokens/s), CapKV compression {score_s:.3f} s, "
          f"compression/prefill {score_s / prefill_s:.1%}")
    print(f"cache bytes: full {full_bytes / 2**20:,.1f} MiB, kept {kept_bytes / 2**20:,.1f} MiB "
          f"({kept_bytes / full_bytes:.4f} of full; budget/length {budget / tokens:.4f})")
    if device.type == "cuda":
        print(f"peak allocated {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
