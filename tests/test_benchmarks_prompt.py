"""Both protocols on every benchmark and task: where the prompt is split, chat templates, truncation."""

from __future__ import annotations

import json

import pytest

from benchmarks import BenchmarkError, build_benchmark
from benchmarks.longbench_tasks import LONGBENCH_TASKS
from benchmarks.prompt import build_prompt, truncate_prompt_middle


@pytest.fixture(scope="module")
def tokenizer(smollm2):
    return smollm2.tokenizer


@pytest.fixture(scope="module")
def every_sample(tokenizer, tmp_path_factory):
    """One or more samples of every benchmark and every task."""
    folder = tmp_path_factory.mktemp("data")
    longbench_rows = [
        {
            "input": "" if task in ("gov_report", "multi_news", "passage_count", "lcc") else f"input of {task}?",
            "context": f"Passage about {task}. It has two sentences.",
            "answers": ["reference"],
            "length": 7,
            "dataset": task,
            "language": "en",
            "all_classes": None,
            "_id": f"{task}-0",
        }
        for task in LONGBENCH_TASKS
    ]
    longbench_file = folder / "longbench.jsonl"
    longbench_file.write_text("".join(json.dumps(row) + "\n" for row in longbench_rows), encoding="utf-8")
    aime_file = folder / "aime.jsonl"
    aime_file.write_text(json.dumps({"problem": "Compute 2+2.", "answer": "4"}) + "\n", encoding="utf-8")

    samples = build_benchmark("needle", context_length=300).load(tokenizer, 1, seed=0)
    samples += build_benchmark("needle_grid", context_lengths=[300], depths=[0, 100]).load(tokenizer, 2, seed=0)
    samples += build_benchmark("ruler", context_length=600).load(tokenizer, 8, seed=0)
    samples += build_benchmark("longbench", data_path=str(longbench_file)).load(tokenizer, 16, seed=0)
    samples += build_benchmark("aime", data_path=str(aime_file)).load(tokenizer, 1, seed=0)
    return samples


def test_every_task_is_covered(every_sample):
    tasks = {sample.task for sample in every_sample}
    assert set(LONGBENCH_TASKS) <= tasks
    assert {"niah_single_uuid", "variable_tracking", "common_words", "aime2025", "passkey@300"} <= tasks
    assert len(every_sample) == 28


@pytest.mark.parametrize("chat_template", [True, False])
def test_protocols_share_tokens(tokenizer, every_sample, chat_template):
    for sample in every_sample:
        aware = build_prompt(tokenizer, sample, chat_template=chat_template, query_aware=True)
        agnostic = build_prompt(tokenizer, sample, chat_template=chat_template, query_aware=False)
        assert aware.suffix_ids == [], sample.sample_id
        assert aware.context_ids == agnostic.context_ids + agnostic.suffix_ids, sample.sample_id
        assert aware.prompt_hash == agnostic.prompt_hash, sample.sample_id
        expected_chat = chat_template and sample.chat_template
        assert aware.chat_template == expected_chat, sample.sample_id


@pytest.mark.parametrize("chat_template", [True, False])
def test_agnostic_split_before_question(tokenizer, every_sample, chat_template):
    for sample in every_sample:
        prompt = build_prompt(tokenizer, sample, chat_template=chat_template, query_aware=False)
        # no clean-up: it would drop the space before a comma that starts a filler window
        context_text = tokenizer.decode(prompt.context_ids, clean_up_tokenization_spaces=False)
        question_text = tokenizer.decode(prompt.suffix_ids, clean_up_tokenization_spaces=False)
        assert context_text.endswith(sample.context + sample.separator), sample.sample_id
        assert question_text.startswith(sample.question), sample.sample_id
        if prompt.chat_template:
            assert question_text.endswith("<|im_start|>assistant\n" + sample.answer_prefix), sample.sample_id
        else:
            assert question_text == sample.question + sample.plain_suffix + sample.answer_prefix, sample.sample_id


def test_input_after_context_in_suffix(tokenizer, every_sample):
    # In these templates the task's input follows the context and precedes a closing instruction.
    # The input belongs to the question, so it is fed after compression.
    by_task = {sample.task: sample for sample in every_sample}
    for task in ("passage_retrieval_en", "repobench-p", "trec", "triviaqa", "samsum"):
        prompt = build_prompt(tokenizer, by_task[task], chat_template=True, query_aware=False)
        assert f"input of {task}?" in tokenizer.decode(prompt.suffix_ids), task
        assert f"input of {task}?" not in tokenizer.decode(prompt.context_ids), task


def test_truncation_takes_context_only():
    context = list(range(100))
    suffix = [1000, 1001, 1002]
    kept, cut = truncate_prompt_middle(context, suffix, max_prompt_tokens=20)
    # first 10 prompt tokens, then the last 10: 7 context tokens and the 3 question tokens
    assert kept == list(range(10)) + list(range(93, 100))
    assert cut == 83
    assert truncate_prompt_middle(context, suffix, max_prompt_tokens=200) == (context, 0)


def test_truncation_with_long_question():
    kept, cut = truncate_prompt_middle(list(range(10)), [100] * 7, max_prompt_tokens=10)
    assert kept == [0, 1, 2]
    assert cut == 7
    with pytest.raises(BenchmarkError, match="the question alone is 7 tokens, at or over max_prompt_tokens=7"):
        truncate_prompt_middle(list(range(10)), [100] * 7, max_prompt_tokens=7)
