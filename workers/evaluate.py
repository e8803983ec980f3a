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
from capkv import (
    CompressedCache, DecodeEviction, Prefill, Sampling, build_method, capacity, compress, generate, prefill,
    prefill_options,
)
from capkv.batched import generate_grouped
from capkv.memory import cache_bytes, peak_memory_bytes
from capkv.methods.base import EvictionMethod
from workers.faults import active_faults, invert_scores
from workers.fidelity import answer_logits, copy_cache, kl_and_agreement
from workers.models import LoadedModel, stop_token_ids
from storage.schema import SCHEMA_VERSION
from workers.units import CellSpec, WorkUnit

log = logging.getLogger(__name__)



def _base_row(unit: WorkUnit, cell: CellSpec, sample: Sample) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": unit.run_id,
        "chunk_index": unit.chunk_index,
        **cell.store_columns(),
        "task": sample.task,
        "truncation": "middle",
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

    @property
    def suffix_ids_list(self) -> list[int]:
        return [] if self.suffix_ids is None else self.suffix_ids[0].tolist()


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


@dataclass
class CompressedCell:
    """One cell after compression: its cache and the row fields known before decoding."""

    cell: CellSpec
    method: EvictionMethod
    compressed: CompressedCache
    fields: dict


def compress_cell(
    loaded: LoadedModel, prompt: PromptTokens, shared: SharedPrefill, cell: CellSpec, method: EvictionMethod
) -> CompressedCell:
    """Compress a copy of the shared cache for one cell and measure its fidelity and capacity."""
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
    per_layer = compressed.kept_tokens_per_layer
    fields = {
        "kept_tokens": sum(per_layer) / len(per_layer),
        "kept_tokens_total": int(round(compressed.kept_tokens_total)),
        "kept_tokens_per_layer": per_layer,
        "kl": kl,
        "top1_agreement": agreement,
        "capacity": capacity(prefilled, compressed),
        "kv_bytes_full": shared.kv_bytes_full,
        "kv_bytes_kept": compressed.kv_bytes,
        "masked_only": method.masked_only,
        "prefill_s": prefilled.seconds,
        "compression_s": compressed.seconds,
    }
    return CompressedCell(cell, method, compressed, fields)


def _draws(benchmark: Benchmark, seed: int) -> list[Sampling | None]:
    """Return one greedy draw, or the benchmark's sampled draws with seeds seed, seed + 1, ..."""
    settings = benchmark.sampling
    if settings is None:
        return [None]
    return [Sampling(settings.temperature, settings.top_p, seed + index) for index in range(settings.num_generations)]


def decode_cell(
    loaded: LoadedModel,
    benchmark: Benchmark,
    sample: Sample,
    shared: SharedPrefill,
    item: CompressedCell,
    max_new_tokens: int,
    seed: int,
) -> dict:
    """Generate from one compressed cell and score it: greedy, or k sampled generations scored as avg@k.

    A decode-phase cell keeps its cache at the budget while generating (`capkv.DecodeEviction`);
    its byte columns then describe the cache at the end of the generation.
    """
    prefilled = shared.prefilled
    draws = _draws(benchmark, seed)
    decoding_phase = item.cell.phase == "decode"
    generations, evictions, final_bytes = [], [], []
    for sampling in draws:
        cache = copy_cache(item.compressed.cache) if len(draws) > 1 else item.compressed.cache
        eviction = None
        if decoding_phase and item.method.evicts:
            eviction = DecodeEviction(item.method, target=item.compressed.budget, interval=item.cell.decode_interval)
            eviction.resume_from(item.compressed.kept_indices, prefilled.captures)
        generations.append(
            generate(
                loaded.model, cache, next_position=prefilled.context_length, max_new_tokens=max_new_tokens,
                stop_token_ids=stop_token_ids(loaded), first_logits=prefilled.last_logits,
                suffix_ids=shared.suffix_ids, decode_eviction=eviction, sampling=sampling,
            )
        )
        evictions.append(eviction)
        final_bytes.append(cache_bytes(cache))
    fields: dict = {"num_generations": len(draws)}
    if decoding_phase:
        fed = max(len(generation.token_ids) for generation in generations) - 1 + len(shared.suffix_ids_list)
        if item.method.evicts:
            fields.update(
                decode_interval=item.cell.decode_interval,
                decode_compressions=max(eviction.stats.compressions for eviction in evictions),
                max_cached_tokens=max(max(e.stats.max_tokens_per_layer.values(), default=0) for e in evictions),
            )
        fields.update(
            kv_bytes_kept=max(final_bytes),
            # A full cache grows by the same bytes for every token, so scale the prompt's full bytes.
            kv_bytes_full=round(shared.kv_bytes_full * (prefilled.context_length + fed) / prefilled.context_length),
        )
    return {**_score_generations(loaded, benchmark, sample, generations), **fields}


