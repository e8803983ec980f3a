"""The 16 English tasks of LongBench v1: prompt templates, generation lengths and metrics.

Templates and output lengths are those of the LongBench release (THUDM/LongBench, files
`config/dataset2prompt.json` and `config/dataset2maxlen.json`), split where the question starts:
the prompt reads `context_template + separator + question_template`. Their wording, typos included
("asconcisely"), is kept as published so that scores stay comparable with reported numbers.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LongBenchTask:
    """One LongBench task: how its prompt is built, how long the answer may be, how it is scored.

    `chat_template=False` marks few-shot and code-completion tasks, which LongBench runs as raw
    completion prompts. `first_line_only` scores only the first output line, because on few-shot
    prompts models continue with further invented examples.
    """

    name: str
    context_template: str  # contains {context}
    question_template: str  # may contain {input}
    metric: str
    max_new_tokens: int
    num_samples: int  # rows in the published test split
    separator: str = "\n\n"
    chat_template: bool = True
    first_line_only: bool = False


_MULTI_DOC_INSTRUCTION = "Answer the question based on the given passages. Only give me the answer and do not output any other words."
_NARRATIVE_INSTRUCTION = "asconcisely as you can, using a single phrase if possible. Do not provide any explanation."
_QASPER_INSTRUCTION = (
    "as concisely as you can, using a single phrase or sentence if possible. If the question cannot be answered "
    "based on the information in the article, write \"unanswerable\". If the question is a yes/no question, "
    "answer \"yes\", \"no\", or \"unanswerable\". Do not provide any explanation."
)


def _multi_doc_task(name: str) -> LongBenchTask:
    return LongBenchTask(
        name=name,
        context_template=_MULTI_DOC_INSTRUCTION + "\n\nThe following are given passages.\n{context}",
        question_template=_MULTI_DOC_INSTRUCTION + "\n\nQuestion: {input}\nAnswer:",
        metric="qa_f1",
        max_new_tokens=32,
        num_samples=200,
    )


LONGBENCH_TASKS: dict[str, LongBenchTask] = {
    task.name: task
    for task in (
        LongBenchTask(
            name="narrativeqa",
            context_template="You are given a story, which can be either a novel or a movie script, and a question. "
            "Answer the question " + _NARRATIVE_INSTRUCTION + "\n\nStory: {context}",
            question_template="Now, answer the question based on the story " + _NARRATIVE_INSTRUCTION
            + "\n\nQuestion: {input}\n\nAnswer:",
            metric="qa_f1",
            max_new_tokens=128,
            num_samples=200,
        ),
        LongBenchTask(
            name="qasper",
            context_template="You are given a scientific article and a question. Answer the question "
            + _QASPER_INSTRUCTION + "\n\nArticle: {context}",
            question_template=" Answer the question based on the above article " + _QASPER_INSTRUCTION
            + "\n\nQuestion: {input}\n\nAnswer:",
            metric="qa_f1",
            max_new_tokens=128,
            num_samples=200,
        ),
        LongBenchTask(
            name="multifieldqa_en",
            context_template="Read the following text and answer briefly.\n\n{context}",
            question_template="Now, answer the following question based on the above text, only give me the answer "
            "and do not output any other words.\n\nQuestion: {input}\nAnswer:",
            metric="qa_f1",
            max_new_tokens=64,
            num_samples=150,
        ),
        _multi_doc_task("hotpotqa"),
        _multi_doc_task("2wikimqa"),
        _multi_doc_task("musique"),
        LongBenchTask(
            name="gov_report",
            context_template="You are given a report by a government agency. Write a one-page summary of the report."
            "\n\nReport:\n{context}",
            question_template="Now, write a one-page summary of the report.\n\nSummary:",
            metric="rouge_l",
            max_new_tokens=512,
            num_samples=200,
        ),
        LongBenchTask(
            name="qmsum",
            context_template="You are given a meeting transcript and a query containing a question or instruction. "
            "Answer the query in one or more sentences.\n\nTranscript:\n{context}",
            question_template="Now, answer the query based on the above meeting transcript in one or more sentences."
            "\n\nQuery: {input}\nAnswer:",
            metric="rouge_l",
            max_new_tokens=512,
            num_samples=200,
        ),
        LongBenchTask(
            name="multi_news",
            context_template="You are given several news passages. Write a one-page summary of all news. \n\nNews:\n{context}",
            question_template="Now, write a one-page summary of all the news.\n\nSummary:",
            metric="rouge_l",
            max_new_tokens=512,
            num_samples=200,
        ),
        LongBenchTask(
            name="trec",
            context_template="Please determine the type of the question below. Here are some examples of questions."
            "\n\n{context}",
            question_template="{input}",
            separator="\n",
            metric="classification",
            max_new_tokens=64,
            num_samples=200,
            chat_template=False,
            first_line_only=True,
        ),
        LongBenchTask(
            name="triviaqa",
            context_template="Answer the question based on the given passage. Only give me the answer and do not "
            "output any other words. The following are some examples.\n\n{context}",
            question_template="{input}",
            metric="qa_f1",
            max_new_tokens=32,
            num_samples=200,
            chat_template=False,
            first_line_only=True,
        ),
        LongBenchTask(
            name="samsum",
            context_template="Summarize the dialogue into a few short sentences. The following are some examples."
            "\n\n{context}",
            question_template="{input}",
            metric="rouge_l",
            max_new_tokens=128,
            num_samples=200,
            chat_template=False,
            first_line_only=True,
        ),
        LongBenchTask(
            name="passage_count",
            context_template="There are some paragraphs below sourced from Wikipedia. Some of them may be duplicates. "
            "Please carefully read these paragraphs and determine how many unique paragraphs there are after "
            "removing duplicates. In other words, how many non-repeating paragraphs are there in total?\n\n{context}",
            question_template="Please enter the final count of unique paragraphs after removing duplicates. The output "
            "format should only contain the number, such as 1, 2, 3, and so on.\n\nThe final answer is: ",
            metric="count",
            max_new_tokens=32,
            num_samples=200,
        ),
        LongBenchTask(
            name="passage_retrieval_en",
            context_template="Here are 30 paragraphs from Wikipedia, along with an abstract. Please determine which "
            "paragraph the abstract is from.\n\n{context}",
            question_template="The following is an abstract.\n\n{input}\n\nPlease enter the number of the paragraph "
            "that the abstract is from. The answer format must be like \"Paragraph 1\", \"Paragraph 2\", etc."
            "\n\nThe answer is: ",
            metric="retrieval",
            max_new_tokens=32,
            num_samples=200,
        ),
        LongBenchTask(
            name="lcc",
            context_template="Please complete the code given below. \n{context}",
            question_template="Next line of code:\n",
            separator="",
            metric="code_similarity",
            max_new_tokens=64,
            num_samples=500,
            chat_template=False,
        ),
        LongBenchTask(
            name="repobench-p",
            context_template="Please complete the code given below. \n{context}",
            question_template="{input}Next line of code:\n",
            separator="",
            metric="code_similarity",
            max_new_tokens=64,
            num_samples=500,
            chat_template=False,
        ),
    )
}
