"""The `chassis_service` fixture against a real service process: calls, events in, state and events out."""

from __future__ import annotations

from pathlib import Path

import pytest
from mooc.assessment.v1 import assessment_pb2 as api
from mooc.assessment.v1 import assessment_pb2_grpc as api_grpc
from mooc.events.v1.assessment_pb2 import SubmissionCreated
from mooc.events.v1.grading_pb2 import GradeCompleted
from mooc.grading.v1.grading_pb2 import GradeRecord

from chassis import event_type_of
from chassis.testing import ServiceUnderTest, StartService

APPS = Path(__file__).parent / "apps"
CREATED = event_type_of(SubmissionCreated)


@pytest.fixture
def probe(chassis_service: StartService) -> ServiceUnderTest:
    """tests/chassis/apps/probe_service.py: handles `submissions` at once, and publishes to it."""
    return chassis_service("probe_service", app_id="probe", pythonpath=[APPS], env={"PROBE_FAIL_FIRST": "0"})


def is_graded(submission: api.Submission) -> bool:
    return submission.status == api.Submission.STATUS_GRADED


async def test_the_service_is_ready_and_called_through_its_sidecar(probe: ServiceUnderTest) -> None:
    stub = probe.stub(api_grpc.AssessmentServiceStub)

    reply = await stub.SubmitAssignment(api.SubmitAssignmentRequest(learner_id="l-1", assignment_id="a-1"))

    assert reply.submission_id == "l-1-a-1"
    assert probe.app.serving() and probe.sidecar.sees_app()
    assert len({probe.app_port, probe.dapr_grpc_port, probe.dapr_http_port}) == 3
    files = probe.sqlite_files
    assert files == {"statestore": probe.workdir / "state.db", "pubsub": probe.workdir / "pubsub.db"}
    assert all(path.is_file() for path in files.values())


async def test_an_event_published_into_the_service_is_handled_and_its_effect_awaited(
    probe: ServiceUnderTest,
) -> None:
    event = SubmissionCreated(submission_id="s-1", learner_id="l-1", assignment_id="a-1")

    event_id = await probe.publish(event, topic="submissions", event_id="fixed-1")

    assert event_id == "fixed-1"
    submission = await probe.wait_for_state(api.Submission, "s-1", until=is_graded)
    assert (submission.learner_id, submission.grade.score) == ("l-1", 1)
    # What the handler saw: the id given, the proto's declared type, the test client as the source.
    delivery = await probe.wait_for_state(GradeRecord, "deliveries-s-1")
    assert delivery.source_event_id == "fixed-1"
    assert list(delivery.matched_keywords) == [CREATED, "probe-test-client"]


async def test_events_the_service_publishes_are_captured_through_a_real_subscription(
    probe: ServiceUnderTest,
) -> None:
    captured = await probe.capture("submissions")
    stub = probe.stub(api_grpc.AssessmentServiceStub)

    for learner in ("l-1", "l-2"):
        await stub.SubmitAssignment(api.SubmitAssignmentRequest(learner_id=learner, assignment_id="a-1"))

    second = await captured.next(SubmissionCreated, where=lambda e: e.learner_id == "l-2")
    first = await captured.next(SubmissionCreated)
    assert (first.ctx.id, second.ctx.id) == ("submitted-l-1-a-1", "submitted-l-2-a-1")
    assert (first.ctx.type, first.ctx.source, first.ctx.topic) == (CREATED, "probe", "submissions")
    assert first.ctx.traceparent and first.ctx.traceparent.startswith("00-")
    assert first.event == SubmissionCreated(submission_id="l-1-a-1", learner_id="l-1", assignment_id="a-1")
    # The service's own subscription is a separate consumer group: it handled both events as well.
    await probe.wait_for_state(api.Submission, "l-2-a-1", until=is_graded)
    ids = [e.ctx.id for e in captured.events(SubmissionCreated)]
    assert ids == ["submitted-l-1-a-1", "submitted-l-2-a-1"]
    assert await probe.capture("submissions") is captured


async def test_a_wait_that_times_out_names_what_it_awaited_and_what_it_saw(probe: ServiceUnderTest) -> None:
    captured = await probe.capture("submissions")
    await probe.publish(SubmissionCreated(submission_id="s-9", learner_id="l-9"), topic="submissions")
    arrived = await captured.next(SubmissionCreated)

    with pytest.raises(TimeoutError) as no_grade:
        await captured.next(GradeCompleted, timeout=0.3)
    with pytest.raises(TimeoutError) as no_record:
        await probe.wait_for_state(api.Submission, "never", timeout=0.2)
    with pytest.raises(TimeoutError) as never_true:
        await probe.wait_for_state(api.Submission, "s-9", until=lambda s: s.learner_id == "x", timeout=1)

    assert str(no_grade.value) == (
        f"no new {event_type_of(GradeCompleted)} on pubsub/submissions within 0.3s; "
        f"1 already taken by next(); received 1: {CREATED} id={arrived.ctx.id}"
    )
    assert str(no_record.value) == (
        "no Submission under 'never' in 'statestore' of probe after 0.2s; nothing was stored"
    )
    assert str(never_true.value).startswith(
        "no Submission satisfying a lambda under 's-9' in 'statestore' of probe after 1s; "
        'last stored: submission_id: "s-9" learner_id: "l-9"'
    )


async def test_an_event_published_twice_under_one_id_arrives_twice_like_a_redelivery(
    probe: ServiceUnderTest,
) -> None:
    captured = await probe.capture("grades")
    grade = GradeCompleted(submission_id="s-1", score=1, max_score=2)

    for _ in range(2):
        assert await probe.publish(grade, topic="grades", event_id="grade-s-1") == "grade-s-1"

    twice = [await captured.next(GradeCompleted), await captured.next(GradeCompleted)]
    assert [(c.ctx.id, c.event) for c in twice] == [("grade-s-1", grade)] * 2
    assert [c.ctx.source for c in twice] == ["probe-test-client"] * 2
