"""LongBench: loading local files in the LongBench format, prompt templates, truncation and scoring."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from benchmarks import BenchmarkError, build_benchmark
from benchmarks.longbench_tasks import LONGBENCH_TASKS

TREC_CLASSES = ["Number", "Number of people", "City", "Date"]


def longbench_row(task: str, index: int, **fields) -> dict:
    row = {
        "input": f"question {index} of {task}?",
        "context": f"Context {index} of {task}. " * 3,
        "answers": [f"answer {index}"],
        "length": 12,
        "dataset": task,
        "language": "en",
        "all_classes": None,
        "_id": f"{task}-id-{index}",
    }
    row.update(fields)
    return row


def write_jsonl(path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


@pytest.fixture
def mixed_file(tmp_path):
    rows = [longbench_row("hotpotqa", index) for index in range(5)]
    rows += [longbench_row("trec", index, all_classes=TREC_CLASSES, answers=["City"]) for index in range(3)]
    rows += [longbench_row("lcc", index, input="", answers=["return x"]) for index in range(2)]
    return write_jsonl(tmp_path / "longbench.jsonl", rows)


@pytest.fixture(scope="module")
def tokenizer(smollm2):
    return smollm2.tokenizer


def test_loads_tasks_from_one_file(mixed_file):
    benchmark = build_benchmark("longbench", task_names=["hotpotqa", "trec", "lcc"], data_path=mixed_file)
    samples = benchmark.load(None, 5, seed=0)
    assert [sample.task for sample in samples] == ["hotpotqa", "hotpotqa", "trec", "trec", "lcc"]
    assert all(sample.sample_id.startswith(f"{sample.task}-{sample.task}-id-") for sample in samples)
    trec = samples[2]
    assert trec.references == ("City",)
    assert trec.metadata["all_classes"] == TREC_CLASSES
    assert trec.chat_template is False
    assert trec.max_new_tokens == 64
    assert samples[0].chat_template is True
    assert samples[0].max_new_tokens == 32


def test_sample_choice_depends_on_seed(mixed_file):
    benchmark = build_benchmark("longbench", task_names="hotpotqa", data_path=mixed_file)
    first = [sample.sample_id for sample in benchmark.load(None, 3, seed=0)]
    again = [sample.sample_id for sample in benchmark.load(None, 3, seed=0)]
    other = [sample.sample_id for sample in benchmark.load(None, 3, seed=5)]
    assert first == again
    assert first != other
    assert len(set(first)) == 3


def test_parquet_matches_jsonl(tmp_path):
    rows = [longbench_row("qasper", index) for index in range(4)]
    jsonl = write_jsonl(tmp_path / "qasper.jsonl", rows)
    parquet = tmp_path / "qasper.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    from_jsonl = build_benchmark("longbench", task_names="qasper", data_path=jsonl).load(None, 4, seed=1)
    from_parquet = build_benchmark("longbench", task_names="qasper", data_path=str(parquet)).load(None, 4, seed=1)
    assert from_jsonl == from_parquet
    assert [sample.references for sample in from_jsonl] == [sample.references for sample in from_parquet]


def test_folder_of_task_files(tmp_path):
    write_jsonl(tmp_path / "musique.jsonl", [longbench_row("musique", index) for index in range(2)])
    write_jsonl(tmp_path / "samsum.jsonl", [longbench_row("samsum", index) for index in range(2)])
    samples = build_benchmark("longbench", task_names=["musique", "samsum"], data_path=str(tmp_path)).load(None, 4, 0)
    assert [sample.task for sample in samples] == ["musique", "musique", "samsum", "samsum"]


def test_missing_data_is_reported(mixed_file, tmp_path):
    with pytest.raises(BenchmarkError, match="has no rows of LongBench task 'qmsum'; it has: hotpotqa, lcc, trec"):
        build_benchmark("longbench", task_names="qmsum", data_path=mixed_file).load(None, 1, 0)
    with pytest.raises(BenchmarkError, match="has 5 rows, fewer than the 6 requested"):
        build_benchmark("longbench", task_names="hotpotqa", data_path=mixed_file).load(None, 6, 0)
    with pytest.raises(BenchmarkError, match="no file for LongBench task 'trec'"):
        build_benchmark("longbench", task_names="trec", data_path=str(tmp_path / "..")).load(None, 1, 0)
    with pytest.raises(BenchmarkError, match="invalid longbench task_names=\\['hotpot'\\]"):
        build_benchmark("longbench", task_names=["hotpot"])


def test_offline_hub_names_local_fallback():
    # HF_HUB_OFFLINE=1 is set for tests, so the hub cannot be reached.
    with pytest.raises(BenchmarkError, match="could not load 'THUDM/LongBench'.*pass data_path="):
        build_benchmark("longbench", task_names="hotpotqa").load(None, 1, 0)


def test_script_dataset_read_from_parquet_conversion(monkeypatch):
    import datasets

    calls = []
    row = {"input": "Who wrote it?", "context": "Essay text.", "answers": ["Graham"], "length": 3,
           "dataset": "hotpotqa", "language": "en", "all_classes": None, "_id": "x1"}

    def load_dataset(hub_id, config, split, revision=None):
        calls.append((hub_id, config, split, revision))
        if revision is None:
            raise RuntimeError("Dataset scripts are no longer supported, but found LongBench.py")
        return [row]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    samples = build_benchmark("longbench", task_names="hotpotqa").load(None, 1, 0)
    assert calls == [
        ("THUDM/LongBench", "hotpotqa", "test", None),
        ("THUDM/LongBench", "hotpotqa", "test", "refs/convert/parquet"),
    ]
    assert [sample.references for sample in samples] == [("Graham",)]


OFFICIAL_PROMPTS = {
    "narrativeqa": "You are given a story, which can be either a novel or a movie script, and a question. Answer the "
    "question asconcisely as you can, using a single phrase if possible. Do not provide any explanation.\n\nStory: "
    "{context}\n\nNow, answer the question based on the story asconcisely as you can, using a single phrase if "
    "possible. Do not provide any explanation.\n\nQuestion: {input}\n\nAnswer:",
    "hotpotqa": "Answer the question based on the given passages. Only give me the answer and do not output any other "
    "words.\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given passages. Only "
    "give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
    "gov_report": "You are given a report by a government agency. Write a one-page summary of the report.\n\nReport:\n"
    "{context}\n\nNow, write a one-page summary of the report.\n\nSummary:",
    "trec": "Please determine the type of the question below. Here are some examples of questions.\n\n{context}\n{input}",
    "passage_retrieval_en": "Here are 30 paragraphs from Wikipedia, along with an abstract. Please determine which "
    "paragraph the abstract is from.\n\n{context}\n\nThe following is an abstract.\n\n{input}\n\nPlease enter the "
    "number of the paragraph that the abstract is from. The answer format must be like \"Paragraph 1\", \"Paragraph "
    "2\", etc.\n\nThe answer is: ",
    "lcc": "Please complete the code given below. \n{context}Next line of code:\n",
    "repobench-p": "Please complete the code given below. \n{context}{input}Next line of code:\n",
}


@pytest.mark.parametrize("task", sorted(OFFICIAL_PROMPTS))
def test_template_matches_published_prompt(task):
    from benchmarks.longbench import row_to_sample

    row = longbench_row(task, 0)
    sample = row_to_sample(LONGBENCH_TASKS[task], row, 0)
    expected = OFFICIAL_PROMPTS[task].format(context=row["context"], input=row["input"])
    assert sample.context + sample.separator + sample.question == expected


def test_task_table_settings():
    assert len(LONGBENCH_TASKS) == 16
    no_chat = {name for name, task in LONGBENCH_TASKS.items() if not task.chat_template}
    assert no_chat == {"trec", "triviaqa", "samsum", "lcc", "repobench-p"}
    first_line = {name for name, task in LONGBENCH_TASKS.items() if task.first_line_only}
    assert first_line == {"trec", "triviaqa", "samsum"}
    assert LONGBENCH_TASKS["gov_report"].max_new_tokens == 512
    assert LONGBENCH_TASKS["narrativeqa"].max_new_tokens == 128
    assert LONGBENCH_TASKS["passage_count"].metric == "count"


def test_plain_prompt_is_exact_template(tokenizer, mixed_file):
    benchmark = build_benchmark("longbench", task_names="trec", data_path=mixed_file)
    sample = benchmark.load(tokenizer, 1, seed=0)[0]
    # the run requests the chat template, but trec is a raw few-shot prompt
    prompt = benchmark.build_prompt(tokenizer, sample, chat_template=True, query_aware=True)
    assert prompt.chat_template is False
    index = int(sample.sample_id.rsplit("-", 1)[1])
    expected = OFFICIAL_PROMPTS["trec"].format(context=f"Context {index} of trec. " * 3, input=f"question {index} of trec?")
    assert tokenizer.decode(prompt.context_ids) == expected


def test_chat_prompt_splits_before_question(tokenizer, mixed_file):
    benchmark = build_benchmark("longbench", task_names="hotpotqa", data_path=mixed_file)
    sample = benchmark.load(tokenizer, 1, seed=0)[0]
    prompt = benchmark.build_prompt(tokenizer, sample, chat_template=True, query_aware=False)
    assert prompt.chat_template is True
    context_text = tokenizer.decode(prompt.context_ids)
    question_text = tokenizer.decode(prompt.suffix_ids)
    index = int(sample.sample_id.rsplit("-", 1)[1])
    assert context_text.endswith("The following are given passages.\n" + f"Context {index} of hotpotqa. " * 3 + "\n\n")
    assert question_text.startswith("Answer the question based on the given passages.")
    assert question_text.endswith(f"Question: question {index} of hotpotqa?\nAnswer:<|im_end|>\n<|im_start|>assistant\n")


def test_middle_truncation_keeps_both_halves(tokenizer, tmp_path):
    long_context = " ".join(f"word{index}" for index in range(600))
    path = write_jsonl(tmp_path / "qmsum.jsonl", [longbench_row("qmsum", 0, context=long_context)])
    benchmark = build_benchmark("longbench", task_names="qmsum", data_path=path)
    sample = benchmark.load(tokenizer, 1, seed=0)[0]
    full = benchmark.build_prompt(tokenizer, sample, chat_template=True, query_aware=True)
    cut = benchmark.build_prompt(tokenizer, sample, chat_template=True, query_aware=True, max_prompt_tokens=300)
    assert len(full.context_ids) > 600
    assert len(cut.context_ids) == 300
    assert cut.context_ids[:150] == full.context_ids[:150]
    assert cut.context_ids[150:] == full.context_ids[-150:]
    assert cut.truncated_tokens == len(full.context_ids) - 300
    assert full.truncated_tokens == 0
    assert cut.prompt_hash != full.prompt_hash


def test_scores_by_task_metric(mixed_file):
    benchmark = build_benchmark("longbench", task_names=["hotpotqa", "trec", "lcc"], data_path=mixed_file)
    hotpot, _, trec, _, lcc = benchmark.load(None, 5, seed=0)
    assert benchmark.score(hotpot.references[0], hotpot) == {"score": 1.0, "qa_f1": 1.0}
    # only the first line counts on few-shot tasks: the second line would add a wrong class
    assert benchmark.score("City\nQuestion: how many people?\nType: Number", trec) == {
        "score": 1.0,
        "classification": 1.0,
    }
    assert benchmark.score("City or Date", trec)["classification"] == 0.5
    assert benchmark.score("# next\nreturn x", lcc) == {"score": 1.0, "code_similarity": 1.0}


def test_score_is_best_over_answers(tmp_path):
    rows = [longbench_row("triviaqa", 0, answers=["Paris", "City of Light"])]
    benchmark = build_benchmark("longbench", task_names="triviaqa", data_path=write_jsonl(tmp_path / "t.jsonl", rows))
    sample = benchmark.load(None, 1, seed=0)[0]
    assert benchmark.score("the city of light", sample)["qa_f1"] == 1.0
    assert benchmark.score("paris france", sample)["qa_f1"] == pytest.approx(2 / 3)


def test_generation_settings_per_task(mixed_file):
    single = build_benchmark("longbench", task_names="trec", data_path=mixed_file)
    assert single.max_new_tokens == 64
    assert single.chat_template is False
    several = build_benchmark("longbench", task_names=["hotpotqa", "trec"], data_path=mixed_file)
    assert several.max_new_tokens == 64
    assert several.chat_template is True
    hotpot, trec = several.load(None, 2, seed=0)
    assert several.max_new_tokens_for(hotpot) == 32
    assert several.max_new_tokens_for(trec) == 64
