"""Submissions as messages: built from a request, announced as an event, and graded from one.

Pure functions, so the rules are tested without a sidecar and `update` may re-run them on a conflict.
"""

from __future__ import annotations

from mooc.assessment.v1 import assessment_pb2 as pb
from mooc.events.v1.assessment_pb2 import SubmissionCreated
from mooc.events.v1.grading_pb2 import GradeCompleted

from assessment.catalogue import Assignment


def new_submission(request: pb.SubmitAssignmentRequest, submission_id: str) -> pb.Submission:
    """The submission as first stored: what the learner sent, not graded yet."""
    return pb.Submission(
        submission_id=submission_id,
        learner_id=request.learner_id,
        assignment_id=request.assignment_id,
        answers=request.answers,
        short_answer=request.short_answer,
        status=pb.Submission.STATUS_SUBMITTED,
    )


def submission_created(submission: pb.Submission, assignment: Assignment) -> SubmissionCreated:
    """The event grading needs, answer key and rubric included, so grading looks nothing up."""
    return SubmissionCreated(
        submission_id=submission.submission_id,
        learner_id=submission.learner_id,
        assignment_id=submission.assignment_id,
        choices={answer.question_id: answer.choice for answer in submission.answers},
        answer_key=assignment.answer_key,
        short_answer=submission.short_answer,
        rubric_keywords=assignment.rubric_keywords,
    )


def with_grade(submission: pb.Submission, grade: GradeCompleted) -> pb.Submission:
    """`submission` graded by `grade`; an already graded submission keeps its first grade."""
    graded = pb.Submission()
    graded.CopyFrom(submission)
    if graded.status == pb.Submission.STATUS_GRADED:
        return graded
    graded.status = pb.Submission.STATUS_GRADED
    graded.grade.CopyFrom(
        pb.Grade(score=grade.score, max_score=grade.max_score, matched_keywords=grade.matched_keywords)
    )
    return graded