def _score_generations(loaded: LoadedModel, benchmark: Benchmark, sample: Sample, generations: list) -> dict:
    predictions = [loaded.tokenizer.decode(g.token_ids, skip_special_tokens=True).strip() for g in generations]
    if benchmark.sampling is None:
        metrics = benchmark.score(predictions[0], sample)
    else:
        metrics = benchmark.score_generations(predictions, sample)
    return {
        "prediction": predictions[0],
        "predictions": predictions if benchmark.sampling is not None else None,
        "score": metrics[benchmark.primary_metric],
        "metrics": metrics,
        "peak_memory_bytes": peak_memory_bytes(loaded.device),
        "decode_s": sum(g.seconds for g in generations),
        "tokens_generated": sum(len(g.token_ids) for g in generations),
    }


def decode_batched(
    loaded: LoadedModel, benchmark: Benchmark, sample: Sample, shared: SharedPrefill,
    items: list[CompressedCell], max_new_tokens: int,
) -> list[dict]:
    """Decode prefill-phase cells greedily in the batches of `capkv.batched.decoding_batches`,
    which give the same tokens as decoding them one by one."""
    generations = generate_grouped(
        loaded.model, [item.compressed for item in items], shared.prefilled.context_length, max_new_tokens,
        stop_token_ids(loaded), first_logits=shared.prefilled.last_logits, suffix_ids=shared.suffix_ids,
    )
    return [
        {**_score_generations(loaded, benchmark, sample, [generation]), "num_generations": 1}
        for generation in generations
    ]


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
    seed: int = 0,
    batch_decode: bool = True,
) -> dict[str, dict]:
    """Prefill once for every cell, then compress, decode and score each; return a partial row per cell_id.

    A failing prefill gives every cell an error row; a failing cell gives only that cell one.
    """
    return _evaluate_group(loaded, benchmark, sample, prompt, cells, max_new_tokens, seed, batch_decode)


CELL_FAILURES = (RuntimeError, ValueError, MemoryError)  # torch.OutOfMemoryError is a RuntimeError


def _evaluate_group(loaded, benchmark, sample, prompt, cells, max_new_tokens, seed, batch_decode) -> dict[str, dict]:
    try:
        shared = prefill_sample(loaded, sample, prompt, [method for _, method in cells])
    except (RuntimeError, ValueError, FloatingPointError, MemoryError) as failure:
        log.error("sample %s: prefill failed: %s", sample.sample_id, failure)
        error = {**_prompt_fields(prompt, len(prompt.context_ids)), "error": _error_text(failure)}
        return {cell.cell_id: dict(error) for cell, _ in cells}

    context_fields = _prompt_fields(prompt, shared.prefilled.context_length)
    results: dict[str, dict] = {}
    ready: list[CompressedCell] = []
    for cell, method in cells:
        try:
            ready.append(compress_cell(loaded, prompt, shared, cell, method))
        except CELL_FAILURES as failure:
            results[cell.cell_id] = _cell_error(sample, cell, shared, failure)

    # Greedy prefill-phase cells may share decoding batches; the rest decode one by one.
    batchable = [item for item in ready if batch_decode and item.cell.phase == "prefill" and benchmark.sampling is None]
    if len(batchable) > 1:
        try:
            for item, decoded in zip(batchable, decode_batched(loaded, benchmark, sample, shared, batchable, max_new_tokens)):
                results[item.cell.cell_id] = {**item.fields, **decoded}
        except CELL_FAILURES as failure:  # decode them one by one, so only a failing cell gets an error row
            log.warning("sample %s: batched decoding failed (%s); decoding cells one by one",
                        sample.sample_id, _error_text(failure))
    for item in ready:
        if item.cell.cell_id in results:
            continue
        try:
            decoded = decode_cell(loaded, benchmark, sample, shared, item, max_new_tokens, seed)
            results[item.cell.cell_id] = {**item.fields, **decoded}
        except CELL_FAILURES as failure:
            results[item.cell.cell_id] = _cell_error(sample, item.cell, shared, failure)
    return {cell.cell_id: {**context_fields, **results[cell.cell_id]} for cell, _ in cells}


def _cell_error(sample: Sample, cell: CellSpec, shared: SharedPrefill, failure: BaseException) -> dict:
    log.error("sample %s, %s failed: %s", sample.sample_id, cell.describe(), failure)
    return {"kv_bytes_full": shared.kv_bytes_full, "error": _error_text(failure)}


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
        partial = evaluate_sample(loaded, benchmark, sample, prompt, cells, sample_tokens, unit.seed, unit.batch_decode)
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
