"""Expand a run config into cells, and group cells into work units that share a prefill."""

from __future__ import annotations

from benchmarks import build_benchmark
from benchmarks.base import Benchmark
from capkv.methods import build_method
from flows.config import ConfigError, RunConfig
from workers.models import model_revision
from workers.units import CellSpec, WorkUnit


DEFAULT_DECODE_INTERVAL = 32


def benchmark_phases(config: RunConfig, benchmark: Benchmark) -> list[str]:
    """Return the phases a benchmark runs in: the config's, else decode for benchmarks that declare it."""
    if config.phases is not None:
        return list(config.phases)
    return ["decode"] if benchmark.decode_eviction is not None else ["prefill"]


def phase_budgets(config: RunConfig, benchmark: Benchmark, phase: str) -> list[tuple[int | None, float | None]]:
    """(budget, ratio) pairs of one phase. Decode-time eviction keeps a token count, so it takes the
    token budgets only, or the benchmark's declared target when the config gives ratios alone."""
    if phase == "prefill":
        return [(b, None) for b in config.budgets] + [(None, r) for r in config.ratios]
    if config.budgets:
        return [(b, None) for b in config.budgets]
    if benchmark.decode_eviction is not None:
        return [(benchmark.decode_eviction.target, None)]
    raise ConfigError(
        f"benchmark {benchmark.name!r} runs in the decode phase but the config gives only ratios; "
        "decode-time eviction needs budgets in tokens"
    )


def phase_label(method_label: str, phase: str) -> str:
    """Return a method's label for one phase. Decode-phase labels name the phase, so groupings by label keep phases apart."""
    return method_label if phase == "prefill" else f"{method_label} [{phase}]"


def decode_interval(config: RunConfig, benchmark: Benchmark) -> int:
    if config.decode_interval is not None:
        return config.decode_interval
    declared = benchmark.decode_eviction
    return declared.interval if declared is not None else DEFAULT_DECODE_INTERVAL


def expand_cells(config: RunConfig) -> list[CellSpec]:
    """One cell per (model, benchmark, phase, method, budget); the full cache gets one cell, not one per budget."""
    cells: list[CellSpec] = []
    for model in config.models:
        revision = model_revision(model)
        for bench_spec in config.benchmarks:
            benchmark = build_benchmark(bench_spec.name, **bench_spec.params)
            methods = [build_method(spec.name, **params) for spec in config.methods for params in spec.settings()]
            phases = benchmark_phases(config, benchmark)
            settings = [
                (method, phase, budget, ratio)
                for method in methods
                for phase in (phases if method.evicts else phases[:1])
                for budget, ratio in (phase_budgets(config, benchmark, phase) if method.evicts else [(None, None)])
            ]
            for method, phase, budget, ratio in settings:
                cells.append(
                    CellSpec(
                        model=model,
                        model_revision=revision,
                        method=method.name,
                        method_params=method.params,
                        method_label=phase_label(method.label, phase) if method.evicts else method.label,
                        budget=budget,
                        benchmark=benchmark.name,
                        benchmark_params=dict(bench_spec.params),
                        benchmark_version=benchmark.version,
                        num_samples=bench_spec.num_samples,
                        query_aware=config.query_aware,
                        chat_template=config.chat_template and benchmark.chat_template,
                        seed=config.seed,
                        dtype=config.dtype,
                        max_new_tokens=config.max_new_tokens,
                        budget_ratio=ratio,
                        phase=phase,
                        decode_interval=decode_interval(config, benchmark) if phase == "decode" and method.evicts else None,
                    )
                )
    return cells


def plan_units(
    config: RunConfig, cells: list[CellSpec], run_id: str, done: set[tuple[str, int]] | None = None
) -> list[WorkUnit]:
    """Group cells by (model, benchmark) and split samples into chunks of `config.chunk_size`.

    A (cell, chunk) pair already in `done` is left out; a unit with no cells left is skipped.
    """
    done = done or set()
    groups: dict[tuple, list[CellSpec]] = {}
    for cell in cells:
        key = (cell.model, cell.benchmark, repr(sorted(cell.benchmark_params.items())), cell.num_samples)
        groups.setdefault(key, []).append(cell)

    units: list[WorkUnit] = []
    for group in groups.values():
        first = group[0]
        for chunk_index, start in enumerate(range(0, first.num_samples, config.chunk_size)):
            pending = [cell for cell in group if (cell.cell_id, chunk_index) not in done]
            if not pending:
                continue
            units.append(
                WorkUnit(
                    model=first.model,
                    benchmark=first.benchmark,
                    benchmark_params=first.benchmark_params,
                    num_samples=first.num_samples,
                    chunk_index=chunk_index,
                    sample_indices=list(range(start, min(start + config.chunk_size, first.num_samples))),
                    cells=pending,
                    query_aware=first.query_aware,
                    chat_template=first.chat_template,
                    seed=first.seed,
                    run_id=run_id,
                    max_new_tokens=first.max_new_tokens,
                    batch_decode=config.batch_decode,
                )
            )
    return units


def chunk_count(cell: CellSpec, chunk_size: int) -> int:
    return -(-cell.num_samples // chunk_size)
