"""LongBench v1, English tasks: long-document QA, summarization, few-shot, synthetic and code tasks."""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from benchmarks.base import Benchmark, BenchmarkError, Sample, TaskInfo, split_counts
from benchmarks.longbench_tasks import LONGBENCH_TASKS, LongBenchTask
from benchmarks.metrics import (
    best_over_references,
    classification_score,
    code_similarity,
    count_score,
    first_line,
    retrieval_score,
    rouge_l,
    token_f1,
)
from benchmarks.sources import LOCAL_FORMATS, read_hub_rows, read_local_rows

REQUIRED_FIELDS = ("input", "context", "answers")

METRICS = {
    "qa_f1": token_f1,
    "rouge_l": rouge_l,
    "retrieval": retrieval_score,
    "count": count_score,
    "code_similarity": code_similarity,
}


def row_to_sample(task: LongBenchTask, row: dict, index: int) -> Sample:
    """Fill the task's templates with one LongBench row (fields input, context, answers, ...)."""
    # `datasets` fills a key missing from some rows with None, so a null counts as missing.
    missing = [name for name in REQUIRED_FIELDS if row.get(name) is None]
    if missing:
        raise BenchmarkError(f"LongBench row {index} of task {task.name!r} lacks field(s) {', '.join(missing)}")
    answers = row["answers"]
    if isinstance(answers, str):
        answers = [answers]
    if not isinstance(answers, (list, tuple)) or not all(isinstance(answer, str) for answer in answers):
        raise BenchmarkError(
            f"LongBench row {index} of task {task.name!r} has answers={answers!r}; expected a string or a list of strings"
        )
    if not isinstance(row["context"], str) or not row["context"].strip():
        raise BenchmarkError(
            f"LongBench row {index} of task {task.name!r} has context={str(row['context'])[:40]!r}; expected non-empty text"
        )
    row_id = row.get("_id") or f"{index:04d}"
    return Sample(
        sample_id=f"{task.name}-{row_id}",
        context=task.context_template.format(context=row["context"]),
        question=task.question_template.format(input=row["input"]),
        references=tuple(str(answer) for answer in answers),
        task=task.name,
        metadata={
            "all_classes": list(row.get("all_classes") or []),
            "length": row.get("length"),
            "source_id": row.get("_id"),
        },
        separator=task.separator,
        plain_suffix="",
        chat_template=task.chat_template,
        max_new_tokens=task.max_new_tokens,
    )


@dataclass
class LongBenchBenchmark(Benchmark):
    """LongBench v1 English tasks with the published prompts, output lengths and metrics.

    Parameters:
    - task_names (None): task names, or one name; None selects all 16 English tasks.
    - data_path (None): a local JSONL or Parquet file in the LongBench format (fields input,
      context, answers, length, dataset, language, all_classes, _id), rows matched to tasks by
      their `dataset` field, or a folder of `<task>.jsonl` / `<task>.parquet` files. None loads
      `hub_id` from the Hugging Face hub.
    - hub_id ("THUDM/LongBench"): the hub dataset, one configuration per task, split "test".

    With one task selected, `max_new_tokens` and `chat_template` are that task's. With several,
    each sample carries its task's settings (`Sample.max_new_tokens`, `Sample.chat_template`).
    """

    name = "longbench"
    version = "1"
    source = "THUDM/LongBench on the Hugging Face hub, or a local JSONL/Parquet file in its format"
    max_new_tokens = 512
    primary_metric = "score"
    higher_is_better = {"score": True, **{metric: True for metric in (*METRICS, "classification")}}

    task_names: list[str] | str | None = None
    data_path: str | None = None
    # THUDM/LongBench needs a loading script, which datasets 4.0 and later reject, so the hub path
    # reads the hub's Parquet conversion of it (benchmarks.sources.read_hub_rows).
    hub_id: str = "THUDM/LongBench"

    def __post_init__(self) -> None:
        names = [self.task_names] if isinstance(self.task_names, str) else list(self.task_names or LONGBENCH_TASKS)
        unknown = [name for name in names if name not in LONGBENCH_TASKS]
        if unknown or not names:
            raise BenchmarkError(
                f"invalid longbench task_names={self.task_names!r}; known: {', '.join(LONGBENCH_TASKS)}"
            )
        self.selected = [LONGBENCH_TASKS[name] for name in dict.fromkeys(names)]
        # Instance attributes shadow the class defaults, so a caller that reads one value per
        # benchmark gets the task's own settings when a single task is selected.
        self.max_new_tokens = max(task.max_new_tokens for task in self.selected)
        self.chat_template = any(task.chat_template for task in self.selected)

    def tasks(self) -> list[TaskInfo]:
        return [
            TaskInfo(task.name, task.num_samples, task.metric, task.max_new_tokens, task.chat_template)
            for task in self.selected
        ]

    def _task_rows(self, task: LongBenchTask) -> list[dict]:
        if self.data_path is None:
            return read_hub_rows(self.hub_id, task.name, "test")
        path = Path(self.data_path)
        if path.is_dir():
            candidates = [path / f"{task.name}{suffix}" for suffix in LOCAL_FORMATS]
            found = next((candidate for candidate in candidates if candidate.is_file()), None)
            if found is None:
                raise BenchmarkError(f"no file for LongBench task {task.name!r} in {path}; expected {task.name}.jsonl")
            return read_local_rows(found)
        rows = read_local_rows(path)
        labelled = [row for row in rows if "dataset" in row]
        if len(labelled) < len(rows) and len(self.selected) > 1:
            raise BenchmarkError(f"rows of {path} lack the 'dataset' field, so they cannot be matched to several tasks")
        if not labelled:
            return rows
        matching = [row for row in labelled if row["dataset"] == task.name]
        if not matching:
            present = sorted({str(row["dataset"]) for row in labelled})
            raise BenchmarkError(f"{path} has no rows of LongBench task {task.name!r}; it has: {', '.join(present)}")
        return matching

    def load(self, tokenizer, num_samples: int, seed: int) -> list[Sample]:
        samples: list[Sample] = []
        for task, count in zip(self.selected, split_counts(num_samples, len(self.selected))):
            if count == 0:
                continue
            rows = self._task_rows(task)
            if count > len(rows):
                raise BenchmarkError(
                    f"LongBench task {task.name!r} has {len(rows)} rows, fewer than the {count} requested"
                )
            chosen = sorted(random.Random(f"longbench:{task.name}:{seed}").sample(range(len(rows)), count))
            samples.extend(row_to_sample(task, rows[index], index) for index in chosen)
        return samples

    def score(self, prediction: str, sample: Sample) -> dict[str, float]:
        task = LONGBENCH_TASKS[sample.task]
        if task.first_line_only:
            prediction = first_line(prediction)
        if task.metric == "classification":
            metric = partial(classification_score, class_names=sample.metadata["all_classes"])
        else:
            metric = METRICS[task.metric]
        value = best_over_references(metric, prediction, sample.references)
        return {"score": value, task.metric: value}
