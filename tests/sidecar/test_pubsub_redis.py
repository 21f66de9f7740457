"""pubsub.redis only: Dapr's stream layout and consumer groups on the real server, and the whole sidecar
with the dapr/components/redis profile driven through the official SDK.

The behaviour every broker shares is in test_pubsub_drivers.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio
from conftest import SidecarStarter
from dapr.aio.clients import DaprClient as AsyncDaprClient
from redis_support import REDIS_HOST, client, delete_containing, require_redis, unique
from sidecar_support import (
    REPO,
    Process,
    RunningSidecar,
    app_process,
    free_port,
    port_accepts,
    read_jsonl,
    wait_until,
)

from chassis.sidecar._errors import InvalidMetadata
from chassis.sidecar.components.pubsub_redis import RedisPubSub

REDIS_PROFILE = REPO / "dapr" / "components" / "redis"
UseSidecar = Callable[[RunningSidecar], None]

# A subscriber written with the official dapr.ext.grpc App: records every delivery; an event whose id
# starts with "retry" is answered RETRY the first time.
SUBSCRIBER = """
import json, os
from dapr.ext.grpc import App, SubscriptionMessage, TopicEventResponse

app = App()
seen = set()

@app.subscribe("pubsub", os.environ["TOPIC"])
def handle(event: SubscriptionMessage) -> TopicEventResponse:
    with open(os.environ["RECORD_FILE"], "a") as out:
        out.write(json.dumps({"id": event.id(), "data": event.raw_data().decode()}) + "\\n")
    first = event.id() not in seen
    seen.add(event.id())
    return TopicEventResponse("retry" if first and event.id().startswith("retry") else "success")

app.run(int(os.environ["APP_PORT"]), listen_address="127.0.0.1")
"""


@pytest.fixture
def marker() -> Iterator[str]:
    """A name part for this test's streams and app ids; their keys are deleted afterwards."""
    require_redis()
    marker = unique("redis")
    yield marker
    delete_containing(marker)


@pytest.fixture
async def raw() -> AsyncIterator[redis.asyncio.Redis]:
    raw = client()
    yield raw
    await raw.aclose()


async def open_broker(app_id: str = "app", **metadata: str) -> RedisPubSub:
    return await RedisPubSub.open(
        "pubsub", {"redisHost": REDIS_HOST, **metadata}, app_id=app_id, base_dir=Path.cwd()
    )


@pytest.fixture
async def broker(marker: str) -> AsyncIterator[RedisPubSub]:
    broker = await open_broker(processingTimeout="300ms")
    yield broker
    await broker.close()


async def test_publish_adds_data_and_metadata_fields_to_the_topic_stream(
    broker: RedisPubSub, raw: redis.asyncio.Redis, marker: str
) -> None:
    await broker.publish(marker, b"\x00cloudevent", {"traceparent": "00-abc"})  # no subscriber yet
    [(_, fields)] = await raw.xrange(marker)
    assert fields == {b"data": b"\x00cloudevent", b"metadata": b'{"traceparent": "00-abc"}'}


async def test_a_new_group_reads_the_stream_from_its_start(broker: RedisPubSub, marker: str) -> None:
    await broker.publish(marker, b"before", {})
    await broker.subscribe("g", marker)  # XGROUP CREATE ... 0, as Dapr's component does
    await broker.publish(marker, b"after", {})
    assert [m.data for m in await broker.claim("g", 10)] == [b"before", b"after"]


async def test_entries_written_by_other_clients_are_delivered(
    broker: RedisPubSub, raw: redis.asyncio.Redis, marker: str
) -> None:
    await broker.subscribe("g", marker)
    await raw.xadd(marker, {"data": b"from daprd"})  # Dapr's component may write no metadata field
    await raw.xadd(marker, {"data": b"odd", "metadata": b"not json"})
    assert [(m.data, m.metadata) for m in await broker.claim("g", 10)] == [(b"from daprd", {}), (b"odd", {})]


async def test_consumer_is_the_consumer_id_or_the_app_id(raw: redis.asyncio.Redis, marker: str) -> None:
    for app_id, metadata, expected in (("shop", {}, b"shop"), ("shop", {"consumerID": "c1"}, b"c1")):
        broker = await open_broker(app_id, **metadata)
        try:
            await broker.subscribe("g", marker)
            await broker.publish(marker, b"x", {})
            [message] = await broker.claim("g", 10)
            [pending] = await raw.xpending_range(marker, "g", "-", "+", 10)
            assert pending["consumer"] == expected
            await broker.ack("g", message)
        finally:
            await broker.close()


async def test_ack_leaves_the_pending_list_and_keeps_the_entry(
    broker: RedisPubSub, raw: redis.asyncio.Redis, marker: str
) -> None:
    await broker.subscribe("g", marker)
    await broker.publish(marker, b"x", {})
    [message] = await broker.claim("g", 10)
    assert (await raw.xpending(marker, "g"))["pending"] == 1
    await broker.ack("g", message)
    assert (await raw.xpending(marker, "g"))["pending"] == 0
    assert await raw.xlen(marker) == 1  # Dapr does not XDEL either; maxLenApprox bounds the stream


