"""Benchmark registry: task definitions, prompt building and scoring."""

from __future__ import annotations

import dataclasses
import difflib

from benchmarks.aime import AimeBenchmark
from benchmarks.base import Benchmark, BenchmarkError, DecodeEvictionSettings, Sample, SamplingSettings, TaskInfo
from benchmarks.longbench import LongBenchBenchmark
from benchmarks.needle import NeedleBenchmark, NeedleGridBenchmark
from benchmarks.ruler import RulerBenchmark

BENCHMARKS: dict[str, type[Benchmark]] = {
    cls.name: cls for cls in (NeedleBenchmark, NeedleGridBenchmark, RulerBenchmark, LongBenchBenchmark, AimeBenchmark)
}


@dataclasses.dataclass(frozen=True)
class BenchmarkDescription:
    """Declared properties of a benchmark, for listings: data source, metrics, generation settings and tasks."""

    name: str
    version: str
    summary: str
    source: str
    primary_metric: str
    higher_is_better: dict[str, bool]
    max_new_tokens: int
    chat_template: bool
    parameters: dict[str, object]
    tasks: list[TaskInfo]
    decode_eviction: DecodeEvictionSettings | None
    sampling: SamplingSettings | None


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


def describe_benchmark(name: str, **params) -> BenchmarkDescription:
    """Describe one benchmark as built with `params` (its defaults when none are given)."""
    benchmark = build_benchmark(name, **params)
    summary = (type(benchmark).__doc__ or "").strip().splitlines()[0]
    return BenchmarkDescription(
        name=benchmark.name,
        version=benchmark.version,
        summary=summary,
        source=benchmark.source,
        primary_metric=benchmark.primary_metric,
        higher_is_better=dict(benchmark.higher_is_better),
        max_new_tokens=benchmark.max_new_tokens,
        chat_template=benchmark.chat_template,
        parameters={spec.name: getattr(benchmark, spec.name) for spec in dataclasses.fields(benchmark)},
        tasks=benchmark.tasks(),
        decode_eviction=benchmark.decode_eviction,
        sampling=benchmark.sampling,
    )


def describe_benchmarks() -> list[BenchmarkDescription]:
    """Describe every registered benchmark with its default parameters, sorted by name."""
    return [describe_benchmark(name) for name in list_benchmarks()]


def format_description(description: BenchmarkDescription) -> list[str]:
    """Render a description as text lines for a command-line listing, one line per task at the end."""
    metrics = ", ".join(
        f"{metric} ({'higher' if higher else 'lower'} is better)" for metric, higher in description.higher_is_better.items()
    )
    lines = [
        f"{description.name} (version {description.version}): {description.summary}",
        f"  data: {description.source}",
        f"  primary metric: {description.primary_metric}; metrics: {metrics}",
    ]
    if description.decode_eviction is not None:
        eviction = description.decode_eviction
        lines.append(f"  decode-time eviction: target {eviction.target} tokens, every {eviction.interval} tokens")
    if description.sampling is not None:
        sampling = description.sampling
        lines.append(
            f"  sampling: {sampling.num_generations} generations, temperature {sampling.temperature}, top_p {sampling.top_p}"
        )
    for task in description.tasks:
        size = "generated" if task.num_samples is None else f"{task.num_samples} samples"
        template = "chat template" if task.chat_template else "no chat template"
        lines.append(f"  - {task.name}: {size}, {task.metric}, max {task.max_new_tokens} new tokens, {template}")
    return lines


__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "BenchmarkDescription",
    "BenchmarkError",
    "DecodeEvictionSettings",
    "Sample",
    "SamplingSettings",
    "TaskInfo",
    "build_benchmark",
    "describe_benchmark",
    "describe_benchmarks",
    "format_description",
    "list_benchmarks",
]
