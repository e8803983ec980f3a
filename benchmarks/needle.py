"""Needle in a haystack: a 5-digit pass key hidden at a chosen depth in real essays."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from benchmarks.base import Benchmark, BenchmarkError, Sample
from benchmarks.haystack import haystack_token_ids

INSTRUCTION = "There is a pass key hidden inside a lot of irrelevant text. Find it and memorize it.\n\n"
NEEDLE = " The pass key is {value}. Remember it. {value} is the pass key. "
QUESTION = "What is the pass key? Answer with the 5-digit number only."


def spread_depths(num_samples: int, low: float = 10.0, high: float = 90.0) -> list[float]:
    """Depths in percent, evenly spaced from `low` to `high` inclusive."""
    if num_samples == 1:
        return [(low + high) / 2]
    return [low + (high - low) * index / (num_samples - 1) for index in range(num_samples)]


def insert_needle(tokenizer, filler_ids: list[int], needle: str, depth_percent: float) -> str:
    """Decode the filler and insert the needle at the first sentence end after the depth."""
    filler = tokenizer.decode(filler_ids)
    cut = int(len(filler) * depth_percent / 100)
    sentence_end = filler.find(". ", cut)
    cut = sentence_end + 1 if 0 <= sentence_end < len(filler) - 1 else cut
    return filler[:cut] + needle + filler[cut:]


def first_number(text: str) -> str | None:
    match = re.search(r"\d+", text)
    return match.group(0) if match else None


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

    def load(self, tokenizer, num_samples: int, seed: int) -> list[Sample]:
        haystack = haystack_token_ids(tokenizer)
        depths = [self.depth_percent] * num_samples if self.depth_percent is not None else spread_depths(num_samples)
        overhead = len(tokenizer(INSTRUCTION + NEEDLE.format(value="00000"), add_special_tokens=False)["input_ids"])
        filler_length = self.context_length - overhead
        if filler_length > len(haystack):
            raise BenchmarkError(
                f"needle context_length={self.context_length} exceeds the {len(haystack)} tokens of essays available"
            )

        samples = []
        for index, depth in enumerate(depths):
            rng = random.Random(f"needle:{seed}:{index}")
            value = str(rng.randint(10000, 99999))
            start = rng.randrange(0, len(haystack) - filler_length + 1)
            filler = list(haystack[start : start + filler_length])
            context = INSTRUCTION + insert_needle(tokenizer, filler, NEEDLE.format(value=value), depth)
            samples.append(
                Sample(
                    sample_id=f"needle-{self.context_length}-{index:04d}",
                    context=context,
                    question=QUESTION,
                    references=(value,),
                    task=f"passkey@{self.context_length}",
                    metadata={"depth_percent": depth, "context_length": self.context_length},
                )
            )
        return samples

    def score(self, prediction: str, sample: Sample) -> dict[str, float]:
        return {"exact_match": float(first_number(prediction) in sample.references)}
