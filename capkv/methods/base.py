"""The scorer contract shared by every eviction method.

A method scores each cached token per KV head; the base class keeps the top-`budget` tokens
per KV head (plus the positions the method always keeps) and returns their indices in their
original order. Compression then gathers those rows, so the stored cache really shrinks.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from capkv.capture import LayerCapture


@dataclass
class LayerInputs:
    """Everything a scorer may read for one layer, after the prefill or during decoding."""

    layer_idx: int
    num_layers: int
    keys: torch.Tensor  # (batch, num_kv_heads, seq_len, head_dim), after RoPE
    values: torch.Tensor  # (batch, num_kv_heads, seq_len, head_dim)
    capture: LayerCapture
    module: nn.Module | None = None
    rotary_emb: nn.Module | None = None
    next_position: int | None = None  # true position of the next token; seq_len right after the prefill
    valid: torch.Tensor | None = None  # (batch, num_kv_heads, seq_len) slots holding a token; None = all
    # Scores already computed for these inputs, keyed by (method repr, layer). A prefill keeps one
    # such dict, so all budgets of a method score each layer once. None means no sharing.
    score_memo: dict | None = None

    @property
    def seq_len(self) -> int:
        return self.keys.shape[2]

    @property
    def num_kv_heads(self) -> int:
        return self.keys.shape[1]

    @property
    def head_dim(self) -> int:
        return self.keys.shape[3]

    @property
    def future_start(self) -> int:
        """True position of the next token: where averaged future RoPE rotations start."""
        return self.seq_len if self.next_position is None else self.next_position


class MethodError(ValueError):
    """A method name, parameter or budget that the library cannot accept."""


def check_budget(budget: object) -> int:
    """Return `budget` if it is a positive integer token count, else raise MethodError."""
    if isinstance(budget, bool) or not isinstance(budget, int):
        raise MethodError(f"invalid budget {budget!r}; expected an integer number of tokens per KV head, >= 1")
    if budget <= 0:
        raise MethodError(f"invalid budget {budget}; expected an integer number of tokens per KV head, >= 1")
    return budget


def budget_from_ratio(ratio: object, seq_len: int) -> int:
    """Tokens kept per KV head for a compression ratio r: floor(seq_len · (1 − r)), at least 1."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
        raise MethodError(f"invalid compression ratio {ratio!r}; expected a number in [0, 1)")
    return max(1, math.floor(seq_len * (1 - ratio)))


@dataclass
class EvictionMethod:
    """Base class: subclasses set `name`, declare parameters as dataclass fields and define `score`.

    Class attributes a subclass may override:
    - `evicts`: False only for the full cache.
    - `masked_only`: True when the method hides tokens without shrinking storage.
    - `ragged`: True when heads of one layer keep different numbers of tokens (`select_mask`).
    - `needs_query_mean`: the mean post-RoPE prompt query must be captured.
    - `needs_query_covariance`: the pre-RoPE query mean and covariance must be captured.
    - `needs_attention_sums`: the attention every token received from all prompt queries.
    - `needs_hidden_states`: the input of every attention module over the whole prompt.
    - `needs_rope`: the scorer rotates statistics with the model's rotary embedding.
    - `decode_policy`: how decode-time eviction works natively ("rolling", "accumulated_attention",
      "current_attention"); None means periodic re-compression with recent queries.
    """

    name: ClassVar[str] = ""
    evicts: ClassVar[bool] = True
    masked_only: ClassVar[bool] = False
    ragged: ClassVar[bool] = False
    needs_query_mean: ClassVar[bool] = False
    needs_query_covariance: ClassVar[bool] = False
    needs_attention_sums: ClassVar[bool] = False
    needs_hidden_states: ClassVar[bool] = False
    needs_rope: ClassVar[bool] = False
    decode_policy: ClassVar[str | None] = None

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

    def check_model(self, model: nn.Module) -> None:
        """Raise MethodError when the method cannot run on `model` (e.g. no rotary embedding)."""
        if self.needs_rope and _rotary_embedding(model) is None:
            raise MethodError(
                f"method {self.label} needs a model with rotary position embeddings; "
                f"{type(model).__name__} has none"
            )

    @property
    def window_size(self) -> int:
        """Number of final prompt queries the scorer reads (0 when it reads none)."""
        return 0

    @property
    def num_sinks_needed(self) -> int | None:
        """Leading tokens the captured query statistics must leave out, or None when any count works."""
        return None

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
        check_budget(budget)
        if budget < self.min_budget():
            raise MethodError(
                f"budget {budget} is smaller than the {self.min_budget()} tokens {self.label} always keeps; "
                f"use a budget >= {self.min_budget()} or lower the window/sink parameters"
            )

    def layer_budgets(self, budget: int, seq_len: int, num_layers: int) -> list[int]:
        """Tokens kept per KV head in each layer; uniform unless a method spreads them across depth."""
        return [budget] * num_layers

    def always_kept(self, seq_len: int, device: torch.device) -> torch.Tensor | None:
        """Boolean mask of shape (seq_len,) of positions kept whatever their score."""
        return None

    def score(self, layer: LayerInputs) -> torch.Tensor:
        """Return keep-scores of shape (batch, num_kv_heads, seq_len); higher is kept first.

        The scores may depend on the method's parameters and on `layer`, never on the budget:
        `shared_score` computes them once per prefilled layer for all budgets.
        """
        raise NotImplementedError

    def shared_score(self, layer: LayerInputs) -> torch.Tensor:
        """Return `score(layer)`, computed once per method and layer of a prefill. Callers must not modify it."""
        memo = layer.score_memo
        if memo is None:
            return self.score(layer)
        # The repr names the class and every parameter (a nested scorer's too), so two methods
        # share scores only when they would compute the same ones.
        key = (repr(self), layer.layer_idx)
        if key not in memo:
            memo[key] = self.score(layer)
        return memo[key]

    def protected_scores(self, layer: LayerInputs, budget: int) -> torch.Tensor:
        """Return a new float32 copy of the scores with the always-kept positions raised to +inf."""
        scores = self.shared_score(layer).to(torch.float32, copy=True)  # (batch, num_kv_heads, seq_len)
        protected = self.always_kept(layer.seq_len, layer.keys.device)
        if protected is not None:
            scores.masked_fill_(protected, float("inf"))
        return scores

    def select(self, layer: LayerInputs, budget: int) -> torch.Tensor:
        """Return kept token indices of shape (batch, num_kv_heads, budget), ascending."""
        batch, num_kv_heads, seq_len, _ = layer.keys.shape
        device = layer.keys.device
        if not self.evicts or budget >= seq_len:
            return torch.arange(seq_len, device=device).expand(batch, num_kv_heads, seq_len)

        kept = self.protected_scores(layer, budget).topk(budget, dim=-1).indices
        return kept.sort(dim=-1).values

    def select_mask(self, layer: LayerInputs, budget: int) -> torch.Tensor:
        """Return a boolean keep mask of shape (batch, num_kv_heads, seq_len).

        Ragged methods override this; their heads may keep different numbers of tokens.
        """
        kept = self.select(layer, budget)
        mask = torch.zeros(layer.keys.shape[:3], dtype=torch.bool, device=layer.keys.device)
        return mask.scatter_(-1, kept, True)


def _rotary_embedding(model: nn.Module) -> nn.Module | None:
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "model", None)
    return getattr(decoder, "rotary_emb", None)
