"""Turn a sample into token ids: the part to compress and the part fed after compression."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from benchmarks.base import Sample


@dataclass
class PromptTokens:
    """Token ids of one prompt under a protocol.

    Query-aware: the question is inside `context_ids` and `suffix_ids` is empty.
    Query-agnostic: `context_ids` ends before the question, which is in `suffix_ids`.
    """

    context_ids: list[int]
    suffix_ids: list[int]
    truncated_tokens: int
    prompt_hash: str
    query_aware: bool
    chat_template: bool


def _split_prompt(tokenizer, sample: Sample, chat_template: bool) -> tuple[str, str]:
    separator = "\n\n"  # joined directly, small models continue the text instead of answering
    if chat_template and getattr(tokenizer, "chat_template", None):
        user_message = sample.context + separator + sample.question
        full = tokenizer.apply_chat_template(
            [{"role": "user", "content": user_message}], tokenize=False, add_generation_prompt=True
        )
        split_at = full.rindex(separator + sample.question) + len(separator)
        return full[:split_at], full[split_at:]
    prefix = tokenizer.bos_token if tokenizer.bos_token and getattr(tokenizer, "add_bos_token", False) else ""
    return prefix + sample.context + separator, sample.question + "\n"


def truncate_middle(token_ids: list[int], max_tokens: int) -> tuple[list[int], int]:
    """Keep the first and last halves of `max_tokens`; return the kept ids and how many were cut."""
    if len(token_ids) <= max_tokens:
        return token_ids, 0
    head = max_tokens // 2
    tail = max_tokens - head
    return token_ids[:head] + token_ids[len(token_ids) - tail :], len(token_ids) - max_tokens


def build_prompt(
    tokenizer,
    sample: Sample,
    chat_template: bool,
    query_aware: bool,
    max_prompt_tokens: int | None = None,
) -> PromptTokens:
    """Tokenize a sample; over-long contexts are cut in the middle to fit `max_prompt_tokens`."""
    context_text, question_text = _split_prompt(tokenizer, sample, chat_template)
    context_ids = tokenizer(context_text, add_special_tokens=False)["input_ids"]
    suffix_ids = tokenizer(question_text, add_special_tokens=False)["input_ids"]

    truncated = 0
    if max_prompt_tokens is not None:
        context_ids, truncated = truncate_middle(context_ids, max(1, max_prompt_tokens - len(suffix_ids)))

    digest = hashlib.sha256(repr((context_ids, suffix_ids)).encode()).hexdigest()[:16]
    if query_aware:
        context_ids, suffix_ids = context_ids + suffix_ids, []
    return PromptTokens(context_ids, suffix_ids, truncated, digest, query_aware, chat_template)
