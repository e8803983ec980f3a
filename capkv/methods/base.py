"""The scorer contract shared by every eviction method.

A method scores each cached token per KV head; the base class keeps the top-`budget` tokens
per KV head (plus the positions the method always keeps) and returns their indices in their
original order. Compression then gathers those rows, so the stored cache really shrinks.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from capkv.capture import LayerCapture


@dataclass
class LayerInputs:
    """Everything a scorer may read for one layer after the prompt is prefilled."""

    layer_idx: int
    num_layers: int
    keys: torch.Tensor  # (batch, num_kv_heads, seq_len, head_dim), after RoPE
    values: torch.Tensor  # (batch, num_kv_heads, seq_len, head_dim)
    capture: LayerCapture
    module: nn.Module | None = None

    @property
    def seq_len(self) -> int:
        return self.keys.shape[2]

    @property
    def num_kv_heads(self) -> int:
        return self.keys.shape[1]

    @property
    def head_dim(self) -> int:
        return self.keys.shape[3]


class MethodError(ValueError):
    """A method name, parameter or budget that the library cannot accept."""


@dataclass
class EvictionMethod:
    """Base class: subclasses set `name`, declare parameters as dataclass fields and define `score`.

    Class attributes a subclass may override:
    - `evicts`: False only for the full cache.
    - `masked_only`: True when the method hides tokens without shrinking storage.
    - `needs_query_mean`: the mean post-RoPE prompt query must be captured.
    """

    name: ClassVar[str] = ""
    evicts: ClassVar[bool] = True
    masked_only: ClassVar[bool] = False
    needs_query_mean: ClassVar[bool] = False

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            expected = hints.get(spec.name)
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
                setattr(self, spec.name, value)
            if expected in (int, float, str, bool) and (
                not isinstance(value, expected) or (expected is not bool and isinstance(value, bool))
            ):
                raise MethodError(
                    f"invalid {self.name} parameter {spec.name}={value!r}; expected {expected.__name__}"
                )
        self.validate()

    def validate(self) -> None:
        """Check parameter values; raise MethodError naming the value and the accepted range."""

    @property
    def window_size(self) -> int:
        """Number of final prompt queries the scorer reads (0 when it reads none)."""
        return 0

    @property
    def params(self) -> dict:
        """The method's parameters, as given or defaulted."""
        return dataclasses.asdict(self)

    @property
    def label(self) -> str:
        """Short label such as `capkv(tau=5.0)`; parameters at their defaults are left out."""
        changed = {
            spec.name: getattr(self, spec.name)
            for spec in dataclasses.fields(self)
            if spec.default is not dataclasses.MISSING and getattr(self, spec.name) != spec.default
        }
        if not changed:
            return self.name
        return f"{self.name}({', '.join(f'{key}={value}' for key, value in sorted(changed.items()))})"

    def min_budget(self) -> int:
        """Smallest token budget the method can honour (the positions it always keeps)."""
        return 1

    def validate_budget(self, budget: int) -> None:
        if budget < self.min_budget():
            raise MethodError(
                f"budget {budget} is smaller than the {self.min_budget()} tokens {self.label} always keeps; "
                f"use a budget >= {self.min_budget()} or lower the window/sink parameters"
            )

    def always_kept(self, seq_len: int, device: torch.device) -> torch.Tensor | None:
        """Boolean mask of shape (seq_len,) of positions kept whatever their score."""
        return None

    def score(self, layer: LayerInputs) -> torch.Tensor:
        """Return keep-scores of shape (batch, num_kv_heads, seq_len); higher is kept first."""
        raise NotImplementedError

    def select(self, layer: LayerInputs, budget: int) -> torch.Tensor:
        """Return kept token indices of shape (batch, num_kv_heads, budget), ascending."""
        batch, num_kv_heads, seq_len, _ = layer.keys.shape
        device = layer.keys.device
        if not self.evicts or budget >= seq_len:
            return torch.arange(seq_len, device=device).expand(batch, num_kv_heads, seq_len)

        scores = self.score(layer).float()  # (batch, num_kv_heads, seq_len)
        protected = self.always_kept(seq_len, device)
        if protected is not None:
            scores = scores.masked_fill(protected, float("inf"))
        kept = scores.topk(budget, dim=-1).indices
        return kept.sort(dim=-1).values
