"""SnapKV: keep the tokens that the last prompt queries attend to."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from capkv.methods.base import EvictionMethod, LayerInputs, MethodError


def observation_window(layer: LayerInputs, window_size: int) -> int:
    """Number of final queries to read: at most `window_size`, the captured window and seq_len − 1."""
    captured = 0 if layer.capture.window_queries is None else layer.capture.window_queries.shape[2]
    if captured == 0:
        raise MethodError(
            f"layer {layer.layer_idx} has no captured window queries; prefill with window_size >= {window_size}"
        )
    return min(window_size, captured, layer.seq_len - 1)


def window_attention(layer: LayerInputs, window_size: int) -> torch.Tensor:
    """Softmax attention of the last `window_size` captured queries over all keys.

    The queries belong to the last `window_size` cached tokens, so the attention is causal inside
    the window. Returns (batch, num_heads, window_size, seq_len) in float32.
    """
    queries = layer.capture.window_queries[:, :, -window_size:].float()  # (batch, num_heads, window, head_dim)
    num_heads = queries.shape[1]
    group = num_heads // layer.num_kv_heads
    keys = layer.keys.float().repeat_interleave(group, dim=1)  # (batch, num_heads, seq_len, head_dim)
    logits = torch.matmul(queries, keys.transpose(2, 3)) * layer.capture.scaling
    seq_len = layer.seq_len
    query_positions = torch.arange(seq_len - window_size, seq_len, device=keys.device)
    key_positions = torch.arange(seq_len, device=keys.device)
    future = key_positions[None, :] > query_positions[:, None]  # (window, seq_len)
    logits = logits.masked_fill(future, float("-inf"))
    if layer.valid is not None:  # padding slots of a ragged cache get no attention
        logits = logits.masked_fill(~layer.valid.repeat_interleave(group, dim=1)[:, :, None, :], float("-inf"))
    return logits.softmax(dim=-1)


@dataclass
class SnapKV(EvictionMethod):
    """Keeps the tokens most attended by the last `window_size` prompt queries, plus that window.

    Li et al., "SnapKV: LLM Knows What You are Looking for Before Generation", arXiv 2404.14469.
    Attention is averaged over the window queries and the query heads of each KV head, then
    smoothed along tokens so that neighbours of a hit are kept with it.

    Parameters:
    - window_size (32): observation window of final prompt queries, always kept.
    - kernel_size (7): width of the 1-D pooling along tokens.
    - pooling ("max"): "max" as in the paper's code, or "avg" as in kvpress.
    """

    name = "snapkv"
    window_size: int = 32
    kernel_size: int = 7
    pooling: str = "max"

    def validate(self) -> None:
        if self.window_size < 1:
            raise MethodError(f"invalid snapkv window_size={self.window_size}; expected an integer >= 1")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise MethodError(f"invalid snapkv kernel_size={self.kernel_size}; expected an odd integer >= 1")
        if self.pooling not in ("max", "avg"):
            raise MethodError(f"invalid snapkv pooling={self.pooling!r}; expected 'max' or 'avg'")

    def min_budget(self) -> int:
        return self.window_size + 1

    def always_kept(self, seq_len: int, device: torch.device) -> torch.Tensor:
        return torch.arange(seq_len, device=device) >= seq_len - self.window_size

    def score(self, layer: LayerInputs) -> torch.Tensor:
        batch, num_kv_heads, seq_len, _ = layer.keys.shape
        window = observation_window(layer, self.window_size)
        attention = window_attention(layer, window)[..., : seq_len - window]  # (batch, num_heads, window, prefix)
        scores = attention.mean(dim=2)  # (batch, num_heads, prefix)

        padding = self.kernel_size // 2
        if self.pooling == "max":
            scores = F.max_pool1d(scores, self.kernel_size, stride=1, padding=padding)
        else:
            scores = F.avg_pool1d(scores, self.kernel_size, stride=1, padding=padding, count_include_pad=True)

        scores = scores.view(batch, num_kv_heads, -1, seq_len - window).mean(dim=2)  # (batch, num_kv_heads, prefix)
        return F.pad(scores, (0, window), value=0.0)  # the window itself is kept through always_kept
