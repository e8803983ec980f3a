"""Turn a sample into token ids: the part to compress and the part fed after compression."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from benchmarks.base import BenchmarkError, Sample


@dataclass
class PromptTokens:
    """Token ids of one prompt under a protocol.

    Query-aware: the question is inside `context_ids` and `suffix_ids` is empty.
    Query-agnostic: `context_ids` ends before the question, which is in `suffix_ids`.
    `chat_template` records whether the chat template was applied to this sample.
    """

    context_ids: list[int]
    suffix_ids: list[int]
    truncated_tokens: int
    prompt_hash: str
    query_aware: bool
    chat_template: bool


def _split_chat_prompt(tokenizer, sample: Sample) -> tuple[str, str]:
    user_message = sample.context + sample.separator + sample.question
    full = tokenizer.apply_chat_template(
        [{"role": "user", "content": user_message}], tokenize=False, add_generation_prompt=True
    )
    full += sample.answer_prefix
    marker = sample.separator + sample.question
    if marker not in full:
        raise BenchmarkError(
            f"the chat template of {type(tokenizer).__name__} changed the question of sample "
            f"{sample.sample_id!r}, so the prompt cannot be split before it; run without the chat template"
        )
    split_at = full.rindex(marker) + len(sample.separator)
    return full[:split_at], full[split_at:]


def _split_plain_prompt(tokenizer, sample: Sample) -> tuple[str, str]:
    prefix = tokenizer.bos_token if tokenizer.bos_token and getattr(tokenizer, "add_bos_token", False) else ""
    context_text = prefix + sample.context + sample.separator
    return context_text, sample.question + sample.plain_suffix + sample.answer_prefix


def truncate_middle(token_ids: list[int], max_tokens: int) -> tuple[list[int], int]:
    """Keep the first and last halves of `max_tokens`; return the kept ids and how many were cut."""
    if len(token_ids) <= max_tokens:
        return token_ids, 0
    head = max_tokens // 2
    tail = max_tokens - head
    return token_ids[:head] + token_ids[len(token_ids) - tail :], len(token_ids) - max_tokens


def truncate_prompt_middle(
    context_ids: list[int], suffix_ids: list[int], max_prompt_tokens: int
) -> tuple[list[int], int]:
    """Cut the prompt to the first and last halves of `max_prompt_tokens`, removing context tokens only.

    Returns the kept context ids and how many were cut. When the question is longer than the
    last half, the question stays whole and the context keeps only its beginning.
    """
    if len(suffix_ids) >= max_prompt_tokens:
        raise BenchmarkError(
            f"the question alone is {len(suffix_ids)} tokens, at or over max_prompt_tokens={max_prompt_tokens}; "
            "lower max_new_tokens or use a model with a longer context"
        )
    prompt_length = len(context_ids) + len(suffix_ids)
    if prompt_length <= max_prompt_tokens:
        return context_ids, 0
    if len(suffix_ids) <= max_prompt_tokens - max_prompt_tokens // 2:
        kept, _ = truncate_middle(context_ids + suffix_ids, max_prompt_tokens)
        kept_context = kept[: len(kept) - len(suffix_ids)]
    else:
        kept_context = context_ids[: max_prompt_tokens - len(suffix_ids)]
    return kept_context, len(context_ids) - len(kept_context)


def build_prompt(
    tokenizer,
    sample: Sample,
    chat_template: bool,
    query_aware: bool,
    max_prompt_tokens: int | None = None,
) -> PromptTokens:
    """Tokenize a sample; an over-long prompt is cut in the middle to fit `max_prompt_tokens`.

    The chat template is applied only when the run requests it, the sample allows it
    (`Sample.chat_template`) and the tokenizer has one.
    """
    use_chat = chat_template and sample.chat_template and bool(getattr(tokenizer, "chat_template", None))
    split = _split_chat_prompt if use_chat else _split_plain_prompt
    context_text, question_text = split(tokenizer, sample)
    context_ids = tokenizer(context_text, add_special_tokens=False)["input_ids"]
    suffix_ids = tokenizer(question_text, add_special_tokens=False)["input_ids"]

    truncated = 0
    if max_prompt_tokens is not None:
        context_ids, truncated = truncate_prompt_middle(context_ids, suffix_ids, max_prompt_tokens)

    digest = hashlib.sha256(repr((context_ids, suffix_ids)).encode()).hexdigest()[:16]
    if query_aware:
        context_ids, suffix_ids = context_ids + suffix_ids, []
    return PromptTokens(context_ids, suffix_ids, truncated, digest, query_aware, use_chat)
