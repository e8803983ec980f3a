"""Run one work unit on a loaded model: prefill each sample once, then compress, decode and score per cell."""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from dataclasses import dataclass

import torch

from benchmarks import BenchmarkError, build_benchmark
from benchmarks.base import Benchmark, Sample
from benchmarks.prompt import PromptTokens
from capkv import Prefill, build_method, capacity, compress, generate, prefill, prefill_options
from capkv.memory import cache_bytes, peak_memory_bytes
from capkv.methods.base import EvictionMethod
from workers.faults import active_faults, invert_scores
from workers.fidelity import answer_logits, copy_cache, kl_and_agreement
from workers.models import LoadedModel, stop_token_ids
from workers.units import CellSpec, WorkUnit

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1


def _base_row(unit: WorkUnit, cell: CellSpec, sample: Sample) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": unit.run_id,
        "chunk_index": unit.chunk_index,
        **cell.store_columns(),
        "task": sample.task,
        "truncation": "middle",
        "phase": "prefill",
        "sample_id": sample.sample_id,
        "sample_metadata": json.dumps(sample.metadata, sort_keys=True, default=str),
        "references": list(sample.references),
        "created_at": dt.datetime.now(dt.timezone.utc),
    }


def _fidelity_target(loaded: LoadedModel, sample: Sample) -> list[int]:
    """Return the token ids of the first reference, the sequence along which KL is measured."""
    text = sample.references[0] if sample.references else ""
    ids = loaded.tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids or [loaded.tokenizer.eos_token_id or 0]


def _max_prompt_tokens(loaded: LoadedModel, max_new_tokens: int) -> int | None:
    window = getattr(loaded.model.config, "max_position_embeddings", None)
    return None if window is None else window - max_new_tokens


@dataclass
class SharedPrefill:
    """State shared by every cell of one sample: the prefilled cache and the full-cache reference."""

    prefilled: Prefill
    kv_bytes_full: int
    target_ids: list[int]
    reference_logits: torch.Tensor
    suffix_ids: torch.Tensor | None


def prefill_sample(loaded: LoadedModel, sample: Sample, prompt: PromptTokens, methods: list[EvictionMethod]) -> SharedPrefill:
    """Encode the prompt once with the full cache, capturing what every method's scorer reads."""
    device = loaded.device
    context_ids = torch.tensor([prompt.context_ids], device=device)
    prefilled = prefill(loaded.model, context_ids, **prefill_options(methods))
    if ("nan-logits", sample.sample_id) in active_faults():
        prefilled.last_logits = torch.full_like(prefilled.last_logits, float("nan"))
    if not torch.isfinite(prefilled.last_logits).all():
        raise FloatingPointError(f"prefill of sample {sample.sample_id} produced non-finite logits")

    target_ids = _fidelity_target(loaded, sample)
    reference_logits = answer_logits(
        loaded.model, copy_cache(prefilled.cache), prefilled.context_length, target_ids,
        prefilled.last_logits, prompt.suffix_ids,
    )
    suffix_ids = torch.tensor([prompt.suffix_ids], device=device) if prompt.suffix_ids else None
    return SharedPrefill(prefilled, cache_bytes(prefilled.cache), target_ids, reference_logits, suffix_ids)


