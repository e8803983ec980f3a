"""Scoring functions shared by the benchmarks, each returning a value in [0, 1].

LongBench scores QA by token F1, summaries by ROUGE-L, classification, retrieval and counting by
accuracy, and code by edit similarity. RULER-style tasks use substring matches of the references.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Iterable
from functools import lru_cache

from rapidfuzz import fuzz
from rouge_score import rouge_scorer

ARTICLES = re.compile(r"\b(a|an|the)\b")
PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, drop punctuation and the articles a/an/the, collapse spaces."""
    text = text.lower()
    text = "".join(character for character in text if character not in PUNCTUATION)
    text = ARTICLES.sub(" ", text)
    return " ".join(text.split())


def token_f1(prediction: str, reference: str) -> float:
    """Harmonic mean of token precision and recall after SQuAD normalisation (bag of tokens)."""
    predicted = normalize_answer(prediction).split()
    expected = normalize_answer(reference).split()
    common = Counter(predicted) & Counter(expected)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(predicted)
    recall = overlap / len(expected)
    return 2 * precision * recall / (precision + recall)


@lru_cache(maxsize=1)
def _rouge_l_scorer() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure from the `rouge-score` package (longest common subsequence of tokens)."""
    if not prediction.strip() or not reference.strip():
        return 0.0
    return float(_rouge_l_scorer().score(reference, prediction)["rougeL"].fmeasure)


def classification_score(prediction: str, reference: str, class_names: Iterable[str]) -> float:
    """1/m when the reference is among the m class names found in the prediction, else 0.

    A class name that is a strict substring of the reference (e.g. "Date" inside "Other date")
    does not count as a separate match, so answering the reference alone scores 1.
    """
    matches = [name for name in class_names if name and name in prediction]
    matches = [name for name in matches if name == reference or name not in reference]
    if reference not in matches:
        return 0.0
    return 1.0 / len(matches)


def retrieval_score(prediction: str, reference: str) -> float:
    """Share of the numbers in the prediction that equal the reference's paragraph number.

    The reference reads like "Paragraph 12"; a prediction with no number scores 0.
    """
    paragraph = re.search(r"(\d+)", reference)
    if paragraph is None:
        return 0.0
    numbers = re.findall(r"\d+", prediction)
    if not numbers:
        return 0.0
    return sum(number == paragraph.group(1) for number in numbers) / len(numbers)


def count_score(prediction: str, reference: str) -> float:
    """Share of the numbers in the prediction that equal the reference count; 0 with no number."""
    numbers = re.findall(r"\d+", prediction)
    if not numbers:
        return 0.0
    return sum(number == reference.strip() for number in numbers) / len(numbers)


def first_code_line(prediction: str) -> str:
    """The first line that looks like code: not a Markdown fence or a `#` / `//` comment."""
    for line in prediction.lstrip("\n").split("\n"):
        if "`" not in line and "#" not in line and "//" not in line:
            return line
    return ""


def code_similarity(prediction: str, reference: str) -> float:
    """Normalised Levenshtein similarity (rapidfuzz `fuzz.ratio` / 100) of the first code line."""
    return fuzz.ratio(first_code_line(prediction), reference) / 100


def first_line(prediction: str) -> str:
    """The first line after leading blank lines; few-shot tasks score only this line."""
    return prediction.lstrip("\n").split("\n")[0]


def best_over_references(metric: Callable[[str, str], float], prediction: str, references: Iterable[str]) -> float:
    """The best score of `prediction` against any one of the accepted references (0 with none)."""
    return max((metric(prediction, reference) for reference in references), default=0.0)


def references_found(prediction: str, references: Iterable[str]) -> list[bool]:
    """Whether each reference occurs in the prediction, ignoring case."""
    lowered = prediction.lower()
    return [reference.lower() in lowered for reference in references]


def string_match_scores(prediction: str, references: Iterable[str]) -> dict[str, float]:
    """Substring matches of the references: share found, all found, any found."""
    found = references_found(prediction, references)
    if not found:
        return {"reference_recall": 0.0, "all_present": 0.0, "any_present": 0.0}
    return {
        "reference_recall": sum(found) / len(found),
        "all_present": float(all(found)),
        "any_present": float(any(found)),
    }
