"""Scoring functions against hand-computed values."""

from __future__ import annotations

import pytest

from benchmarks.metrics import (
    best_over_references,
    classification_score,
    code_similarity,
    count_score,
    first_code_line,
    first_line,
    normalize_answer,
    retrieval_score,
    rouge_l,
    string_match_scores,
    token_f1,
)


def test_normalize_answer():
    assert normalize_answer("The  Quick, brown fox!") == "quick brown fox"
    assert normalize_answer("An apple a day") == "apple day"
    assert normalize_answer("theory") == "theory"  # articles are removed as whole words only


def test_token_f1_hand_computed():
    # prediction tokens: cat sat on mat; reference: cat on mat -> P = 3/4, R = 1
    assert token_f1("The cat sat on the mat", "a cat on a mat") == pytest.approx(2 * 0.75 / 1.75)
    # repeated tokens count once per occurrence: overlap {y: 2} -> P = R = 2/3
    assert token_f1("x y y", "y y z") == pytest.approx(2 / 3)
    assert token_f1("Paris!", "paris") == 1.0


def test_token_f1_no_overlap_or_empty():
    assert token_f1("London", "Paris") == 0.0
    assert token_f1("", "Paris") == 0.0
    assert token_f1("the", "a") == 0.0  # both normalise to nothing


def test_rouge_l_hand_computed():
    # LCS "the cat on the mat" = 5 of 6 tokens on each side
    assert rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    # LCS "a c": precision 2/4, recall 2/2 -> F = 2/3
    assert rouge_l("a b c d", "a c") == pytest.approx(2 / 3)
    assert rouge_l("", "a c") == 0.0


def test_classification_exact_class():
    classes = ["Number", "Number of people", "City"]
    assert classification_score("City", "City", classes) == 1.0
    assert classification_score("Town", "City", classes) == 0.0


def test_classification_substring_classes():
    classes = ["Number", "Number of people", "City"]
    # "Number" is found only because it is part of the reference, so it is not a second match
    assert classification_score("Number of people", "Number of people", classes) == 1.0
    assert classification_score("Number", "Number of people", classes) == 0.0
    # two real matches share the credit
    assert classification_score("City or Number of people", "Number of people", classes) == 0.5


def test_retrieval_score():
    assert retrieval_score("Paragraph 12", "Paragraph 12") == 1.0
    assert retrieval_score("Paragraph 12 or Paragraph 3", "Paragraph 12") == 0.5
    assert retrieval_score("Paragraph 1", "Paragraph 12") == 0.0
    assert retrieval_score("I cannot tell", "Paragraph 12") == 0.0


def test_count_score():
    assert count_score("7", "7") == 1.0
    assert count_score("There are 7 unique paragraphs out of 9", "7") == 0.5
    assert count_score("17", "7") == 0.0
    assert count_score("several", "7") == 0.0


def test_code_similarity_first_code_line():
    prediction = "```python\n# set x\nx = foo(1)\nreturn x\n"
    assert first_code_line(prediction) == "x = foo(1)"
    # Indel similarity: 9 of 10 characters in common on each side -> 2 * 9 / 20
    assert code_similarity(prediction, "x = foo(2)") == pytest.approx(0.9)
    assert code_similarity("// only a comment", "x = 1") == 0.0


def test_first_line():
    assert first_line("\n\nPositive\nQuestion: next one") == "Positive"
    assert first_line("") == ""


def test_best_over_references():
    assert best_over_references(token_f1, "paris", ["London", "Paris"]) == 1.0
    assert best_over_references(token_f1, "paris", []) == 0.0


def test_string_match_scores():
    scores = string_match_scores("The numbers are 123 and 456.", ["123", "456", "789"])
    assert scores["reference_recall"] == pytest.approx(2 / 3)
    assert scores["all_present"] == 0.0
    assert scores["any_present"] == 1.0


def test_string_match_ignores_case():
    assert string_match_scores("id ABC-def", ["abc-DEF"]) == {
        "reference_recall": 1.0,
        "all_present": 1.0,
        "any_present": 1.0,
    }
    assert string_match_scores("nothing", ["abc"])["any_present"] == 0.0