def evaluate_cell(
    loaded: LoadedModel,
    benchmark: Benchmark,
    sample: Sample,
    prompt: PromptTokens,
    shared: SharedPrefill,
    cell: CellSpec,
    method: EvictionMethod,
    max_new_tokens: int,
) -> dict:
    """Compress a copy of the shared cache for one cell, measure fidelity, decode and score."""
    if ("oom", method.name) in active_faults():
        raise MemoryError(f"simulated out-of-memory in {cell.describe()}")
    prefilled = shared.prefilled
    if cell.budget_ratio is not None:
        compressed = compress(loaded.model, prefilled, method, ratio=cell.budget_ratio)
    else:
        budget = cell.budget if cell.budget is not None else prefilled.context_length
        compressed = compress(loaded.model, prefilled, method, budget)
    compressed_logits = answer_logits(
        loaded.model, copy_cache(compressed.cache), prefilled.context_length, shared.target_ids,
        prefilled.last_logits, prompt.suffix_ids,
    )
    kl, agreement = kl_and_agreement(shared.reference_logits, compressed_logits)
    generation = generate(
        loaded.model,
        compressed.cache,
        next_position=prefilled.context_length,
        max_new_tokens=max_new_tokens,
        stop_token_ids=stop_token_ids(loaded),
        first_logits=prefilled.last_logits,
        suffix_ids=shared.suffix_ids,
    )
    prediction = loaded.tokenizer.decode(generation.token_ids, skip_special_tokens=True).strip()
    metrics = benchmark.score(prediction, sample)
    per_layer = compressed.kept_tokens_per_layer
    return {
        "kept_tokens": sum(per_layer) / len(per_layer),
        "kept_tokens_total": int(round(compressed.kept_tokens_total)),
        "kept_tokens_per_layer": per_layer,
        "prediction": prediction,
        "score": metrics[benchmark.primary_metric],
        "metrics": metrics,
        "kl": kl,
        "top1_agreement": agreement,
        "capacity": capacity(prefilled, compressed),
        "kv_bytes_full": shared.kv_bytes_full,
        "kv_bytes_kept": compressed.kv_bytes,
        "masked_only": method.masked_only,
        "peak_memory_bytes": peak_memory_bytes(loaded.device),
        "prefill_s": prefilled.seconds,
        "compression_s": compressed.seconds,
        "decode_s": generation.seconds,
        "tokens_generated": len(generation.token_ids),
    }


def _prompt_fields(prompt: PromptTokens, context_tokens: int | None) -> dict:
    return {
        "prompt_hash": prompt.prompt_hash,
        "context_tokens": context_tokens,
        "question_tokens": len(prompt.suffix_ids),
        "truncated_tokens": prompt.truncated_tokens,
    }


def evaluate_sample(
    loaded: LoadedModel,
    benchmark: Benchmark,
    sample: Sample,
    prompt: PromptTokens,
    cells: list[tuple[CellSpec, EvictionMethod]],
    max_new_tokens: int,
) -> dict[str, dict]:
    """Prefill once and evaluate every cell; return a partial row per cell_id.

    A failing prefill gives every cell an error row; a failing cell gives only that cell one.
    """
    rows: dict[str, dict] = {}
    for group in _prefill_groups(cells):
        rows.update(_evaluate_group(loaded, benchmark, sample, prompt, group, max_new_tokens))
    return rows


def _prefill_groups(cells: list[tuple[CellSpec, EvictionMethod]]) -> list[list[tuple[CellSpec, EvictionMethod]]]:
    """Cells whose methods can share one prefill; methods with different sink counts cannot."""
    groups: dict[int | None, list] = {}
    for cell, method in cells:
        key = method.num_sinks_needed if method.evicts else None
        groups.setdefault(key, []).append((cell, method))
    if None in groups and len(groups) > 1:  # the full cache joins any group
        full_cells = groups.pop(None)
        next(iter(groups.values())).extend(full_cells)
    return list(groups.values())


def _evaluate_group(loaded, benchmark, sample, prompt, cells, max_new_tokens) -> dict[str, dict]:
    try:
        shared = prefill_sample(loaded, sample, prompt, [method for _, method in cells])
    except (RuntimeError, ValueError, FloatingPointError, MemoryError) as failure:
        log.error("sample %s: prefill failed: %s", sample.sample_id, failure)
        error = {**_prompt_fields(prompt, len(prompt.context_ids)), "error": _error_text(failure)}
        return {cell.cell_id: dict(error) for cell, _ in cells}

    rows: dict[str, dict] = {}
    context_fields = _prompt_fields(prompt, shared.prefilled.context_length)
    for cell, method in cells:
        try:
            result = evaluate_cell(loaded, benchmark, sample, prompt, shared, cell, method, max_new_tokens)
        except (RuntimeError, ValueError, MemoryError) as failure:  # torch.OutOfMemoryError is a RuntimeError
            log.error("sample %s, %s failed: %s", sample.sample_id, cell.describe(), failure)
            result = {"kv_bytes_full": shared.kv_bytes_full, "error": _error_text(failure)}
        rows[cell.cell_id] = {**context_fields, **result}
    return rows


