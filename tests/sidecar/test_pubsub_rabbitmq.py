"""pubsub.rabbitmq only: Dapr's exchange/queue layout on the real broker, redelivery when a holder dies,
and the whole sidecar with the postgresql-rabbitmq profile's pub/sub driven through the official SDK.

The behaviour every broker shares is in test_pubsub_drivers.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aio_pika
import aio_pika.abc
import pytest
from broker_support import EXPECTED, UseSidecar, deliver_through_sdk
from conftest import SidecarStarter
from rabbitmq_support import RABBITMQ_URL, delete_marked, require_rabbitmq, unique
from sidecar_support import REPO, Process, free_port, wait_until

from chassis.sidecar._errors import ComponentError, InvalidMetadata
from chassis.sidecar.components import Message
from chassis.sidecar.components.pubsub_rabbitmq import METADATA_HEADER, SEQ_HEADER, RabbitMQPubSub

PROFILE_PUBSUB = REPO / "dapr" / "components" / "postgresql-rabbitmq" / "pubsub.yaml"

# Claims what it can, says how many, then hangs without acknowledging: the parent SIGKILLs it.
HOLDER = """
import asyncio, sys
from pathlib import Path
from chassis.sidecar.components.pubsub_rabbitmq import RabbitMQPubSub

async def main(url, topic):
    broker = await RabbitMQPubSub.open("p", {"connectionString": url}, app_id="a", base_dir=Path.cwd())
    await broker.subscribe("g", topic)
    print(len(await broker.claim("g", 100)), flush=True)
    await asyncio.sleep(60)

