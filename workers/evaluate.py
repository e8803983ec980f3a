"""Run one work unit on a loaded model: prefill each sample once, then compress, decode and score per cell."""

from __future__ import annotations

import datetime as dt
import json
import logging
import time

import torch

from benchmarks import build_benchmark
from benchmarks.base import Benchmark, Sample
from benchmarks.prompt import PromptTokens, build_prompt
from capkv import build_method, compress, generate, prefill
from capkv.memory import cache_bytes, peak_memory_bytes
from capkv.methods.base import EvictionMethod
from workers.fidelity import answer_logits, copy_cache, kl_and_agreement
from workers.models import LoadedModel, stop_token_ids
from workers.units import CellSpec, WorkUnit

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1


def _base_row(unit: WorkUnit, cell: CellSpec, sample: Sample) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": unit.run_id,
        "cell_id": cell.cell_id,
        "chunk_index": unit.chunk_index,
        "model": cell.model,
        "model_revision": cell.model_revision,
        "method": cell.method,
        "method_params": json.dumps(cell.method_params, sort_keys=True),
        "method_label": cell.method_label,
        "budget_kind": "none" if cell.budget is None else "tokens",
        "budget": cell.budget,
        "benchmark": cell.benchmark,
        "benchmark_version": cell.benchmark_version,
        "task": sample.task,
        "query_aware": cell.query_aware,
        "chat_template": cell.chat_template,
        "truncation": "middle",
        "phase": "prefill",
        "seed": cell.seed,
        "sample_id": sample.sample_id,
        "references": list(sample.references),
        "created_at": dt.datetime.now(dt.timezone.utc),
    }


def _fidelity_target(loaded: LoadedModel, sample: Sample) -> list[int]:
    """Token ids of the first reference answer, the sequence KL is measured along."""
    text = sample.references[0] if sample.references else ""
    ids = loaded.tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids or [loaded.tokenizer.eos_token_id or 0]


def _max_prompt_tokens(loaded: LoadedModel, max_new_tokens: int) -> int | None:
    window = getattr(loaded.model.config, "max_position_embeddings", None)
    return None if window is None else window - max_new_tokens


def evaluate_sample(
    loaded: LoadedModel,
    benchmark: Benchmark,
    sample: Sample,
    prompt: PromptTokens,
    cells: list[tuple[CellSpec, EvictionMethod]],
    max_new_tokens: int,
) -> dict[str, dict]:
    """Prefill once and evaluate every cell; return a partial row per cell_id."""
    device = loaded.device
    window = max(method.window_size for _, method in cells)
    sinks = max([getattr(method, "num_sinks", 0) for _, method in cells] + [4])
    context_ids = torch.tensor([prompt.context_ids], device=device)
    suffix_ids = torch.tensor([prompt.suffix_ids], device=device) if prompt.suffix_ids else None
    stops = stop_token_ids(loaded)

    prefilled = prefill(loaded.model, context_ids, window_size=window, num_sinks=sinks)
    kv_bytes_full = cache_bytes(prefilled.cache)
    target_ids = _fidelity_target(loaded, sample)
    reference_logits = answer_logits(
        loaded.model, copy_cache(prefilled.cache), prefilled.context_length, target_ids,
        prefilled.last_logits, prompt.suffix_ids,
    )
    rows: dict[str, dict] = {}
    for cell, method in cells:
        budget = cell.budget if cell.budget is not None else prefilled.context_length
        compressed = compress(loaded.model, prefilled, method, budget)
        kept_bytes = compressed.kv_bytes
        kl, agreement = kl_and_agreement(
            reference_logits,
            answer_logits(loaded.model, copy_cache(compressed.cache), prefilled.context_length, target_ids,
                          prefilled.last_logits, prompt.suffix_ids),
        )
        generation = generate(
            loaded.model,
            compressed.cache,
            next_position=prefilled.context_length,
            max_new_tokens=max_new_tokens,
            stop_token_ids=stops,
            first_logits=prefilled.last_logits,
            suffix_ids=suffix_ids,
        )
        prediction = loaded.tokenizer.decode(generation.token_ids, skip_special_tokens=True).strip()
        metrics = benchmark.score(prediction, sample)
        per_layer = compressed.kept_tokens_per_layer
        rows[cell.cell_id] = {
            "prompt_hash": prompt.prompt_hash,
            "context_tokens": prefilled.context_length,
            "question_tokens": len(prompt.suffix_ids),
            "truncated_tokens": prompt.truncated_tokens,
            "kept_tokens": sum(per_layer) / len(per_layer),
            "kept_tokens_total": int(sum(per_layer) * compressed.cache.layers[0].keys.shape[1]),
            "kept_tokens_per_layer": per_layer,
            "prediction": prediction,
            "score": metrics[benchmark.primary_metric],
            "metrics": metrics,
            "kl": kl,
            "top1_agreement": agreement,
            "kv_bytes_full": kv_bytes_full,
            "kv_bytes_kept": kept_bytes,
            "masked_only": method.masked_only,
            "peak_memory_bytes": peak_memory_bytes(device),
            "prefill_s": prefilled.seconds,
            "compression_s": compressed.seconds,
            "decode_s": generation.seconds,
            "tokens_generated": len(generation.token_ids),
        }
        del compressed
    return rows


def evaluate_unit(loaded: LoadedModel, unit: WorkUnit) -> dict[str, list[dict]]:
    """Evaluate every cell of a unit on its samples; return rows per cell_id, one per sample.

    A sample that fails gets a row with `error` set for every cell, and the unit goes on.
    """
    benchmark = build_benchmark(unit.benchmark, **unit.benchmark_params)
    max_new_tokens = unit.max_new_tokens or benchmark.max_new_tokens
    all_samples = benchmark.load(loaded.tokenizer, unit.num_samples, unit.seed)
    cells = [(cell, build_method(cell.method, **cell.method_params)) for cell in unit.cells]
    results: dict[str, list[dict]] = {cell.cell_id: [] for cell, _ in cells}

    for index in unit.sample_indices:
        sample = all_samples[index]
        started = time.perf_counter()
        prompt = build_prompt(
            loaded.tokenizer,
            sample,
            chat_template=unit.chat_template,
            query_aware=unit.query_aware,
            max_prompt_tokens=_max_prompt_tokens(loaded, max_new_tokens),
        )
        try:
            partial = evaluate_sample(loaded, benchmark, sample, prompt, cells, max_new_tokens)
            error = None
        except (RuntimeError, ValueError) as failure:
            log.exception("sample %s failed in unit %s/%d", sample.sample_id, unit.benchmark, unit.chunk_index)
            partial, error = {}, f"{type(failure).__name__}: {failure}"
        for cell, _ in cells:
            row = _base_row(unit, cell, sample)
            row.update(partial.get(cell.cell_id, {"prompt_hash": prompt.prompt_hash, "error": error}))
            results[cell.cell_id].append(row)
        log.info(
            "%s %s sample %s: %d cells in %.1f s",
            unit.model, unit.benchmark, sample.sample_id, len(cells), time.perf_counter() - started,
        )
    return results
