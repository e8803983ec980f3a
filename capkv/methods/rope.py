"""The averaged rotary rotation of future positions, for scorers that work with pre-RoPE query statistics.

Keys are cached after RoPE while a query's future position is unknown. Averaging the rotation
matrices R_p over the next positions p gives one matrix that moves a pre-RoPE query statistic
into the rotated space of the cached keys. kvpress 0.5.5 uses the same average over 512 positions
in its ExpectedAttentionPress and CapPress.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn


def rotary_cos_sin(
    rotary_emb: nn.Module, module: nn.Module | None, positions: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of shape (num_positions, head_dim) for 1-D `positions`, as the model computes them."""
    probe = torch.zeros(1, 1, 1, dtype=dtype, device=positions.device)
    kwargs = {}
    layer_type = getattr(module, "layer_type", None)
    if layer_type is not None and "layer_type" in inspect.signature(rotary_emb.forward).parameters:
        kwargs["layer_type"] = layer_type  # Gemma 3 keeps one RoPE base per attention type
    cos, sin = rotary_emb(probe, positions[None], **kwargs)
    return cos[0], sin[0]


def mean_future_rotation(
    rotary_emb: nn.Module,
    module: nn.Module | None,
    start: int,
    num_positions: int,
    head_dim: int,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Mean of the RoPE matrices of positions start .. start + num_positions − 1, shape (head_dim, head_dim).

    A pre-RoPE vector x is rotated to position p as R_p x with R_p = diag(cos_p) + diag(sin_p) · P,
    where P x = rotate_half(x) = (−x₂, x₁) for the halves x₁, x₂ of x.
    """
    positions = torch.arange(start, start + num_positions, device=device)
    cos, sin = rotary_cos_sin(rotary_emb, module, positions, dtype)  # (num_positions, head_dim)
    half = head_dim // 2
    rotate_half = torch.zeros(head_dim, head_dim, device=device, dtype=dtype)
    rotate_half[:half, half:] = -torch.eye(half, device=device, dtype=dtype)
    rotate_half[half:, :half] = torch.eye(half, device=device, dtype=dtype)
    identity = torch.eye(head_dim, device=device, dtype=dtype)
    rotations = cos[:, :, None] * identity + sin[:, :, None] * rotate_half  # (num_positions, d, d), rows scaled
    return rotations.mean(dim=0)
