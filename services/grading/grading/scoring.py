"""How a submission is scored: one point per correct choice, one for a short answer that uses at least
half of the rubric's keywords (whole words, any case). Pure, so it is tested on its own.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mooc.events.v1.assessment_pb2 import SubmissionCreated
from mooc.events.v1.grading_pb2 import GradeCompleted
from mooc.grading.v1 import grading_pb2 as pb

DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class Score:
    score: float
    max_score: float
    matched_keywords: tuple[str, ...]


def matched_keywords(answer: str, keywords: Sequence[str]) -> tuple[str, ...]:
    """The keywords that occur in `answer` as whole words, case-insensitively, in rubric order."""
    # Look-arounds rather than \b, so keywords that end in a symbol ("C++") are whole words too.
    return tuple(kw for kw in keywords if re.search(rf"(?<!\w){re.escape(kw)}(?!\w)", answer, re.IGNORECASE))


def score(
    choices: Mapping[str, str],
    answer_key: Mapping[str, str],
    short_answer: str,
    rubric_keywords: Sequence[str],
    threshold: float = DEFAULT_THRESHOLD,
) -> Score:
    """Multiple choice: a point per exact match. Short answer (when there is a rubric): a point when the
    matched share of keywords reaches `threshold`.
    """
    points = sum(1 for question, correct in answer_key.items() if choices.get(question) == correct)
    matched = matched_keywords(short_answer, rubric_keywords)
    possible = len(answer_key)
    if rubric_keywords:
        possible += 1
        points += 1 if len(matched) >= threshold * len(rubric_keywords) else 0
    return Score(float(points), float(possible), matched)


def grade_record(
    event: SubmissionCreated, source_event_id: str, threshold: float = DEFAULT_THRESHOLD
) -> pb.GradeRecord:
    """Grading's record of one submission, scored from the event alone."""
    result = score(event.choices, event.answer_key, event.short_answer, event.rubric_keywords, threshold)
    return pb.GradeRecord(
        submission_id=event.submission_id,
        score=result.score,
        max_score=result.max_score,
        matched_keywords=result.matched_keywords,
        source_event_id=source_event_id,
    )


def grade_completed(record: pb.GradeRecord, event: SubmissionCreated) -> GradeCompleted:
    """The event announcing `record` (learner and assignment taken from the submission event)."""
    return GradeCompleted(
        submission_id=record.submission_id,
        learner_id=event.learner_id,
        assignment_id=event.assignment_id,
        score=record.score,
        max_score=record.max_score,
        matched_keywords=record.matched_keywords,
    )
