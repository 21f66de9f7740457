"""Assessment as it runs: a real sidecar and the service as processes, called through the sidecar
(`dapr-app-id`), submissions kept in its state store and announced on `submissions`, grades arriving
on the `grades` topic.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from chassis.testing import ServiceUnderTest, StartService
from mooc.assessment.v1 import assessment_pb2 as pb
from mooc.assessment.v1 import assessment_pb2_grpc as pb_grpc
from mooc.events.v1.assessment_pb2 import SubmissionCreated
from mooc.events.v1.grading_pb2 import GradeCompleted

SERVICE_DIR = Path(__file__).resolve().parents[1]
EMBEDDED_PROFILE = SERVICE_DIR.parents[1] / "dapr" / "components" / "embedded"
SUBMISSIONS = "assessment-outbox"  # the store of submissions, with Dapr's outbox on
Stub = pb_grpc.AssessmentServiceStub


@pytest.fixture
def assessment(chassis_service: StartService) -> ServiceUnderTest:
    # The embedded profile: its `assessment-outbox` store publishes submissions with Dapr's outbox.
    return chassis_service("assessment", resources=[EMBEDDED_PROFILE])


@pytest.fixture
def stub(assessment: ServiceUnderTest) -> Stub:
    return assessment.stub(Stub)


async def submit(stub: Stub, learner_id: str = "learner-1") -> str:
    request = pb.SubmitAssignmentRequest(
        learner_id=learner_id,
        assignment_id="intro-python-quiz-1",
        answers=[pb.MultipleChoiceAnswer(question_id="q1", choice="b")],
        short_answer="an expression over an iterable",
    )
    reply = await stub.SubmitAssignment(request)
    return reply.submission_id


async def read(stub: Stub, submission_id: str) -> pb.Submission:
    return await stub.GetSubmission(pb.GetSubmissionRequest(submission_id=submission_id))


def is_graded(submission: pb.Submission) -> bool:
    return submission.status == pb.Submission.STATUS_GRADED


async def test_a_submission_is_stored_announced_and_read_back(
    assessment: ServiceUnderTest, stub: Stub
) -> None:
    announced = await assessment.capture("submissions")
    submission_id = await submit(stub)
    stored = await read(stub, submission_id)
    assert stored.status == pb.Submission.STATUS_SUBMITTED
    assert (stored.learner_id, stored.assignment_id) == ("learner-1", "intro-python-quiz-1")
    assert [(a.question_id, a.choice) for a in stored.answers] == [("q1", "b")]

    created = await announced.next(SubmissionCreated)
    assert created.ctx.id == submission_id
    assert (created.event.submission_id, created.event.learner_id) == (submission_id, "learner-1")
    assert dict(created.event.choices) == {"q1": "b"}


async def test_bad_requests_get_clear_statuses(stub: Stub) -> None:
    bad = [
        (pb.SubmitAssignmentRequest(assignment_id="intro-python-quiz-1"), "learner_id is required"),
        (pb.SubmitAssignmentRequest(learner_id="l", assignment_id="nope"), "unknown assignment 'nope'"),
        (
            pb.SubmitAssignmentRequest(
                learner_id="l",
                assignment_id="intro-python-quiz-1",
                answers=[pb.MultipleChoiceAnswer(question_id="q9", choice="a")],
            ),
            "unknown question 'q9'",
        ),
    ]
    for request, message in bad:
        with pytest.raises(grpc.aio.AioRpcError) as invalid:
            await stub.SubmitAssignment(request)
        assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in (invalid.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await read(stub, "no-such-submission")
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_the_first_grade_is_stored_and_kept(assessment: ServiceUnderTest, stub: Stub) -> None:
    first, other = await submit(stub), await submit(stub, "learner-2")
    grade = GradeCompleted(submission_id=first, score=3, max_score=4, matched_keywords=["iterable"])
    await assessment.publish(grade, topic="grades", event_id=f"grade-{first}")
    stored = await assessment.wait_for_state(pb.Submission, first, until=is_graded, store=SUBMISSIONS)
    assert (stored.grade.score, stored.grade.max_score) == (3, 4)
    assert list(stored.grade.matched_keywords) == ["iterable"]
    assert await read(stub, first) == stored

    late = GradeCompleted(submission_id=first, score=0, max_score=4)
    await assessment.publish(late, topic="grades", event_id="a-second-grade")
    await assessment.publish(GradeCompleted(submission_id=other, score=1, max_score=4), topic="grades")
    await assessment.wait_for_state(pb.Submission, other, until=is_graded, store=SUBMISSIONS)
    assert (await read(stub, first)).grade.score == 3
