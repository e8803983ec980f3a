"""Shared fixtures: tiny random-weight models for fast tests, the bundled SmolLM2 for real ones."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")

import pytest
import torch

# Tiny test models spend more time synchronising threads than computing on a shared 2-core
# machine; the flow tests' Ray actors set their own thread count.
torch.set_num_threads(1)
from transformers import LlamaConfig, LlamaForCausalLM


def tiny_llama(num_heads: int = 4, num_kv_heads: int = 2, layers: int = 2, seed: int = 0) -> LlamaForCausalLM:
    """A random-weight Llama with `num_heads` query heads sharing `num_kv_heads` KV heads, fp32."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=16,
        max_position_embeddings=512,
        rope_theta=10000.0,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="session")
def smollm2():
    """The bundled SmolLM2-135M-Instruct in bf16 (converted from GGUF once per machine)."""
    from transformers.utils import logging as transformers_logging

    from workers.models import load_model

    transformers_logging.disable_progress_bar()
    return load_model("smollm2-135m", dtype="bfloat16", device="cpu")


@pytest.fixture(scope="session")
def smollm2_float32():
    """The bundled SmolLM2-135M-Instruct in float32, for comparisons that bfloat16 rounding would decide."""
    from transformers.utils import logging as transformers_logging

    from workers.models import load_model

    transformers_logging.disable_progress_bar()
    return load_model("smollm2-135m", dtype="float32", device="cpu")
