"""AIME-style math: long reasoning outputs, the last \\boxed{...} answer compared as an integer."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from benchmarks.base import Benchmark, BenchmarkError, DecodeEvictionSettings, Sample, SamplingSettings, TaskInfo
from benchmarks.sources import read_hub_rows, read_local_rows

# A widely used instruction for math reasoning models, which requests a boxed final answer.
INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
INTEGER = re.compile(r"[+-]?\d+(?:\.0*)?")


def last_boxed(text: str) -> str | None:
    """Return the content of the last `\\boxed{...}` (nested braces allowed) or `\\boxed 42` in `text`."""
    start = text.rfind("\\boxed")
    if start < 0:
        return None
    position = start + len("\\boxed")
    if text[position : position + 1] == "{":
        depth = 0
        for index in range(position, len(text)):
            if text[index] == "{":
                depth += 1
            elif text[index] == "}":
                depth -= 1
                if depth == 0:
                    return text[position + 1 : index]
        return None  # unclosed brace: the output was cut off inside the answer
    match = re.match(r"\s+([^\s$]+)", text[position:])
    return match.group(1) if match else None


def parse_integer(answer: str) -> int | None:
    """Parse an integer from a boxed answer such as `33`, `033`, `1,024`, `$70^\\circ$` or `\\text{5}`."""
    cleaned = re.sub(r"\\text\{([^}]*)\}", r"\1", answer)
    for noise in ("^\\circ", "^{\\circ}", "\\!", "\\,", ",", "$", " "):
        cleaned = cleaned.replace(noise, "")
    cleaned = cleaned.lstrip("=")
    if not INTEGER.fullmatch(cleaned):
        return None
    return int(float(cleaned)) if "." in cleaned else int(cleaned)


def extract_answer(prediction: str) -> int | None:
    """Return the integer in the last boxed answer of a prediction, or None when there is none."""
    boxed = last_boxed(prediction)
    return None if boxed is None else parse_integer(boxed)


@dataclass
class AimeBenchmark(Benchmark):
    """AIME 2025 problems; a prediction is correct when its last boxed answer equals the answer.

    It evaluates decode-time eviction (`decode_eviction`: the cache is kept at
    `eviction_target` tokens per KV head, cut back every `eviction_interval` generated
    tokens) with sampled decoding (`sampling`: `num_generations` answers per problem, scored
    as avg@k by `score_generations`).

    Parameters:
    - data_path (None): a local JSONL or Parquet file with fields `problem` (or `question`)
      and `answer`; None loads `hub_id` from the Hugging Face hub.
    - hub_id ("opencompass/AIME2025") and hub_configs (["AIME2025-I", "AIME2025-II"]): the hub
      dataset and the configurations concatenated in order, split "test".
    - num_generations (8), temperature (0.6), top_p (0.95): sampling for avg@k.
    - eviction_target (2048), eviction_interval (128): decode-time eviction.
    """

    name = "aime"
    version = "1"
    source = "opencompass/AIME2025 on the Hugging Face hub, or a local JSONL/Parquet file (problem, answer)"
    # NOTE: reasoning models are usually given 32k new tokens on AIME; 4096 keeps runs within an
    # 8k-context model such as SmolLM2. Raise it with the run's max_new_tokens.
    max_new_tokens = 4096
    primary_metric = "accuracy"
    higher_is_better = {"accuracy": True, "answer_found": True, "pass_at_k": True, "majority_accuracy": True}

    data_path: str | None = None
    hub_id: str = "opencompass/AIME2025"
    hub_configs: list[str] = field(default_factory=lambda: ["AIME2025-I", "AIME2025-II"])
    num_generations: int = 8
    temperature: float = 0.6
    top_p: float = 0.95
    eviction_target: int = 2048
    eviction_interval: int = 128

    def __post_init__(self) -> None:
        for name in ("num_generations", "eviction_target", "eviction_interval"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise BenchmarkError(f"invalid aime {name}={value!r}; expected a positive integer")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise BenchmarkError(
                f"invalid aime sampling temperature={self.temperature!r}, top_p={self.top_p!r}; "
                "expected temperature >= 0 and 0 < top_p <= 1"
            )
        self.decode_eviction = DecodeEvictionSettings(self.eviction_target, self.eviction_interval)
        self.sampling = SamplingSettings(self.temperature, self.top_p, self.num_generations)

    def tasks(self) -> list[TaskInfo]:
        return [TaskInfo("aime2025", 30, self.primary_metric, self.max_new_tokens)]

    def _rows(self) -> list[dict]:
        if self.data_path is not None:
            return read_local_rows(self.data_path)
        return [row for config in self.hub_configs for row in read_hub_rows(self.hub_id, config, "test")]

    def load(self, tokenizer, num_samples: int, seed: int) -> list[Sample]:
        rows = self._rows()
        if num_samples > len(rows):
            raise BenchmarkError(f"aime has {len(rows)} problems, fewer than the {num_samples} requested")
        samples = []
        # Problems are taken in file order: the set is small and usually evaluated whole.
        for index, row in enumerate(rows[:num_samples]):
            problem = row.get("problem", row.get("question"))
            answer = parse_integer(str(row.get("answer", "")))
            if problem is None or answer is None:
                raise BenchmarkError(
                    f"aime row {index} needs a 'problem' (or 'question') and an integer 'answer'; got fields "
                    f"{', '.join(sorted(row))}"
                )
            samples.append(
                Sample(
                    sample_id=f"aime-{row.get('id', index)}",
                    context=str(problem),
                    question=INSTRUCTION,
                    references=(str(answer),),
                    task="aime2025",
                    metadata={"answer": answer},
                )
            )
        return samples

    def score(self, prediction: str, sample: Sample) -> dict[str, float]:
        answer = extract_answer(prediction)
        return {
            "accuracy": float(answer is not None and answer == int(sample.references[0])),
            "answer_found": float(answer is not None),
        }

    def score_generations(self, predictions: list[str], sample: Sample) -> dict[str, float]:
        """Score k sampled answers of one problem: avg@k as `accuracy`, plus pass@k and majority vote."""
        scores = [self.score(prediction, sample) for prediction in predictions]
        answers = [answer for answer in map(extract_answer, predictions) if answer is not None]
        majority = Counter(answers).most_common(1)[0][0] if answers else None
        return {
            "accuracy": sum(score["accuracy"] for score in scores) / len(scores),
            "answer_found": sum(score["answer_found"] for score in scores) / len(scores),
            "pass_at_k": max(score["accuracy"] for score in scores),
            "majority_accuracy": float(majority is not None and majority == int(sample.references[0])),
        }
