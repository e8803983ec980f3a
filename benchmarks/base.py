"""What every benchmark declares: how to load samples, the generation length, and how to score."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar


@dataclass(frozen=True)
class Sample:
    """One evaluation item: a long context, a question asked about it, and accepted answers."""

    sample_id: str
    context: str
    question: str
    references: tuple[str, ...]
    task: str
    metadata: dict = field(default_factory=dict, hash=False, compare=False)


class BenchmarkError(ValueError):
    """A benchmark name, parameter or data file that cannot be used."""


@dataclass
class Benchmark:
    """Base class: subclasses set the class attributes and implement `load` and `score`."""

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    max_new_tokens: ClassVar[int] = 32
    chat_template: ClassVar[bool] = True
    primary_metric: ClassVar[str] = "score"
    higher_is_better: ClassVar[dict[str, bool]] = {}

    def load(self, tokenizer, num_samples: int, seed: int) -> list[Sample]:
        """Return `num_samples` samples, the same ones for the same tokenizer and seed."""
        raise NotImplementedError

    def score(self, prediction: str, sample: Sample) -> dict[str, float]:
        """Return every metric of this benchmark for one prediction; the primary one included."""
        raise NotImplementedError
