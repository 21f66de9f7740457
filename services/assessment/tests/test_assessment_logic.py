"""Assessment's rules on their own: the catalogue's checks and the submission messages."""

from __future__ import annotations

import pytest
from mooc.assessment.v1 import assessment_pb2 as pb
from mooc.events.v1.grading_pb2 import GradeCompleted

from assessment.catalogue import Catalogue, InvalidSubmission
from assessment.submissions import new_submission, submission_created, with_grade

QUIZ = "intro-python-quiz-1"


def request(**changes: object) -> pb.SubmitAssignmentRequest:
    fields: dict[str, object] = {
        "learner_id": "learner-1",
        "assignment_id": QUIZ,
        "answers": [pb.MultipleChoiceAnswer(question_id="q1", choice="b")],
        "short_answer": "A list built from an expression over an iterable.",
    }
    fields.update(changes)
    return pb.SubmitAssignmentRequest(**fields)  # type: ignore[arg-type]


def test_the_bundled_catalogue_has_the_intro_quiz() -> None:
    assignment = Catalogue.load().check(request())
    assert assignment.answer_key == {"q1": "b", "q2": "b", "q3": "c"}
    assert assignment.rubric_keywords == ("list", "expression", "iterable", "condition")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"learner_id": ""}, "learner_id is required"),
        ({"assignment_id": ""}, "assignment_id is required"),
        ({"assignment_id": "nope"}, "unknown assignment 'nope' (known: intro-python-quiz-1)"),
        (
            {"answers": [pb.MultipleChoiceAnswer(question_id="q9", choice="a")]},
            "unknown question 'q9' in assignment 'intro-python-quiz-1'",
        ),
        (
            {"answers": [pb.MultipleChoiceAnswer(question_id="q1", choice="a")] * 2},
            "question 'q1' is answered more than once",
        ),
        (
            {"answers": [pb.MultipleChoiceAnswer(question_id="q1", choice="z")]},
            "choice 'z' is not an option of question 'q1' (options: a, b, c, d)",
        ),
    ],
)
def test_invalid_submissions_say_what_is_wrong(changes: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidSubmission) as err:
        Catalogue.load().check(request(**changes))
    assert str(err.value) == message


def test_the_event_carries_choices_answer_key_and_rubric() -> None:
    assignment = Catalogue.load().check(request())
    event = submission_created(new_submission(request(), "s-1"), assignment)
    assert event.submission_id == "s-1"
    assert dict(event.choices) == {"q1": "b"}
    assert dict(event.answer_key) == {"q1": "b", "q2": "b", "q3": "c"}
    assert list(event.rubric_keywords) == ["list", "expression", "iterable", "condition"]


def test_a_grade_is_stored_once() -> None:
    submission = new_submission(request(), "s-1")
    first = with_grade(submission, GradeCompleted(submission_id="s-1", score=3, max_score=4))
    assert first.status == pb.Submission.STATUS_GRADED
    assert (first.grade.score, first.grade.max_score) == (3, 4)
    second = with_grade(first, GradeCompleted(submission_id="s-1", score=1, max_score=4))
    assert second.grade.score == 3
    assert submission.status == pb.Submission.STATUS_SUBMITTED  # the input is left as it was
