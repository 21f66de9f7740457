"""Event delivery over the real AppCallback gRPC surface: handler outcomes map to Dapr's statuses.

No sidecar here, so the handlers run without an inbox (tests/chassis/test_inbox.py has one).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import pytest
from dapr.proto.common.v1 import common_pb2
from dapr.proto.runtime.v1 import appcallback_pb2 as callback_v1
from dapr.proto.runtime.v1 import appcallback_pb2_grpc as callback_grpc
from google.protobuf import empty_pb2, struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mooc.events.v1.assessment_pb2 import SubmissionCreated
from mooc.events.v1.grading_pb2 import GradeCompleted
from opentelemetry import trace

from chassis import Drop, EventContext, Retry, Service, ServiceSettings
from chassis._events import event_to_json
from chassis.testing import free_port, wait_for

Status = callback_v1.TopicEventResponse
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


@dataclass
class Seen:
    events: list[tuple[SubmissionCreated, EventContext, str]] = field(default_factory=list)


@dataclass
class Harness:
    stub: callback_grpc.AppCallbackStub
    seen: Seen


def _build_service(seen: Seen) -> Service:
    settings = ServiceSettings(app_id="probe", app_port=free_port(), dapr_http_port=free_port())
    service = Service("probe", settings)

    @service.subscribe(
        topic="submissions", event=SubmissionCreated, dead_letter_topic="submissions-dead", inbox=False
    )
    async def on_submission(event: SubmissionCreated, ctx: EventContext) -> None:
        span_ctx = trace.get_current_span().get_span_context()
        seen.events.append((event, ctx, trace.format_trace_id(span_ctx.trace_id)))
        outcome = event.learner_id
        if outcome == "retry":
            raise Retry("not yet")
        if outcome == "drop":
            raise Drop("never")
        if outcome == "crash":
            raise ValueError("bug in handler")

    @service.subscribe(topic="grades", event=GradeCompleted, pubsub="other-pubsub", inbox=False)
    async def on_grade(event: GradeCompleted, ctx: EventContext) -> None:
        return None

    return service


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    seen = Seen()
    service = _build_service(seen)
    serving = asyncio.create_task(service.serve())
    address = f"127.0.0.1:{service.settings.app_port}"
    async with grpc.aio.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)

        async def is_serving() -> bool:
            try:
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
            except grpc.aio.AioRpcError:
                return False
            return reply.status == health_pb2.HealthCheckResponse.SERVING

        await wait_for(is_serving, timeout=10, what="probe service SERVING")
        yield Harness(callback_grpc.AppCallbackStub(channel), seen)
    service.stop()
    await asyncio.wait_for(serving, timeout=15)


def _event(
    learner: str, *, data: bytes | None = None, topic: str = "submissions", path: str = ""
) -> callback_v1.TopicEventRequest:
    extensions = struct_pb2.Struct()
    extensions.update({"traceparent": TRACEPARENT, "time": "2025-01-01T00:00:00Z"})
    payload = SubmissionCreated(submission_id=f"s-{learner}", learner_id=learner)
    return callback_v1.TopicEventRequest(
        id=f"event-{learner}",
        source="assessment",
        type="mooc.assessment.submission.created.v1",
        spec_version="1.0",
        data_content_type="application/json",
        data=event_to_json(payload).encode() if data is None else data,
        topic=topic,
        pubsub_name="pubsub",
        path=path,
        extensions=extensions,
    )


async def test_subscriptions_are_listed_for_the_sidecar(harness: Harness) -> None:
    reply = await harness.stub.ListTopicSubscriptions(empty_pb2.Empty())

    listed = {(s.pubsub_name, s.topic, s.dead_letter_topic) for s in reply.subscriptions}
    assert listed == {("pubsub", "submissions", "submissions-dead"), ("other-pubsub", "grades", "")}


@pytest.mark.parametrize(
    ("learner", "status"),
    [("ok", Status.SUCCESS), ("retry", Status.RETRY), ("drop", Status.DROP), ("crash", Status.RETRY)],
)
async def test_handler_outcomes_map_to_topic_event_statuses(
    harness: Harness, learner: str, status: int
) -> None:
    reply = await harness.stub.OnTopicEvent(_event(learner), metadata=(("custom-key", "v1"),))

    assert reply.status == status
    [(event, ctx, _)] = harness.seen.events
    assert event.learner_id == learner
    assert (ctx.id, ctx.type, ctx.source, ctx.topic, ctx.pubsub) == (
        f"event-{learner}",
        "mooc.assessment.submission.created.v1",
        "assessment",
        "submissions",
        "pubsub",
    )
    assert ctx.metadata == {"custom-key": "v1"}
    assert ctx.extensions["time"] == "2025-01-01T00:00:00Z"


async def test_the_handler_runs_in_the_publishers_trace(harness: Harness) -> None:
    await harness.stub.OnTopicEvent(_event("ok"))

    [(_, ctx, trace_id)] = harness.seen.events
    assert ctx.traceparent == TRACEPARENT
    assert trace_id == TRACE_ID


@pytest.mark.parametrize(
    "request_",
    [
        _event("ok", data=b"not json"),
        _event("ok", data=b'{"submission_id": 7}'),
        _event("ok", topic="unknown-topic"),
        _event("ok", path="/routed"),
    ],
    ids=["unparseable", "wrong-shape", "unknown-topic", "unknown-path"],
)
async def test_events_no_handler_can_take_are_dropped(
    harness: Harness, request_: callback_v1.TopicEventRequest
) -> None:
    reply = await harness.stub.OnTopicEvent(request_)

    assert reply.status == Status.DROP
    assert harness.seen.events == []


async def test_callbacks_the_service_does_not_offer_are_unimplemented(harness: Harness) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await harness.stub.OnInvoke(common_pb2.InvokeRequest(method="anything"))

    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