async def test_a_lease_left_by_a_closed_instance_is_claimed_by_the_next(marker: str) -> None:
    first = await open_broker(processingTimeout="200ms")
    await first.subscribe("g", marker)
    await first.publish(marker, b"x", {})
    [message] = await first.claim("g", 10)
    await first.close()  # gone without answering: only Redis knows about the delivery
    second = await open_broker(processingTimeout="200ms")
    try:
        await second.subscribe("g", marker)
        assert await second.claim("g", 10) == []
        async with asyncio.timeout(2):
            while not (again := await second.claim("g", 10)):
                await second.wait(0.05)
    finally:
        await second.close()
    assert [(m.seq, m.attempts, m.data) for m in again] == [(message.seq, 2, b"x")]


async def test_retry_longer_than_the_processing_timeout_is_due_at_the_timeout(
    broker: RedisPubSub, marker: str
) -> None:
    await broker.subscribe("g", marker)
    await broker.publish(marker, b"x", {})
    [message] = await broker.claim("g", 10)
    started = time.monotonic()
    await broker.retry("g", message, 30.0)
    async with asyncio.timeout(2):
        while not await broker.claim("g", 10):
            await broker.wait(1.0)
    assert 0.25 <= time.monotonic() - started < 1.5


async def test_max_len_approx_bounds_the_stream(raw: redis.asyncio.Redis, marker: str) -> None:
    broker = await open_broker(maxLenApprox="10")
    try:
        for i in range(250):
            await broker.publish(marker, str(i).encode(), {})
    finally:
        await broker.close()
    assert 10 <= await raw.xlen(marker) < 110


@pytest.mark.parametrize(
    ("metadata", "field"),
    [
        ({"redisHost": ""}, "redisHost"),
        ({"redisHost": "nohostport"}, "redisHost"),
        ({"redisHost": REDIS_HOST, "enableTLS": "true"}, "enableTLS"),
        ({"redisHost": REDIS_HOST, "failover": "true"}, "failover"),
        ({"redisHost": REDIS_HOST, "maxRetries": "many"}, "maxRetries"),
        ({"redisHost": REDIS_HOST, "maxRetryBackoff": "0"}, "maxRetryBackoff"),
    ],
)
async def test_invalid_metadata(metadata: dict[str, str], field: str) -> None:
    with pytest.raises(InvalidMetadata) as caught:
        await RedisPubSub.open("p", metadata, app_id="a", base_dir=Path.cwd())
    assert caught.value.field == field


async def test_sidecar_with_the_redis_profile_serves_the_sdk(
    tmp_path: Path,
    marker: str,
    started: list[Process],
    start_sidecar: SidecarStarter,
    dapr_env: UseSidecar,
    raw: redis.asyncio.Redis,
) -> None:
    records, app_id, topic = tmp_path / "deliveries.jsonl", f"app-{marker}", f"orders-{marker}"
    script = tmp_path / "subscriber.py"
    script.write_text(SUBSCRIBER)
    app_port = free_port()
    app = app_process(str(script), app_port, tmp_path, {"TOPIC": topic, "RECORD_FILE": str(records)})
    started.append(app)
    app.spawn()
    app.wait_ready(lambda: port_accepts(app_port), "listening")
    sidecar = start_sidecar(app_id, app_port=app_port, resources=[REDIS_PROFILE], ready="/v1.0/healthz")
    dapr_env(sidecar)
    async with AsyncDaprClient() as sdk:
        await sdk.save_state("statestore", "course-1", b'{"title":"Intro"}')
        saved = await sdk.get_state("statestore", "course-1")
        await sdk.publish_event("pubsub", topic, "hello", publish_metadata={"cloudevent.id": "plain-1"})
        await sdk.publish_event("pubsub", topic, "again", publish_metadata={"cloudevent.id": "retry-1"})
    assert (saved.data, saved.etag) == (b'{"title":"Intro"}', "1")
    assert await raw.hgetall(f"{app_id}||course-1") == {b"data": b'{"title":"Intro"}', b"version": b"1"}

    def delivered() -> list[dict[str, Any]] | None:
        found = read_jsonl(records)
        return found if len(found) >= 3 else None

    deliveries = await asyncio.to_thread(wait_until, delivered, what="3 deliveries")
    assert sorted((d["id"], d["data"]) for d in deliveries) == [
        ("plain-1", "hello"),
        ("retry-1", "again"),
        ("retry-1", "again"),  # RETRY redelivers through the Redis pending list
    ]
    async with asyncio.timeout(10):  # SUCCESS is acked just after the app answers
        while (await raw.xpending(topic, app_id))["pending"]:  # noqa: ASYNC110 (another process acks)
            await asyncio.sleep(0.05)