def _error_text(failure: BaseException) -> str:
    return f"{type(failure).__name__}: {str(failure).splitlines()[0] if str(failure) else ''}"


def check_samples(tokenizer, benchmark_name: str, benchmark_params: dict, num_samples: int, seed: int) -> int:
    """Load a benchmark's samples as evaluate_unit does and return their count.

    Raises BenchmarkError in one line for a data file that does not load, a row the
    benchmark rejects, or a sample with an empty context (there is nothing to compress).
    """
    benchmark = build_benchmark(benchmark_name, **benchmark_params)
    try:
        samples = benchmark.load(tokenizer, num_samples, seed)
    except BenchmarkError:
        raise
    except Exception as error:  # datasets and the benchmark's row parsing raise many types for a bad file
        log.debug("loading %s samples failed", benchmark_name, exc_info=True)
        cause = error
        while cause.__cause__ is not None:  # datasets wraps the parser error that names the row
            cause = cause.__cause__
        raise BenchmarkError(
            f"cannot load the samples of benchmark {benchmark_name!r} (params {benchmark_params}): "
            f"{_error_text(cause)}; check its data file's rows and field types"
        ) from error
    for sample in samples:
        if not sample.context.strip():
            raise BenchmarkError(
                f"sample {sample.sample_id!r} of benchmark {benchmark_name!r} has an empty context; "
                "every sample needs a context to compress, so fix or remove that row"
            )
    return len(samples)


def evaluate_unit(loaded: LoadedModel, unit: WorkUnit) -> dict[str, list[dict]]:
    """Evaluate every cell of a unit on its samples; return rows per cell_id, one per sample.

    A sample or cell that fails gets a row with `error` set, and the unit goes on.
    """
    benchmark = build_benchmark(unit.benchmark, **unit.benchmark_params)
    all_samples = benchmark.load(loaded.tokenizer, unit.num_samples, unit.seed)
    cells = [(cell, build_method(cell.method, **cell.method_params)) for cell in unit.cells]
    for _, method in cells:
        if ("invert-scores", method.name) in active_faults():
            invert_scores(method)
    results: dict[str, list[dict]] = {cell.cell_id: [] for cell, _ in cells}

    for index in unit.sample_indices:
        sample = all_samples[index]
        started = time.perf_counter()
        sample_tokens = unit.max_new_tokens or benchmark.max_new_tokens_for(sample)
        try:
            prompt = benchmark.build_prompt(
                loaded.tokenizer,
                sample,
                chat_template=unit.chat_template,
                query_aware=unit.query_aware,
                max_prompt_tokens=_max_prompt_tokens(loaded, sample_tokens),
            )
        except ValueError as failure:  # BenchmarkError: e.g. the question alone exceeds the window
            log.error("sample %s: prompt could not be built: %s", sample.sample_id, failure)
            for cell, _ in cells:
                results[cell.cell_id].append({**_base_row(unit, cell, sample), "error": _error_text(failure)})
            continue
        partial = evaluate_sample(loaded, benchmark, sample, prompt, cells, sample_tokens)
        for cell, _ in cells:
            row = _base_row(unit, cell, sample)
            row["chat_template"] = prompt.chat_template  # what this sample used, e.g. off for few-shot tasks
            row.update(partial[cell.cell_id])
            results[cell.cell_id].append(row)
        log.info(
            "%s %s sample %s: %d cells in %.1f s",
            unit.model, unit.benchmark, sample.sample_id, len(cells), time.perf_counter() - started,
        )
    return results
