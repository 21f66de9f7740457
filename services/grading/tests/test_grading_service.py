"""Grading as it runs: a real sidecar and the service as processes. Submission events go in through
the broker, grades are read back through the sidecar (`dapr-app-id`), and the `grades` it announces
are received by a subscription of their own, as any consumer would receive them.
"""

from __future__ import annotations

import grpc
import pytest
from chassis.testing import ServiceUnderTest, StartService
from mooc.events.v1.assessment_pb2 import SubmissionCreated
from mooc.events.v1.grading_pb2 import GradeCompleted
from mooc.grading.v1 import grading_pb2 as pb
from mooc.grading.v1 import grading_pb2_grpc as pb_grpc


@pytest.fixture
def grading(chassis_service: StartService) -> ServiceUnderTest:
    return chassis_service("grading")


def submission(short_answer: str) -> SubmissionCreated:
    return SubmissionCreated(
        submission_id="sub-1",
        learner_id="learner-1",
        assignment_id="intro-python-quiz-1",
        choices={"q1": "b", "q2": "a"},
        answer_key={"q1": "b", "q2": "b", "q3": "c"},
        short_answer=short_answer,
        rubric_keywords=["list", "expression", "iterable", "condition"],
    )


async def test_a_submission_is_graded_once_and_announced(grading: ServiceUnderTest) -> None:
    stub = grading.stub(pb_grpc.GradingServiceStub)
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.GetGrade(pb.GetGradeRequest(submission_id="sub-1"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND  # until graded
    grades = await grading.capture("grades")

    await grading.publish(submission("a list from an expression"), topic="submissions", event_id="sub-1")

    record = await grading.wait_for_state(pb.GradeRecord, "sub-1")
    assert (record.score, record.max_score, record.source_event_id) == (2, 4, "sub-1")
    assert list(record.matched_keywords) == ["list", "expression"]
    assert await stub.GetGrade(pb.GetGradeRequest(submission_id="sub-1")) == record
    announced = await grades.next(GradeCompleted)
    assert announced.ctx.id == "grade-sub-1"
    assert (announced.event.submission_id, announced.event.score) == ("sub-1", 2)

    # Redelivered (here: sent again under another id, with an answer that would score differently).
    await grading.publish(submission("nothing relevant"), topic="submissions", event_id="sub-1-again")
    again = await grades.next(GradeCompleted)
    assert again.ctx.id == "grade-sub-1"
    assert again.event == announced.event
    assert await grading.wait_for_state(pb.GradeRecord, "sub-1") == record
