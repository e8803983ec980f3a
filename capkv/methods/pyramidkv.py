"""PyramidKV: SnapKV scores with budgets that shrink linearly from the first layer to the last."""

from __future__ import annotations

import math
from dataclasses import dataclass

from capkv.methods.base import MethodError
from capkv.methods.snapkv import SnapKV


def pyramid_budgets(budget: int, seq_len: int, num_layers: int, beta: float, floor: int) -> list[int]:
    """Return per-layer budgets that fall linearly with depth and sum to num_layers · budget.

    The first layer gets 2·budget − budget/β and the last budget/β; when the first would exceed
    seq_len it is capped there and the last raised to keep the mean. If the smallest budget would
    fall under `floor` (the method's minimum), every layer gets `budget`. Rounding keeps the total
    exact by giving the leftover tokens to the layers with the largest fractional parts.
    """
    if num_layers == 1:
        return [budget]
    smallest = budget / beta
    largest = 2 * budget - smallest
    if largest > seq_len:
        largest = float(seq_len)
        smallest = 2 * budget - largest
    if smallest < floor:
        return [budget] * num_layers

    step = (largest - smallest) / (num_layers - 1)
    exact = [largest - layer * step for layer in range(num_layers)]
    rounded = [math.floor(value) for value in exact]
    leftover = budget * num_layers - sum(rounded)
    by_fraction = sorted(range(num_layers), key=lambda layer: exact[layer] - rounded[layer], reverse=True)
    for layer in by_fraction[:leftover]:
        rounded[layer] += 1
    return rounded


@dataclass
class PyramidKV(SnapKV):
    """Keeps SnapKV's choice of tokens, with more tokens in early layers and fewer in late ones.

    Cai et al., "PyramidKV", arXiv 2406.02069. Attention is spread widely in early layers and
    concentrated in late ones, so the budget falls linearly with depth while the total over the
    L layers stays L·budget. Layers then have different lengths: decoding feeds one token at a
    time or uses per-layer masks (the engine does this automatically).

    Parameters (besides SnapKV's window_size, kernel_size, pooling):
    - beta (20.0): steepness; the last layer keeps budget/beta tokens, the first 2·budget − budget/beta.
    """

    name = "pyramidkv"
    beta: float = 20.0

    def validate(self) -> None:
        super().validate()
        if self.beta < 1:
            raise MethodError(f"invalid pyramidkv beta={self.beta}; expected a number >= 1")

    def layer_budgets(self, budget: int, seq_len: int, num_layers: int) -> list[int]:
        return pyramid_budgets(budget, seq_len, num_layers, self.beta, self.min_budget())
