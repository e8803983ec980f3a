"""Plain data passed from the flow to workers: cells and the work units that group them."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

CODE_VERSION = "0.1.0"


@dataclass(frozen=True)
class CellSpec:
    """One (model, method, budget, benchmark) combination and everything that changes its result."""

    model: str
    model_revision: str
    method: str
    method_params: dict
    method_label: str
    budget: int | None  # tokens kept per KV head; None for the full cache or a ratio budget
    benchmark: str
    benchmark_params: dict
    benchmark_version: str
    num_samples: int
    query_aware: bool
    chat_template: bool
    seed: int
    dtype: str
    max_new_tokens: int | None = None
    budget_ratio: float | None = None  # share of the context evicted, floor(T * (1 - ratio)) kept
    # "prefill": the prompt's cache is compressed to the budget once. "decode": it is also kept
    # at the budget while generating, cut back every `decode_interval` generated tokens.
    phase: str = "prefill"
    decode_interval: int | None = None

    @property
    def budget_kind(self) -> str:
        if self.budget_ratio is not None:
            return "ratio"
        return "none" if self.budget is None else "tokens"

    @property
    def cell_id(self) -> str:
        """Deterministic id: a hash of every field plus the code version."""
        payload = json.dumps({**asdict(self), "code_version": CODE_VERSION}, sort_keys=True, default=str)
        return "c" + hashlib.sha256(payload.encode()).hexdigest()[:15]

    def store_columns(self) -> dict:
        """Return the columns that describe this cell, shared by its rows in the samples and cells tables."""
        return {
            "cell_id": self.cell_id,
            "model": self.model,
            "model_revision": self.model_revision,
            "method": self.method,
            "method_params": json.dumps(self.method_params, sort_keys=True),
            "method_label": self.method_label,
            "budget_kind": self.budget_kind,
            "budget": self.budget,
            "budget_ratio": self.budget_ratio,
            "benchmark": self.benchmark,
            "benchmark_version": self.benchmark_version,
            "query_aware": self.query_aware,
            "chat_template": self.chat_template,
            "seed": self.seed,
            "phase": self.phase,
            "decode_interval": self.decode_interval,
        }

    def describe(self) -> str:
        budget = f"ratio {self.budget_ratio}" if self.budget_ratio is not None else (
            "full" if self.budget is None else str(self.budget)
        )
        phase = f" ({self.phase} phase)" if self.phase != "prefill" else ""
        return f"{self.method_label}@{budget}{phase} {self.benchmark} on {self.model}"


@dataclass
class WorkUnit:
    """A chunk of samples of one (model, benchmark) evaluated for several cells after one prefill each."""

    model: str
    benchmark: str
    benchmark_params: dict
    num_samples: int
    chunk_index: int
    sample_indices: list[int]
    cells: list[CellSpec] = field(default_factory=list)
    query_aware: bool = True
    chat_template: bool = True
    seed: int = 0
    run_id: str = ""
    max_new_tokens: int | None = None
    batch_decode: bool = True
