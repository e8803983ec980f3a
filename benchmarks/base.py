"""What every benchmark declares: how to load samples, the generation length, and how to score."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from benchmarks.prompt import PromptTokens


@dataclass(frozen=True)
class Sample:
    """One evaluation item: a long context, a question asked about it, and accepted answers.

    The prompt reads `context + separator + question`. Without a chat template `plain_suffix`
    follows the question. `answer_prefix` starts the model's answer in both cases: after the
    question without a chat template, after the assistant turn header with one.
    `chat_template=False` marks a sample whose prompt is a raw completion prompt (few-shot or
    code) that is never wrapped in a chat template, whatever the run requests.
    `max_new_tokens`, when set, overrides the benchmark's default for this sample's task.
    """

    sample_id: str
    context: str
    question: str
    references: tuple[str, ...]
    task: str
    metadata: dict = field(default_factory=dict, hash=False, compare=False)
    separator: str = "\n\n"
    plain_suffix: str = "\n"
    answer_prefix: str = ""
    chat_template: bool = True
    max_new_tokens: int | None = None


@dataclass(frozen=True)
class TaskInfo:
    """One task of a benchmark: its size, primary metric and generation settings."""

    name: str
    num_samples: int | None  # rows in the published test split; None when samples are generated
    metric: str
    max_new_tokens: int
    chat_template: bool = True


@dataclass(frozen=True)
class DecodeEvictionSettings:
    """Decode-time eviction that a benchmark requests: keep the cache at `target` tokens per KV
    head, re-scoring and cutting it back every `interval` generated tokens."""

    target: int
    interval: int


@dataclass(frozen=True)
class SamplingSettings:
    """Sampled decoding that a benchmark requests: `num_generations` predictions per sample, the
    i-th drawn with seed `run seed + i`, scored by `Benchmark.score_generations` (avg@k)."""

    temperature: float
    top_p: float
    num_generations: int


def split_counts(total: int, num_tasks: int) -> list[int]:
    """Spread `total` samples over tasks as evenly as possible, earlier tasks taking the remainder."""
    base, remainder = divmod(total, num_tasks)
    return [base + (1 if index < remainder else 0) for index in range(num_tasks)]


class BenchmarkError(ValueError):
    """A benchmark name, parameter or data file that cannot be used."""


@dataclass
class Benchmark:
    """Base class: subclasses set the class attributes and implement `load` and `score`.

    `source` names where the samples come from. `higher_is_better` lists every metric that
    `score` returns. `decode_eviction` and `sampling` stay None for benchmarks that evaluate
    prefill compression with greedy decoding.
    """

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    source: ClassVar[str] = ""
    max_new_tokens: ClassVar[int] = 32
    chat_template: ClassVar[bool] = True
    primary_metric: ClassVar[str] = "score"
    higher_is_better: ClassVar[dict[str, bool]] = {}
    # A run evaluates a benchmark with `decode_eviction` in the decode phase unless its config names
    # the phases. With `sampling`, every cell decodes by sampling instead of greedily (workers.evaluate).
    decode_eviction: ClassVar[DecodeEvictionSettings | None] = None
    sampling: ClassVar[SamplingSettings | None] = None

    def load(self, tokenizer, num_samples: int, seed: int) -> list[Sample]:
        """Return `num_samples` samples, the same ones for the same tokenizer and seed."""
        raise NotImplementedError

    def score(self, prediction: str, sample: Sample) -> dict[str, float]:
        """Return every metric of this benchmark for one prediction; the primary one included."""
        raise NotImplementedError

    def score_generations(self, predictions: list[str], sample: Sample) -> dict[str, float]:
        """Score several sampled predictions of one sample, averaging each metric over them (avg@k)."""
        if not predictions:
            raise BenchmarkError(f"no predictions to score for sample {sample.sample_id!r}")
        scores = [self.score(prediction, sample) for prediction in predictions]
        return {metric: sum(score[metric] for score in scores) / len(scores) for metric in scores[0]}

    def tasks(self) -> list[TaskInfo]:
        """List the tasks this instance loads. A single-task benchmark has one, named after itself."""
        return [TaskInfo(self.name, None, self.primary_metric, self.max_new_tokens, self.chat_template)]

    def max_new_tokens_for(self, sample: Sample) -> int:
        """Generation length for one sample: its task's setting, else the benchmark default."""
        return sample.max_new_tokens if sample.max_new_tokens is not None else self.max_new_tokens

    def build_prompt(self, tokenizer, sample: Sample, chat_template: bool, query_aware: bool,
                     max_prompt_tokens: int | None = None) -> PromptTokens:
        """Tokenize one sample under a protocol; see `benchmarks.prompt.build_prompt`."""
        from benchmarks.prompt import build_prompt  # imported here: prompt.py imports Sample from this module

        return build_prompt(tokenizer, sample, chat_template, query_aware, max_prompt_tokens)
