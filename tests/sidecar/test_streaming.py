"""Streaming subscriptions (SubscribeTopicEventsAlpha1) through the official SDK's sync and async clients.

The sidecar runs without an app port: streams need none. Each test uses its own topics.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator

import grpc
import pytest
from dapr.aio.clients import DaprClient as AsyncDaprClient
from dapr.clients import DaprClient
from dapr.clients.exceptions import DaprGrpcError
from dapr.clients.grpc._response import TopicEventResponse
from dapr.common.pubsub.subscription import SubscriptionMessage
from sidecar_support import RunningSidecar, fast_components, sidecar_process, stop_all, wait_until
from subscription_support import grpc_metadata

pytestmark = pytest.mark.timeout(60)  # a stream that never delivers would block next_message()

STREAMING_TYPE = 3  # metadata_pb2.PubsubSubscriptionType.STREAMING


@pytest.fixture(scope="module")
def started(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSidecar]:
    """One sidecar for the module (each test uses its own topics); no app port."""
    workdir = tmp_path_factory.mktemp("streaming")
    components = fast_components(workdir / "components")
    with (components / "pubsub.yaml").open("a") as pubsub:  # only apps scoped to it may use "secret"
        pubsub.write('  - name: protectedTopics\n    value: "secret"\n')
    running = sidecar_process("streamer", workdir, resources=[components])
    try:
        running.spawn()
        running.wait_ready(running.healthy, "answering /v1.0/healthz/outbound with 204")
        yield running
    finally:
        stop_all([running])


@pytest.fixture
def sidecar(started: RunningSidecar, dapr_env: Callable[[RunningSidecar], None]) -> RunningSidecar:
    dapr_env(started)
    return started


def _topic() -> str:
    return f"stream-{uuid.uuid4().hex[:8]}"


def test_sync_stream_gets_events_and_a_retry_redelivers(sidecar: RunningSidecar) -> None:
    topic = _topic()
    with DaprClient() as client:
        subscription = client.subscribe("pubsub", topic)
        try:
            client.publish_event("pubsub", topic, "first", publish_metadata={"cloudevent.id": "s-1"})
            message = subscription.next_message()
            assert (message.id(), message.topic(), message.pubsub_name()) == ("s-1", topic, "pubsub")
            assert message.raw_data() == b"first" and message.source() == "streamer"
            subscription.respond_retry(message)
            again = subscription.next_message()
            assert again.id() == "s-1"
            subscription.respond_success(again)
            (listed,) = [s for s in grpc_metadata(sidecar).subscriptions if s.topic == topic]
            assert listed.type == STREAMING_TYPE
        finally:
            subscription.close()
    wait_until(
        lambda: topic not in {s.topic for s in grpc_metadata(sidecar).subscriptions}, what="unsubscribed"
    )


def test_a_second_stream_for_the_same_topic_is_rejected(sidecar: RunningSidecar) -> None:
    topic = _topic()
    with DaprClient() as client:
        first = client.subscribe("pubsub", topic)
        try:
            with pytest.raises(Exception, match="already subscribed"):
                client.subscribe("pubsub", topic)
        finally:
            first.close()


def test_drop_goes_to_the_dead_letter_topic_and_unacked_events_come_back(sidecar: RunningSidecar) -> None:
    topic, dead_topic = _topic(), _topic()
    with DaprClient() as client:
        dead = client.subscribe("pubsub", dead_topic)
        stream = client.subscribe("pubsub", topic, dead_letter_topic=dead_topic)
        try:
            client.publish_event("pubsub", topic, "bad", publish_metadata={"cloudevent.id": "d-1"})
            stream.respond_drop(stream.next_message())
            dead_letter = dead.next_message()
            assert (dead_letter.id(), dead_letter.topic()) == ("d-1", dead_topic)
            assert dead_letter.extensions()["topic"] == topic  # the original CloudEvent
            dead.respond_success(dead_letter)
            client.publish_event("pubsub", topic, "unacked", publish_metadata={"cloudevent.id": "u-1"})
            assert stream.next_message().id() == "u-1"  # never acknowledged...
        finally:
            stream.close()
            dead.close()
        again = client.subscribe("pubsub", topic, dead_letter_topic=dead_topic)
        try:
            message = again.next_message()  # ...so the next stream gets it, not the dead-letter topic
            assert message.id() == "u-1"
            again.respond_success(message)
        finally:
            again.close()


async def test_async_subscribe_with_handler(sidecar: RunningSidecar) -> None:
    topic = _topic()
    received: list[SubscriptionMessage] = []
    all_received = asyncio.Event()

    async def handler(message: SubscriptionMessage) -> TopicEventResponse:
        received.append(message)
        if len(received) == 3:
            all_received.set()
        return TopicEventResponse("success")

    async with AsyncDaprClient() as client:
        close = await client.subscribe_with_handler("pubsub", topic, handler)
        try:
            for n in range(3):
                await client.publish_event(
                    "pubsub", topic, f"m{n}", publish_metadata={"cloudevent.id": f"a-{n}"}
                )
            await asyncio.wait_for(all_received.wait(), 15)
        finally:
            await close()
    assert sorted(m.id() for m in received) == ["a-0", "a-1", "a-2"]
    assert sorted(m.raw_data() for m in received) == [b"m0", b"m1", b"m2"]


def test_topic_scopes_apply_to_streams_and_bulk_publish(sidecar: RunningSidecar) -> None:
    with DaprClient() as client:
        with pytest.raises(
            Exception, match="subscription to topic 'secret' on pubsub 'pubsub' is not allowed"
        ):
            client.subscribe("pubsub", "secret")
        with pytest.raises(DaprGrpcError) as caught:
            client.publish_events("pubsub", "secret", ["x"])
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert caught.value.details() == "topic secret is not allowed for app id streamer"