asyncio.run(main(*sys.argv[1:]))
"""


@pytest.fixture(scope="module", autouse=True)
def cleanup() -> Iterator[None]:
    yield
    delete_marked()


@pytest.fixture
def topic() -> str:
    require_rabbitmq()
    return unique("topic")


@pytest.fixture
async def raw() -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    connection = await aio_pika.connect(RABBITMQ_URL)
    async with connection:
        yield await connection.channel()


async def open_broker(app_id: str = "app", **metadata: str) -> RabbitMQPubSub:
    return await RabbitMQPubSub.open(
        "pubsub", {"connectionString": RABBITMQ_URL, **metadata}, app_id=app_id, base_dir=Path.cwd()
    )


@pytest.fixture
async def broker(topic: str) -> AsyncIterator[RabbitMQPubSub]:
    broker = await open_broker(processingTimeout="300ms")
    yield broker
    await broker.close()


def rabbitmqctl(*args: str) -> list[list[str]]:
    """Rows of a rabbitmqctl listing (tab-separated), skipping when the tool is not installed."""
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        pytest.skip("rabbitmqctl not installed (the broker is elsewhere)")
    out = subprocess.run([ctl, "-q", "--no-table-headers", *args], capture_output=True, text=True, timeout=60)
    return [line.split("\t") for line in out.stdout.splitlines() if line]


async def test_publish_goes_to_every_queue_bound_to_the_topic_exchange(
    broker: RabbitMQPubSub, raw: aio_pika.abc.AbstractChannel, topic: str
) -> None:
    await broker.subscribe("shop", topic)
    await broker.publish(topic, b'{"specversion":"1.0"}', {"traceparent": "00-abc"})
    queue = await raw.declare_queue(f"shop-{topic}", passive=True)  # Dapr's `<consumerID>-<topic>`
    incoming = await queue.get(no_ack=True)
    assert incoming.body == b'{"specversion":"1.0"}'  # the CloudEvent untouched, as daprd publishes it
    assert incoming.exchange == topic
    assert json.loads(str(incoming.headers[METADATA_HEADER])) == {"traceparent": "00-abc"}
    assert str(incoming.headers[SEQ_HEADER]).isdigit()


async def test_consumer_id_names_the_queue(raw: aio_pika.abc.AbstractChannel, topic: str) -> None:
    broker = await open_broker(consumerID="billing")
    try:
        await broker.subscribe("app", topic)
    finally:
        await broker.close()
    await raw.declare_queue(f"billing-{topic}", passive=True)


async def test_queue_and_message_options_from_metadata(topic: str) -> None:
    broker = await open_broker(durable="true", deletedWhenUnused="false", maxLen="5", ttlInSeconds="60")
    try:
        await broker.subscribe("g", topic)
    finally:
        await broker.close()
    [row] = [
        r
        for r in rabbitmqctl("list_queues", "name", "durable", "auto_delete", "arguments")
        if r[0] == f"g-{topic}"
    ]
    assert row[1:3] == ["true", "false"]
    assert "x-max-length" in row[3] and "x-message-ttl" in row[3] and "60000" in row[3]


async def test_persistent_delivery_mode(raw: aio_pika.abc.AbstractChannel, topic: str) -> None:
    broker = await open_broker(deliveryMode="2")
    try:
        await broker.subscribe("g", topic)
        await broker.publish(topic, b"x", {})
    finally:
        await broker.close()
    incoming = await (await raw.declare_queue(f"g-{topic}", passive=True)).get(no_ack=True)
    assert incoming.delivery_mode == aio_pika.DeliveryMode.PERSISTENT


async def test_messages_from_other_clients_are_delivered(
    broker: RabbitMQPubSub, raw: aio_pika.abc.AbstractChannel, topic: str
) -> None:
    await broker.subscribe("g", topic)
    exchange = await raw.get_exchange(topic)
    await exchange.publish(aio_pika.Message(b"from daprd"), routing_key="")  # no headers at all
    [message] = await broker.claim("g", 10)
    assert (message.data, message.metadata, message.attempts) == (b"from daprd", {}, 1)
    assert message.seq < 0  # a seq of ours can never collide with it
    await broker.ack("g", message)


async def test_held_messages_go_back_to_the_queue_when_an_instance_closes(topic: str) -> None:
    first = await open_broker()
    await first.subscribe("g", topic)
    await first.publish(topic, b"x", {})
    [message] = await first.claim("g", 10)
    await first.close()  # gone without answering: RabbitMQ requeues what the connection held
    second = await open_broker()
    try:
        await second.subscribe("g", topic)
        [again] = await second.claim("g", 10)
    finally:
        await second.close()
    assert (again.seq, again.data, again.attempts) == (message.seq, b"x", 2)


def start_holder(topic: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, RABBITMQ_URL, topic], stdout=subprocess.PIPE, text=True
    )


async def test_messages_held_by_a_killed_process_are_redelivered(topic: str) -> None:
    broker = await open_broker()
    again: list[Message] = []
    try:
        await broker.subscribe("g", topic)
        for i in range(5):
            await broker.publish(topic, str(i).encode(), {})
        holder = start_holder(topic)
        try:
            assert holder.stdout is not None
            assert await asyncio.to_thread(holder.stdout.readline) == "5\n"
            assert await broker.claim("g", 10) == []  # the holder has them all
            os.kill(holder.pid, signal.SIGKILL)
        finally:
            holder.kill()
            await asyncio.to_thread(holder.wait, 10)
            if holder.stdout is not None:
                holder.stdout.close()
        async with asyncio.timeout(10):
            while len(again) < 5:  # once the broker has noticed the dead connection
                again += await broker.claim("g", 10)
                await broker.wait(0.05)
    finally:
        await broker.close()
    assert sorted(m.data for m in again) == [b"0", b"1", b"2", b"3", b"4"]
    assert {m.attempts for m in again} == {2}


async def test_connecting_with_hostname_username_and_password(topic: str) -> None:
    broker = await RabbitMQPubSub.open(
        "p",
        {"hostname": "127.0.0.1:5672", "username": "guest", "password": "guest"},
        app_id="a",
        base_dir=Path.cwd(),
    )
    await broker.close()


async def test_unreachable_broker_fails_with_one_line_without_the_password() -> None:
    port = free_port()
    with pytest.raises(ComponentError) as caught:
        await open_broker(connectionString=f"amqp://guest:secret@127.0.0.1:{port}")
    assert f"error connecting to rabbitmq at 127.0.0.1:{port}" in str(caught.value)
    assert "secret" not in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("metadata", "field"),
    [
        ({"connectionString": ""}, "connectionString"),
        ({"connectionString": "http://localhost:5672"}, "connectionString"),
        ({"protocol": "amqps"}, "protocol"),
        ({"deliveryMode": "3"}, "deliveryMode"),
        ({"exchangeKind": "direct"}, "exchangeKind"),
        ({"autoAck": "true"}, "autoAck"),
        ({"enableDeadLetter": "true"}, "enableDeadLetter"),
        ({"durable": "yes"}, "durable"),
        ({"prefetchCount": "-1"}, "prefetchCount"),
        ({"ttlInSeconds": "0"}, "ttlInSeconds"),
    ],
)
async def test_invalid_metadata(metadata: dict[str, str], field: str) -> None:
    with pytest.raises(InvalidMetadata) as caught:
        await open_broker(**metadata)
    assert caught.value.field == field


async def test_sidecar_with_the_rabbitmq_profile_delivers_through_the_sdk(
    tmp_path: Path,
    topic: str,
    started: list[Process],
    start_sidecar: SidecarStarter,
    dapr_env: UseSidecar,
) -> None:
    app_id = unique("app")
    resources = tmp_path / "resources"
    resources.mkdir()
    shutil.copy(PROFILE_PUBSUB, resources / "pubsub.yaml")
    queue = f"{app_id}-{topic}"

    def listed(*columns: str) -> list[list[str]]:
        return [row[1:] for row in rabbitmqctl("list_queues", "name", *columns) if row[0] == queue]

    async def subscribed() -> bool:  # events published before the queue exists go nowhere
        return bool(await asyncio.to_thread(listed))

    deliveries = await deliver_through_sdk(
        tmp_path,
        resources,
        app_id=app_id,
        topic=topic,
        started=started,
        start_sidecar=start_sidecar,
        dapr_env=dapr_env,
        subscribed=subscribed,
    )
    assert deliveries == EXPECTED  # RETRY: held by the sidecar, delivered again after the back-off
    # SUCCESS is acked just after the app answers: nothing stays in the queue, ready or unacked.
    await asyncio.to_thread(wait_until, lambda: listed("messages") == [["0"]], what=f"{queue} empty")


@pytest.mark.serial
async def test_broker_restart_keeps_durable_messages_and_reconnects(topic: str) -> None:
    """Restarts the local broker (stop_app/start_app, a few seconds): skipped without rabbitmqctl."""
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        pytest.skip("rabbitmqctl not installed (the broker is elsewhere)")

    def run(command: str) -> None:
        subprocess.run([ctl, "-q", command], check=True, capture_output=True, timeout=60)

    broker = await open_broker(durable="true", deletedWhenUnused="false", deliveryMode="2")
    try:
        await broker.subscribe("g", topic)
        await broker.publish(topic, b"before", {})
        [held] = await broker.claim("g", 10)
        await asyncio.to_thread(run, "stop_app")
        try:
            with pytest.raises(ComponentError):  # not confirmed: the caller knows it was not stored
                await broker.publish(topic, b"during", {})
        finally:
            await asyncio.to_thread(run, "start_app")
        async with asyncio.timeout(30):
            while not await published(broker, topic, b"after"):  # noqa: ASYNC110 (reconnecting)
                await asyncio.sleep(0.2)
        await broker.ack("g", held)  # a delivery of the old connection: dropped, not an error
        again: list[Message] = []
        async with asyncio.timeout(10):
            while len(again) < 2:
                again += await broker.claim("g", 10)
                await broker.wait(0.1)
    finally:
        await broker.close()
    assert sorted((m.data, m.attempts) for m in again) == [(b"after", 1), (b"before", 2)]


async def published(broker: RabbitMQPubSub, topic: str, data: bytes) -> bool:
    """Publish once the robust connection is back; False while it is still reconnecting."""
    try:
        await broker.publish(topic, data, {})
    except ComponentError:
        return False
    return True
