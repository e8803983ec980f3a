"""Benchmark registry: task definitions, prompt building and scoring."""

from __future__ import annotations

import dataclasses
import difflib

from benchmarks.base import Benchmark, BenchmarkError, Sample
from benchmarks.needle import NeedleBenchmark

BENCHMARKS: dict[str, type[Benchmark]] = {cls.name: cls for cls in (NeedleBenchmark,)}


def list_benchmarks() -> list[str]:
    return sorted(BENCHMARKS)


def build_benchmark(name: str, **params) -> Benchmark:
    """Instantiate a benchmark by name; unknown names or parameters raise BenchmarkError."""
    if name not in BENCHMARKS:
        hint = difflib.get_close_matches(name, BENCHMARKS, n=1)
        suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise BenchmarkError(f"unknown benchmark {name!r}{suggestion}; known: {', '.join(list_benchmarks())}")
    cls = BENCHMARKS[name]
    accepted = [spec.name for spec in dataclasses.fields(cls)]
    for key in params:
        if key not in accepted:
            raise BenchmarkError(
                f"unknown parameter {key!r} for benchmark {name!r}; accepted: {', '.join(accepted) or 'none'}"
            )
    return cls(**params)


__all__ = ["BENCHMARKS", "Benchmark", "BenchmarkError", "Sample", "build_benchmark", "list_benchmarks"]
