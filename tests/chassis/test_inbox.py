"""The inbox: a redelivered event has its effects once, also when the app was SIGKILLed in the gap.

A real sidecar delivers to tests/chassis/apps/consumer_service.py as a process; its handler counts
each grade in the state store through `ctx.work`, so a second run of the effects would show.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from consumer_kit import APP_ID, Consumer, start_consumer
from dapr.proto.runtime.v1 import dapr_pb2_grpc, state_pb2
from mooc.events.v1.grading_pb2 import GradeCompleted
from mooc.grading.v1.grading_pb2 import GradeRecord

from chassis import Dapr, EventContext, ServiceSettings, StateRepository
from chassis.testing import AppProcess, Sidecar, wait_for

StartConsumer = Callable[..., Consumer]


@pytest.fixture
def consumer_factory(
    sidecar_factory: Callable[..., Sidecar], app_factory: Callable[..., AppProcess], tmp_path: Path
) -> StartConsumer:
    def start(**options: object) -> Consumer:
        return start_consumer(sidecar_factory, app_factory, tmp_path, **options)  # type: ignore[arg-type]

    return start


async def stored_count(consumer: Consumer, submission_id: str) -> float | None:
    settings = ServiceSettings(
        app_id="reader", dapr_grpc_port=consumer.sidecar.grpc_port, dapr_http_port=consumer.sidecar.http_port
    )
    async with Dapr(settings) as dapr:
        stored = await StateRepository(dapr, GradeRecord, "statestore").get(f"count-{submission_id}")
    return stored.value.score if stored else None


async def acknowledged_as_duplicate(consumer: Consumer, event_id: str) -> None:
    line = f"event {event_id} on inbox-grades was handled already"
    await wait_for(lambda: line in consumer.app.log(), timeout=20, what=line)


async def test_the_same_event_delivered_twice_has_its_effects_once(consumer_factory: StartConsumer) -> None:
    consumer = consumer_factory()
    grade = GradeCompleted(submission_id="s-1", score=3)
    await consumer.publish(grade, topic="inbox-grades", event_id="dup-1")
    await consumer.wait_seen(1, id="dup-1")
    await consumer.publish(grade, topic="inbox-grades", event_id="dup-1")  # what a redelivery looks like
    await consumer.publish(grade, topic="inbox-grades", event_id="other-1")  # another event: counted

    await acknowledged_as_duplicate(consumer, "dup-1")
    await consumer.wait_seen(1, id="other-1")
    assert await wait_for(lambda: stored_count(consumer, "s-1"), what="count stored") == 2
    assert len(consumer.seen(handler="inbox", id="dup-1")) == 1


async def test_a_redelivery_after_a_sigkill_between_commit_and_answer_runs_nothing_again(
    consumer_factory: StartConsumer,
) -> None:
    consumer = consumer_factory(env={"CONSUMER_HANG": "complete"})
    await consumer.publish(GradeCompleted(submission_id="s-2"), topic="inbox-grades", event_id="kill-1")
    await consumer.wait_seen(1, handler="committed", id="kill-1")  # effects and marker committed

    consumer.app.kill()  # the sidecar never got its answer: it delivers again
    consumer.restart()

    await acknowledged_as_duplicate(consumer, "kill-1")
    assert len(consumer.seen(handler="inbox", id="kill-1")) == 1
    assert await stored_count(consumer, "s-2") == 1


async def test_the_marker_is_keyed_per_subscriber_and_expires(consumer_factory: StartConsumer) -> None:
    consumer = consumer_factory()
    await consumer.publish(GradeCompleted(submission_id="s-3"), topic="inbox-grades", event_id="ttl-1")
    await consumer.wait_seen(1, id="ttl-1")
    key = f"chassis-inbox/{APP_ID}/pubsub/inbox-grades/ttl-1"

    async def marker() -> state_pb2.GetStateResponse | None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{consumer.sidecar.grpc_port}") as channel:
            stub = dapr_pb2_grpc.DaprStub(channel)  # type: ignore[no-untyped-call]
            reply: state_pb2.GetStateResponse = await stub.GetState(
                state_pb2.GetStateRequest(store_name="statestore", key=key)
            )
        return reply if reply.data else None

    found = await wait_for(marker, timeout=10, what="the inbox marker")
    assert found is not None
    expires = datetime.fromisoformat(found.metadata["ttlExpireTime"].replace("Z", "+00:00"))
    assert abs(expires - (datetime.now(UTC) + timedelta(days=7))) < timedelta(minutes=5)


async def test_on_an_outbox_store_a_crash_before_the_marker_publishes_nothing_twice(
    consumer_factory: StartConsumer,
) -> None:
    consumer = consumer_factory(outbox=True, env={"CONSUMER_HANG": "mark"})
    grade = GradeCompleted(submission_id="s-4", score=2)
    await consumer.publish(grade, topic="outbox-grades", event_id="ob-1")
    await consumer.wait_seen(1, handler="committed", id="ob-1")  # record + event committed, no marker

    consumer.app.kill()
    consumer.restart()

    # The repeat finds its record and saves nothing, so the outbox publishes nothing more.
    [first, repeat] = await consumer.wait_seen(2, handler="outbox", id="ob-1")
    assert (first["exists"], repeat["exists"]) == (False, True)
    [published] = await consumer.wait_seen(1, handler="outbox-out")
    context = EventContext(
        id="ob-1", type="", source="", topic="outbox-grades", pubsub="pubsub", subscriber=APP_ID
    )
    assert published["id"] == context.derived_id("outbox/graded-s-4")  # the same id on every repeat
    await consumer.publish(grade, topic="outbox-grades", event_id="ob-1")  # marked now: acknowledged unrun
    await wait_for(
        lambda: "event ob-1 on outbox-grades was handled already" in consumer.app.log(),
        timeout=20,
        what="dup",
    )
    assert len(consumer.seen(handler="outbox", id="ob-1")) == 2
    assert len(consumer.seen(handler="outbox-out")) == 1


async def test_saving_without_events_on_an_outbox_store_is_refused_and_retried(
    consumer_factory: StartConsumer,
) -> None:
    consumer = consumer_factory(outbox=True)
    await consumer.publish(GradeCompleted(submission_id="s-5"), topic="outbox-misuse", event_id="mis-1")

    await consumer.wait_seen(2, handler="misuse", id="mis-1")  # RETRY: delivered again
    assert "saves records in 'consumer-outbox' without events" in consumer.app.log()
    assert consumer.seen(handler="outbox-out") == []  # nothing reached the outbox
