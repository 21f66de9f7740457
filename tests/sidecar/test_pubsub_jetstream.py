"""pubsub.jetstream only: streams, subjects and durable consumers on the real server, redelivery after
ackWait, and the whole sidecar with the dapr/components/jetstream profile driven through the SDK.

The behaviour every broker shares is in test_pubsub_drivers.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import nats.js.api as api
import pytest
import yaml
from broker_support import EXPECTED, UseSidecar, deliver_through_sdk
from conftest import SidecarStarter
from nats.js import JetStreamContext
from nats_support import NATS_URL, delete_stream, require_nats, unique_stream
from sidecar_support import REPO, Process, free_port

from chassis.sidecar._errors import ComponentError, InvalidMetadata
from chassis.sidecar.components.pubsub_jetstream import METADATA_HEADER, JetStreamPubSub

PROFILE = REPO / "dapr" / "components" / "jetstream"


@pytest.fixture
def stream() -> Iterator[str]:
    require_nats()
    stream = unique_stream()
    yield stream
    delete_stream(stream)


@pytest.fixture
async def js() -> AsyncIterator[JetStreamContext]:
    nc = await nats.connect(NATS_URL)
    yield nc.jetstream()
    await nc.close()


async def open_broker(stream: str, app_id: str = "app", **metadata: str) -> JetStreamPubSub:
    return await JetStreamPubSub.open(
        "pubsub",
        {"natsURL": NATS_URL, "streamName": stream, **metadata},
        app_id=app_id,
        base_dir=Path.cwd(),
    )


@pytest.fixture
async def broker(stream: str) -> AsyncIterator[JetStreamPubSub]:
    broker = await open_broker(stream, ackWait="300ms")
    yield broker
    await broker.close()


async def test_publish_creates_the_stream_and_stores_the_message_under_the_topic(
    broker: JetStreamPubSub, js: JetStreamContext, stream: str
) -> None:
    await broker.publish("orders", b'{"specversion":"1.0"}', {"traceparent": "00-abc"})
    await broker.publish("grades", b"second", {})
    info = await js.stream_info(stream)
    assert info.config.subjects == ["orders", "grades"]  # each topic added on first use
    stored = await js.get_msg(stream, 1)
    assert (stored.subject, stored.data) == ("orders", b'{"specversion":"1.0"}')  # untouched, as daprd
    assert json.loads((stored.headers or {})[METADATA_HEADER]) == {"traceparent": "00-abc"}


async def test_an_existing_stream_keeps_its_subjects(js: JetStreamContext, stream: str) -> None:
    await js.add_stream(name=stream, subjects=["made.by.ops"])
    broker = await open_broker(stream)
    try:
        await broker.subscribe("g", "orders")
    finally:
        await broker.close()
    assert (await js.stream_info(stream)).config.subjects == ["made.by.ops", "orders"]


async def test_without_stream_name_the_stream_storing_the_subject_is_used(
    js: JetStreamContext, stream: str
) -> None:
    await js.add_stream(name=stream, subjects=[f"{stream}.orders"])
    broker = await JetStreamPubSub.open("p", {"natsURL": NATS_URL}, app_id="a", base_dir=Path.cwd())
    try:
        await broker.subscribe("g", f"{stream}.orders")
        await broker.publish(f"{stream}.orders", b"x", {})
        assert [m.data for m in await broker.claim("g", 10)] == [b"x"]
        with pytest.raises(ComponentError, match="no JetStream stream stores subject"):
            await broker.publish(f"{stream}.nowhere", b"x", {})
    finally:
        await broker.close()


async def test_a_durable_consumer_per_group_and_topic(js: JetStreamContext, stream: str) -> None:
    for metadata, name in (({}, "shop-orders_v1"), ({"durableName": "billing"}, "billing-orders_v1")):
        broker = await open_broker(stream, "shop", ackWait="45s", maxDeliver="7", **metadata)
        try:
            await broker.subscribe("shop", "orders.v1")
        finally:
            await broker.close()
        config = (await js.consumer_info(stream, name)).config
        assert (config.filter_subject, config.ack_policy, config.ack_wait) == (
            "orders.v1",
            api.AckPolicy.EXPLICIT,
            45.0,
        )
        assert config.max_deliver == 7


async def test_messages_from_other_clients_are_delivered(
    broker: JetStreamPubSub, js: JetStreamContext
) -> None:
    await broker.subscribe("g", "orders")
    ack = await js.publish("orders", b"from daprd")  # no headers at all
    [message] = await broker.claim("g", 10)
    assert (message.seq, message.data, message.metadata, message.attempts) == (ack.seq, b"from daprd", {}, 1)


async def test_a_message_left_by_a_closed_instance_comes_back_after_ack_wait(stream: str) -> None:
    first = await open_broker(stream, ackWait="300ms")
    await first.subscribe("g", "orders")
    await first.publish("orders", b"x", {})
    [message] = await first.claim("g", 10)
    await first.close()  # gone without answering: only JetStream knows about the delivery
    second = await open_broker(stream, ackWait="300ms")
    try:
        await second.subscribe("g", "orders")
        assert await second.claim("g", 10) == []
        async with asyncio.timeout(3):
            while not (again := await second.claim("g", 10)):
                await second.wait(0.05)
    finally:
        await second.close()
    assert [(m.seq, m.attempts, m.data) for m in again] == [(message.seq, 2, b"x")]


async def test_unreachable_server_fails_with_one_line() -> None:
    port = free_port()
    with pytest.raises(ComponentError) as caught:
        await open_broker("s", natsURL=f"nats://127.0.0.1:{port}")
    assert f"error connecting to nats at nats://127.0.0.1:{port}" in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("metadata", "field"),
    [
        ({"natsURL": ""}, "natsURL"),
        ({"natsURL": "http://localhost:4222"}, "natsURL"),
        ({"deliverPolicy": "sometimes"}, "deliverPolicy"),
        ({"ackPolicy": "none"}, "ackPolicy"),
        ({"maxDeliver": "-1"}, "maxDeliver"),
        ({"ackWait": "0s"}, "ackWait"),
        ({"memoryStorage": "maybe"}, "memoryStorage"),
    ],
)
async def test_invalid_metadata(metadata: dict[str, str], field: str) -> None:
    with pytest.raises(InvalidMetadata) as caught:
        await open_broker("s", **metadata)
    assert caught.value.field == field


def profile_copy(folder: Path, stream: str) -> Path:
    """The jetstream profile with this test's own stream."""
    folder.mkdir()
    for source in PROFILE.glob("*.yaml"):
        doc = yaml.safe_load(source.read_text())
        for item in doc["spec"]["metadata"]:
            if item["name"] == "streamName":
                item["value"] = stream
        (folder / source.name).write_text(yaml.safe_dump(doc))
    return folder


async def test_sidecar_with_the_jetstream_profile_delivers_through_the_sdk(
    tmp_path: Path,
    stream: str,
    js: JetStreamContext,
    started: list[Process],
    start_sidecar: SidecarStarter,
    dapr_env: UseSidecar,
) -> None:
    deliveries = await deliver_through_sdk(
        tmp_path,
        profile_copy(tmp_path / "resources", stream),
        app_id="learner",
        topic="submissions",
        started=started,
        start_sidecar=start_sidecar,
        dapr_env=dapr_env,
    )
    assert deliveries == EXPECTED  # RETRY: a NAK with the back-off as its delay
    async with asyncio.timeout(10):  # SUCCESS is acked just after the app answers
        while (await js.consumer_info(stream, "learner-submissions")).num_ack_pending:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
