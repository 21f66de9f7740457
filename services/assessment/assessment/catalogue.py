"""The assignments learners can submit (a small bundled catalogue) and the rules a submission must follow."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from mooc.assessment.v1 import assessment_pb2 as pb

BUNDLED = "assignments.json"


class InvalidSubmission(ValueError):
    """A submission the catalogue refuses; the message says what to fix."""


@dataclass(frozen=True)
class Question:
    question_id: str
    prompt: str
    choices: Mapping[str, str]
    answer: str


@dataclass(frozen=True)
class Assignment:
    assignment_id: str
    title: str
    questions: Mapping[str, Question]
    short_answer_prompt: str
    rubric_keywords: tuple[str, ...]

    @property
    def answer_key(self) -> dict[str, str]:
        """Question id -> the correct choice."""
        return {qid: question.answer for qid, question in self.questions.items()}


class Catalogue:
    """The known assignments, by id."""

    def __init__(self, assignments: Mapping[str, Assignment]) -> None:
        self._assignments = dict(assignments)

    @classmethod
    def load(cls, path: Path | None = None) -> Catalogue:
        """Read a catalogue file (the one bundled with the service when `path` is None)."""
        if path is None:
            text = resources.files("assessment").joinpath(BUNDLED).read_text(encoding="utf-8")
        else:
            text = path.read_text(encoding="utf-8")
        raw: dict[str, Any] = json.loads(text)
        return cls({assignment_id: _assignment(assignment_id, spec) for assignment_id, spec in raw.items()})

    def check(self, request: pb.SubmitAssignmentRequest) -> Assignment:
        """The assignment `request` answers; InvalidSubmission saying what is wrong otherwise."""
        if not request.learner_id.strip():
            raise InvalidSubmission("learner_id is required")
        if not request.assignment_id:
            raise InvalidSubmission("assignment_id is required")
        assignment = self._assignments.get(request.assignment_id)
        if assignment is None:
            known = ", ".join(sorted(self._assignments))
            raise InvalidSubmission(f"unknown assignment {request.assignment_id!r} (known: {known})")
        _check_answers(assignment, request.answers)
        return assignment


def _check_answers(assignment: Assignment, answers: Any) -> None:
    seen: set[str] = set()
    for answer in answers:
        question = assignment.questions.get(answer.question_id)
        if question is None:
            raise InvalidSubmission(
                f"unknown question {answer.question_id!r} in assignment {assignment.assignment_id!r}"
            )
        if answer.question_id in seen:
            raise InvalidSubmission(f"question {answer.question_id!r} is answered more than once")
        seen.add(answer.question_id)
        if answer.choice not in question.choices:
            options = ", ".join(question.choices)
            raise InvalidSubmission(
                f"choice {answer.choice!r} is not an option of question {answer.question_id!r}"
                f" (options: {options})"
            )


def _assignment(assignment_id: str, spec: dict[str, Any]) -> Assignment:
    questions = {
        q["id"]: Question(q["id"], q["prompt"], dict(q["choices"]), q["answer"]) for q in spec["questions"]
    }
    short = spec.get("short_answer") or {}
    return Assignment(
        assignment_id=assignment_id,
        title=spec["title"],
        questions=questions,
        short_answer_prompt=short.get("prompt", ""),
        rubric_keywords=tuple(short.get("rubric_keywords", ())),
    )
