"""Expand a run config into cells, and group cells into work units that share a prefill."""

from __future__ import annotations

from benchmarks import build_benchmark
from capkv.methods import build_method
from flows.config import RunConfig
from workers.models import model_revision
from workers.units import CellSpec, WorkUnit


def expand_cells(config: RunConfig) -> list[CellSpec]:
    """One cell per (model, benchmark, method, budget); the full cache gets one cell, not one per budget."""
    cells: list[CellSpec] = []
    for model in config.models:
        revision = model_revision(model)
        for bench_spec in config.benchmarks:
            benchmark = build_benchmark(bench_spec.name, **bench_spec.params)
            methods = [build_method(spec.name, **params) for spec in config.methods for params in spec.settings()]
            for method in methods:
                budgets = [(b, None) for b in config.budgets] + [(None, r) for r in config.ratios]
                for budget, ratio in budgets if method.evicts else [(None, None)]:
                    cells.append(
                        CellSpec(
                            model=model,
                            model_revision=revision,
                            method=method.name,
                            method_params=method.params,
                            method_label=method.label,
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
                )
            )
    return units


def chunk_count(cell: CellSpec, chunk_size: int) -> int:
    return -(-cell.num_samples // chunk_size)
