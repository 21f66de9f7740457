"""Assessment as it runs: a real sidecar and the service as processes, called through the sidecar
(`dapr-app-id`), submissions kept in the sidecar's state store, grades arriving on the `grades` topic.
"""

from __future__ import annotations

import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
from chassis import Publisher, Service, ServiceSettings
from chassis.testing import AppProcess, Sidecar, free_port, wait_for
from mooc.assessment.v1 import assessment_pb2 as pb
from mooc.assessment.v1 import assessment_pb2_grpc as pb_grpc
from mooc.events.v1.grading_pb2 import GradeCompleted

from assessment.service import APP_ID

SERVICE_DIR = Path(__file__).resolve().parents[1]
EMBEDDED_PROFILE = SERVICE_DIR.parents[1] / "dapr" / "components" / "embedded"
METADATA = (("dapr-app-id", APP_ID),)
Stub = pb_grpc.AssessmentServiceStub


def sees_the_app(sidecar: Sidecar) -> bool:
    """The sidecar's full healthz: 204 once it has connected to its app (and subscribed for it)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{sidecar.http_port}/v1.0/healthz", timeout=1) as reply:
            return bool(reply.status == 204)
    except OSError:
        return False


@pytest.fixture
def sidecar(sidecar_factory: Callable[..., Sidecar], app_factory: Callable[..., AppProcess]) -> Sidecar:
    """The service beside its sidecar, which every call below goes through."""
    app_port = free_port()
    # The embedded profile: its `assessment-outbox` store publishes submissions with Dapr's outbox.
    sidecar = sidecar_factory(APP_ID, app_port=app_port, resources=[EMBEDDED_PROFILE])
    app_factory("assessment", app_id=APP_ID, app_port=app_port, pythonpath=[SERVICE_DIR], sidecar=sidecar)
    sidecar.wait_until(lambda: sees_the_app(sidecar), 30, "connected to the app (GET /v1.0/healthz)")
    return sidecar


@pytest.fixture
async def stub(sidecar: Sidecar) -> AsyncIterator[Stub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.grpc_port}") as channel:
        yield Stub(channel)


@pytest.fixture
async def grader(
    sidecar: Sidecar, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Publisher[GradeCompleted]]:
    """Publishes grades the way the grading service does, through the same sidecar."""
    for name, value in sidecar.app_env().items():  # the Dapr SDK reads its ports from the environment
        monkeypatch.setenv(name, value)
    settings = ServiceSettings(
        app_id="grading", dapr_grpc_port=sidecar.grpc_port, dapr_http_port=sidecar.http_port
    )
    grading = Service("grading", settings)
    yield grading.publisher(GradeCompleted, topic="grades")
    await grading.dapr.close()


async def submit(stub: Stub, learner_id: str = "learner-1") -> str:
    request = pb.SubmitAssignmentRequest(
        learner_id=learner_id,
        assignment_id="intro-python-quiz-1",
        answers=[pb.MultipleChoiceAnswer(question_id="q1", choice="b")],
        short_answer="an expression over an iterable",
    )
    reply = await stub.SubmitAssignment(request, metadata=METADATA, timeout=10)
    return reply.submission_id


async def read(stub: Stub, submission_id: str) -> pb.Submission:
    request = pb.GetSubmissionRequest(submission_id=submission_id)
    return await stub.GetSubmission(request, metadata=METADATA, timeout=10)


async def graded(stub: Stub, submission_id: str) -> pb.Submission:
    async def is_graded() -> pb.Submission | None:
        submission = await read(stub, submission_id)
        return submission if submission.status == pb.Submission.STATUS_GRADED else None

    return await wait_for(is_graded, timeout=20, what=f"submission {submission_id} graded")


async def test_a_submission_is_stored_and_read_back(stub: Stub) -> None:
    submission_id = await submit(stub)
    stored = await read(stub, submission_id)
    assert stored.status == pb.Submission.STATUS_SUBMITTED
    assert (stored.learner_id, stored.assignment_id) == ("learner-1", "intro-python-quiz-1")
    assert [(a.question_id, a.choice) for a in stored.answers] == [("q1", "b")]


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
            await stub.SubmitAssignment(request, metadata=METADATA, timeout=10)
        assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in (invalid.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await read(stub, "no-such-submission")
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_the_first_grade_is_stored_and_kept(stub: Stub, grader: Publisher[GradeCompleted]) -> None:
    first, other = await submit(stub), await submit(stub, "learner-2")
    grade = GradeCompleted(submission_id=first, score=3, max_score=4, matched_keywords=["iterable"])
    await grader.publish(grade, event_id=f"grade-{first}")
    stored = await graded(stub, first)
    assert (stored.grade.score, stored.grade.max_score) == (3, 4)
    assert list(stored.grade.matched_keywords) == ["iterable"]

    late = GradeCompleted(submission_id=first, score=0, max_score=4)
    await grader.publish(late, event_id="a-second-grade")
    await grader.publish(GradeCompleted(submission_id=other, score=1, max_score=4))
    await graded(stub, other)
    assert (await read(stub, first)).grade.score == 3
