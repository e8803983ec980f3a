"""Ada-KV: any scorer, with the layer's budget split unevenly across its heads."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from capkv.methods.base import EvictionMethod, LayerInputs, MethodError


@dataclass
class AdaKV(EvictionMethod):
    """Keeps the highest-scored tokens of a whole layer, so heads keep different numbers of tokens.

    Feng et al., "Ada-KV", arXiv 2407.11550. Each KV head first keeps its `alpha · budget`
    best tokens (at least one) and the positions its scorer always keeps. The rest of the layer's
    num_kv_heads · budget slots go to the highest scores across all heads. Scores must be comparable
    across heads (attention-based scorers such as SnapKV are). The cache stores the ragged heads
    without padding, so the memory saved is real.

    Parameters:
    - scorer ("snapkv"): name of the method whose scores are split across heads.
    - alpha (0.2): share of the budget every head keeps whatever its scores.
    - scorer_params ({}): parameters of the scorer.
    """

    name = "adakv"
    ragged = True
    scorer: str = "snapkv"
    alpha: float = 0.2
    scorer_params: dict = field(default_factory=dict)

    def validate(self) -> None:
        from capkv.methods import build_method  # the registry imports this module

        if not 0 <= self.alpha <= 1:
            raise MethodError(f"invalid adakv alpha={self.alpha}; expected a number in [0, 1]")
        if not isinstance(self.scorer_params, dict):
            raise MethodError(f"invalid adakv scorer_params={self.scorer_params!r}; expected a mapping")
        inner = build_method(self.scorer, **self.scorer_params)
        if inner.ragged or not inner.evicts:
            raise MethodError(f"invalid adakv scorer={self.scorer!r}; expected a scoring method other than full/adakv")
        self.inner = inner

    # Capture requirements, window size and sink count are the scorer's.
    @property
    def needs_query_mean(self) -> bool:
        return self.inner.needs_query_mean

    @property
    def needs_query_covariance(self) -> bool:
        return self.inner.needs_query_covariance

    @property
    def needs_attention_sums(self) -> bool:
        return self.inner.needs_attention_sums

    @property
    def needs_hidden_states(self) -> bool:
        return self.inner.needs_hidden_states

    @property
    def window_size(self) -> int:
        return self.inner.window_size

    @property
    def num_sinks_needed(self) -> int | None:
        return self.inner.num_sinks_needed

    def check_model(self, model) -> None:
        self.inner.check_model(model)

    def min_budget(self) -> int:
        return self.inner.min_budget()

    def always_kept(self, seq_len: int, device: torch.device) -> torch.Tensor | None:
        return self.inner.always_kept(seq_len, device)

    def score(self, layer: LayerInputs) -> torch.Tensor:
        return self.inner.shared_score(layer)

    def select(self, layer: LayerInputs, budget: int) -> torch.Tensor:
        raise MethodError("adakv keeps a different number of tokens per head; use select_mask")

    def select_mask(self, layer: LayerInputs, budget: int) -> torch.Tensor:
        batch, num_kv_heads, seq_len, _ = layer.keys.shape
        if budget >= seq_len:
            everything = torch.ones(batch, num_kv_heads, seq_len, dtype=torch.bool, device=layer.keys.device)
            return everything if layer.valid is None else layer.valid

        scores = self.inner.protected_scores(layer, budget)  # (batch, num_kv_heads, seq_len)
        valid = torch.ones_like(scores, dtype=torch.bool) if layer.valid is None else layer.valid
        scores = scores.masked_fill(~valid, float("-inf"))
        floor = max(1, int(budget * self.alpha)) if self.alpha > 0 else 0
        head_best = scores.topk(min(floor, seq_len), dim=-1).indices
        scores = scores.scatter(-1, head_best, float("inf")).masked_fill(~valid, float("-inf"))

        flat = scores.reshape(batch, num_kv_heads * seq_len)
        kept = flat.topk(min(num_kv_heads * budget, flat.shape[-1]), dim=-1).indices
        mask = torch.zeros_like(flat, dtype=torch.bool).scatter_(-1, kept, True)
        return mask.view(batch, num_kv_heads, seq_len) & valid
