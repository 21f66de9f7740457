"""Bulk delivery: a handler gets a batch of typed events and answers per entry.

Through a real sidecar (bulkSubscribe from ListTopicSubscriptions) to tests/chassis/apps/consumer_service.py,
and directly over the app's AppCallback for the answers to a whole-batch failure.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import grpc
import pytest
from consumer_kit import Consumer, start_consumer
from dapr.proto.runtime.v1 import appcallback_pb2 as callback_v1
from dapr.proto.runtime.v1 import appcallback_pb2_grpc as callback_grpc
from google.protobuf import empty_pb2
from mooc.events.v1.grading_pb2 import GradeCompleted

from chassis import BulkEvent, Retry, Service, ServiceSettings
from chassis._events import event_to_json
from chassis.testing import AppProcess, Sidecar, free_port, wait_for

Status = callback_v1.TopicEventResponse


@pytest.fixture
def consumer(
    sidecar_factory: Callable[..., Sidecar], app_factory: Callable[..., AppProcess], tmp_path: Path
) -> Consumer:
    return start_consumer(sidecar_factory, app_factory, tmp_path)


async def test_a_batch_is_handled_and_each_entry_answered_on_its_own(consumer: Consumer) -> None:
    learners = ["ok", "ok", "retry-once", "drop", "ok"]
    await asyncio.gather(
        *(
            consumer.publish(
                GradeCompleted(submission_id=f"s-{n}", learner_id=learner),
                topic="bulk-grades",
                event_id=f"b-{n}",
            )
            for n, learner in enumerate(learners)
        )
    )

    retried = await consumer.wait_seen(2, id="b-2")  # RETRY: delivered again
    assert [r["learner"] for r in retried] == ["retry-once", "retry-once"]
    for n in (0, 1, 3, 4):
        await consumer.wait_seen(1, id=f"b-{n}")
    assert max(r["batch"] for r in consumer.seen(handler="bulk")) > 1  # delivered together
    await asyncio.sleep(2)  # a dropped or acknowledged entry is not delivered again: give it the chance
    assert {n: len(consumer.seen(id=f"b-{n}")) for n in range(5)} == {0: 1, 1: 1, 2: 2, 3: 1, 4: 1}


async def test_an_entry_seen_before_is_not_handed_to_the_handler_again(consumer: Consumer) -> None:
    grade = GradeCompleted(submission_id="s-dup", learner_id="ok")
    await consumer.publish(grade, topic="bulk-grades", event_id="bulk-dup")
    await consumer.wait_seen(1, id="bulk-dup")
    await consumer.publish(grade, topic="bulk-grades", event_id="bulk-dup")

    line = "event bulk-dup on bulk-grades was handled already"
    await wait_for(lambda: line in consumer.app.log(), timeout=20, what=line)
    assert len(consumer.seen(id="bulk-dup")) == 1


# ---- over the AppCallback, without a sidecar (and so without an inbox) ---------------------------------


@pytest.fixture
async def app() -> AsyncIterator[callback_grpc.AppCallbackStub]:
    settings = ServiceSettings(app_id="bulky", app_port=free_port(), dapr_http_port=free_port())
    service = Service("bulky", settings)

    @service.subscribe_bulk(
        topic="grades", event=GradeCompleted, max_messages=7, max_await_ms=50, inbox=False
    )
    async def on_grades(batch: Sequence[BulkEvent[GradeCompleted]]) -> None:
        if any(entry.event.learner_id == "boom" for entry in batch):
            raise Retry("the whole batch, later")
        for entry in batch:
            if entry.event.learner_id == "drop":
                entry.drop("no")

    serving = asyncio.create_task(service.serve())
    async with grpc.aio.insecure_channel(f"127.0.0.1:{settings.app_port}") as channel:
        stub = callback_grpc.AppCallbackStub(channel)  # type: ignore[no-untyped-call]

        async def listed() -> bool:
            try:
                await stub.ListTopicSubscriptions(empty_pb2.Empty(), timeout=1)
            except grpc.aio.AioRpcError:
                return False
            return True

        await wait_for(listed, timeout=10, what="app serving")
        yield stub
    service.stop()
    await asyncio.wait_for(serving, timeout=15)


def bulk_request(
    *learners: str, data: bytes | None = None, topic: str = "grades"
) -> callback_v1.TopicEventBulkRequest:
    entries = []
    for n, learner in enumerate(learners):
        payload = data if data is not None else event_to_json(GradeCompleted(learner_id=learner)).encode()
        cloud_event = callback_v1.TopicEventCERequest(
            id=f"id-{n}", source="grading", type="mooc.grading.grade.completed.v1", spec_version="1.0",
            data_content_type="application/json", data=payload,
        )  # fmt: skip
        entries.append(callback_v1.TopicEventBulkRequestEntry(entry_id=f"e{n}", cloud_event=cloud_event))
    return callback_v1.TopicEventBulkRequest(id="b", topic=topic, pubsub_name="pubsub", entries=entries)


def statuses(reply: callback_v1.TopicEventBulkResponse) -> dict[str, int]:
    return {entry.entry_id: entry.status for entry in reply.statuses}


async def test_the_subscription_asks_for_bulk_delivery(app: callback_grpc.AppCallbackStub) -> None:
    [listed] = (await app.ListTopicSubscriptions(empty_pb2.Empty())).subscriptions
    config = listed.bulk_subscribe
    assert (config.enabled, config.max_messages_count, config.max_await_duration_ms) == (True, 7, 50)


async def test_per_entry_outcomes_and_whole_batch_failures(app: callback_grpc.AppCallbackStub) -> None:
    assert statuses(await app.OnBulkTopicEvent(bulk_request("a", "drop", "b"))) == {
        "e0": Status.SUCCESS, "e1": Status.DROP, "e2": Status.SUCCESS,
    }  # fmt: skip
    assert statuses(await app.OnBulkTopicEvent(bulk_request("a", "boom"))) == {
        "e0": Status.RETRY,
        "e1": Status.RETRY,
    }
    # Data that is not the declared event is dropped entry by entry; an unknown topic, every entry.
    assert statuses(await app.OnBulkTopicEvent(bulk_request("a", data=b"not json"))) == {"e0": Status.DROP}
    assert statuses(await app.OnBulkTopicEvent(bulk_request("a", "b", topic="nope"))) == {
        "e0": Status.DROP, "e1": Status.DROP,
    }  # fmt: skip
