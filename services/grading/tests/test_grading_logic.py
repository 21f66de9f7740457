"""Grading's scoring rules on their own."""

from __future__ import annotations

import pytest
from mooc.events.v1.assessment_pb2 import SubmissionCreated

from grading.scoring import grade_completed, grade_record, matched_keywords, score

KEY = {"q1": "b", "q2": "b", "q3": "c"}
RUBRIC = ("list", "expression", "iterable", "condition")


def test_one_point_per_exact_choice() -> None:
    result = score({"q1": "b", "q2": "a", "q3": "C"}, KEY, "", ())
    assert (result.score, result.max_score) == (1, 3)


def test_unanswered_questions_score_nothing() -> None:
    assert score({}, KEY, "", ()).score == 0


@pytest.mark.parametrize(
    ("answer", "matched", "point"),
    [
        ("An EXPRESSION applied to each item of an iterable.", ("expression", "iterable"), 1),
        (
            "It builds a list from an expression, filtered by a condition.",
            ("list", "expression", "condition"),
            1,
        ),
        ("A listing of expressions.", (), 0),  # whole words only
        ("Something about an iterable.", ("iterable",), 0),  # one of four is less than half
    ],
)
def test_short_answer_needs_half_of_the_rubric(answer: str, matched: tuple[str, ...], point: int) -> None:
    result = score({}, {}, answer, RUBRIC)
    assert result.matched_keywords == matched
    assert (result.score, result.max_score) == (point, 1)


def test_keywords_with_symbols_are_whole_words_too() -> None:
    assert matched_keywords("use a C++ compiler", ["C++", "c", "compile"]) == ("C++", "c")


def test_the_record_and_the_event_carry_the_same_grade() -> None:
    event = SubmissionCreated(
        submission_id="s-1",
        learner_id="learner-1",
        assignment_id="quiz",
        choices={"q1": "b", "q2": "b", "q3": "c"},
        answer_key=KEY,
        short_answer="a list from an expression over an iterable",
        rubric_keywords=RUBRIC,
    )
    record = grade_record(event, source_event_id="evt-1")
    assert (record.score, record.max_score, record.source_event_id) == (4, 4, "evt-1")
    completed = grade_completed(record, event)
    assert (completed.learner_id, completed.assignment_id, completed.score) == ("learner-1", "quiz", 4)
    assert list(completed.matched_keywords) == ["list", "expression", "iterable"]
