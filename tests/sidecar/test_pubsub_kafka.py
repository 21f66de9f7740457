"""pubsub.kafka only: offsets committed in order, redelivery after a consumer is SIGKILLed, headers,
initialOffset, metadata validation, and the whole sidecar with the dapr/components/kafka profile.

The broker is Tansu on 127.0.0.1:9092, started by kafka_support when nothing answers there. The
behaviour every broker shares is in test_pubsub_drivers.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from broker_support import EXPECTED, UseSidecar, deliver_through_sdk
from conftest import SidecarStarter
from kafka_support import BROKERS, ensure_tansu, unique
from sidecar_support import REPO, Process, free_port

from chassis.sidecar._errors import ComponentError, InvalidMetadata
from chassis.sidecar.components import Message
from chassis.sidecar.components.pubsub_kafka import METADATA_HEADER, SEQ_HEADER, KafkaPubSub

PROFILE = REPO / "dapr" / "components" / "kafka"
# A short session: Tansu waits about half of one for members to join a group.
FAST = {"brokers": BROKERS, "sessionTimeout": "2s", "heartbeatInterval": "300ms"}

# Claims `count` messages of group `group`, acks those whose index is in `ack`, then hangs: the
# parent SIGKILLs it holding the rest.
CONSUMER = """
import asyncio, json, sys, time
from pathlib import Path
from chassis.sidecar.components.pubsub_kafka import KafkaPubSub

async def main(metadata, group, topic, count, ack):
    broker = await KafkaPubSub.open("pubsub", json.loads(metadata), app_id=group, base_dir=Path.cwd())
    await broker.subscribe(group, topic)
    claimed = []
    while len(claimed) < int(count):
        batch = await broker.claim(group, int(count) - len(claimed))
        claimed += batch
        if not batch:
            await broker.wait(0.1)
    for index in json.loads(ack):
        await broker.ack(group, claimed[index])
    print(json.dumps([m.data.decode() for m in claimed]), flush=True)
    time.sleep(600)  # blocks the loop, holding the group membership, until killed

asyncio.run(main(*sys.argv[1:]))
"""


@pytest.fixture(autouse=True)
def tansu() -> None:
    ensure_tansu()


async def open_broker(app_id: str = "app", **metadata: str) -> KafkaPubSub:
    return await KafkaPubSub.open("pubsub", FAST | metadata, app_id=app_id, base_dir=Path.cwd())


@pytest.fixture
async def broker() -> AsyncIterator[KafkaPubSub]:
    broker = await open_broker(processingTimeout="300ms")
    yield broker
    await broker.close()


async def committed(group: str, topic: str, partitions: int = 1) -> int | None:
    """The sum of the group's committed offsets over the topic's partitions (None: never committed).

    Read through a consumer that never joins: Tansu 0.6 answers the admin client's OffsetFetch with
    a response aiokafka cannot decode.
    """
    reader = AIOKafkaConsumer(bootstrap_servers=BROKERS, group_id=group, enable_auto_commit=False)
    await reader.start()
    try:
        found = [await reader.committed(TopicPartition(topic, p)) for p in range(partitions)]
    finally:
        await reader.stop()
    return None if all(offset is None for offset in found) else sum(offset or 0 for offset in found)


async def test_offsets_are_committed_only_up_to_the_first_unacknowledged(broker: KafkaPubSub) -> None:
    topic, group = unique("topic"), unique("group")
    await broker.subscribe(group, topic)
    assert await committed(group, topic) == 0  # pinned at subscribe (initialOffset newest)
    for i in range(4):
        await broker.publish(topic, str(i).encode(), {})
    first, second, third, fourth = await broker.claim(group, 10)
    await broker.ack(group, second)
    await broker.ack(group, fourth)
    assert await committed(group, topic) == 0  # 0 is still out: nothing past it is committed
    await broker.ack(group, first)
    assert await committed(group, topic) == 2  # 0 and 1 done; 2 is still out
    await broker.retry(group, third, 0)
    [again] = await broker.claim(group, 10)
    assert (again.data, again.attempts) == (b"2", 2)
    await broker.ack(group, again)
    assert await committed(group, topic) == 4


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def read_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, f"child exited with {proc.wait(timeout=10)} before answering"
    return line.strip()


async def test_what_a_killed_consumer_held_unacknowledged_goes_to_the_next_member(
    children: list[subprocess.Popen[str]],
) -> None:
    topic, group = unique("topic"), unique("group")
    setup = await open_broker()
    try:
        await setup.subscribe(group, topic)  # the group keeps what is published from here on
    finally:
        await setup.close()
    publisher = await open_broker()
    try:
        for i in range(6):
            await publisher.publish(topic, str(i).encode(), {})
    finally:
        await publisher.close()
    argv = [sys.executable, "-c", CONSUMER, json.dumps(FAST), group, topic, "4", "[0, 1, 3]"]
    child = await asyncio.to_thread(subprocess.Popen, argv, stdout=subprocess.PIPE, text=True)
    children.append(child)
    assert json.loads(await asyncio.to_thread(read_line, child)) == ["0", "1", "2", "3"]
    os.kill(child.pid, signal.SIGKILL)
    assert await asyncio.to_thread(child.wait, 10) == -signal.SIGKILL
    successor = await open_broker()
    try:
        await successor.subscribe(group, topic)  # joins once the broker drops the dead member
        found: list[Message] = []
        async with asyncio.timeout(10):
            while len(found) < 4:
                found += await successor.claim(group, 10) or []
                await successor.wait(0.1)
    finally:
        await successor.close()
    # 0 and 1 were committed; 3 was acked but sits behind the unacknowledged 2, so it comes again.
    assert [(m.data, m.attempts) for m in found] == [(b"2", 1), (b"3", 1), (b"4", 1), (b"5", 1)]


async def test_metadata_travels_in_headers_and_partition_key_is_the_record_key(broker: KafkaPubSub) -> None:
    topic, group = unique("topic"), unique("group")
    await broker.subscribe(group, topic)
    metadata = {"traceparent": "00-abc", "partitionKey": "course-7"}
    await broker.publish(topic, b'{"specversion":"1.0"}', metadata)
    [message] = await broker.claim(group, 10)
    assert (message.data, message.metadata) == (b'{"specversion":"1.0"}', metadata)
    reader = await open_broker(initialOffset="oldest")
    try:
        raw_group = unique("raw")
        await reader.subscribe(raw_group, topic)
        member = reader._groups[raw_group]
        records = await member.consumer.getmany(timeout_ms=2000)
    finally:
        await reader.close()
    [stored] = [r for batch in records.values() for r in batch]
    headers = dict(stored.headers)
    assert stored.key == b"course-7"
    assert (headers["traceparent"], headers["partitionKey"]) == (b"00-abc", b"course-7")  # as daprd
    assert json.loads(headers[METADATA_HEADER]) == metadata
    assert headers[SEQ_HEADER].isdigit()


async def test_messages_from_other_clients_take_their_headers_as_metadata(broker: KafkaPubSub) -> None:
    topic, group = unique("topic"), unique("group")
    await broker.subscribe(group, topic)
    producer = AIOKafkaProducer(bootstrap_servers=BROKERS)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"from daprd", headers=[("traceparent", b"00-def")])
    finally:
        await producer.stop()
    [message] = await broker.claim(group, 10)
    assert (message.data, message.metadata, message.attempts) == (b"from daprd", {"traceparent": "00-def"}, 1)
    assert message.seq < 0  # not one of ours: a local number only
    await broker.ack(group, message)


@pytest.mark.parametrize(("initial", "expected"), [("newest", []), ("oldest", [b"before"])])
async def test_initial_offset_decides_what_a_new_group_sees(initial: str, expected: list[bytes]) -> None:
    topic = unique("topic")
    broker = await open_broker(initialOffset=initial)
    try:
        await broker.publish(topic, b"before", {})  # before any group subscribed
        group = unique("group")
        await broker.subscribe(group, topic)
        await broker.publish(topic, b"after", {})
        found = [m.data for m in await broker.claim(group, 10)]
    finally:
        await broker.close()
    assert found == [*expected, b"after"]


async def test_consumer_group_metadata_names_the_group() -> None:
    topic, marker = unique("topic"), unique("team")
    broker = await open_broker(consumerGroup=f"{{appID}}-{marker}")
    try:
        await broker.subscribe("billing", topic)
    finally:
        await broker.close()
    assert await committed(f"billing-{marker}", topic) == 0
    assert await committed("billing", topic) is None


async def test_unreachable_broker_fails_with_one_line() -> None:
    port = free_port()
    with pytest.raises(ComponentError) as caught:
        await open_broker(brokers=f"127.0.0.1:{port}")
    assert f"error connecting to kafka at 127.0.0.1:{port}" in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("metadata", "field"),
    [
        ({"brokers": ""}, "brokers"),
        ({"brokers": "localhost"}, "brokers"),
        ({"authType": "password"}, "authType"),
        ({"caCert": "-----BEGIN CERTIFICATE-----"}, "caCert"),
        ({"initialOffset": "middle"}, "initialOffset"),
        ({"maxMessageBytes": "0"}, "maxMessageBytes"),
        ({"partitionCount": "two"}, "partitionCount"),
        ({"consumeRetryInterval": "soon"}, "consumeRetryInterval"),
        ({"sessionTimeout": "0s"}, "sessionTimeout"),
        ({"heartbeatInterval": "5s"}, "heartbeatInterval"),  # not shorter than the 2s session
        ({"disableTls": "maybe"}, "disableTls"),
    ],
)
async def test_invalid_metadata(metadata: dict[str, str], field: str) -> None:
    with pytest.raises(InvalidMetadata) as caught:
        await open_broker(**metadata)
    assert caught.value.field == field


def profile_copy(folder: Path) -> Path:
    folder.mkdir()
    for source in PROFILE.glob("*.yaml"):
        (folder / source.name).write_text(yaml.safe_dump(yaml.safe_load(source.read_text())))
    return folder


async def test_sidecar_with_the_kafka_profile_delivers_through_the_sdk(
    tmp_path: Path,
    started: list[Process],
    start_sidecar: SidecarStarter,
    dapr_env: UseSidecar,
) -> None:
    topic, app_id = unique("submissions"), unique("learner")
    deliveries = await deliver_through_sdk(
        tmp_path,
        profile_copy(tmp_path / "resources"),
        app_id=app_id,
        topic=topic,
        started=started,
        start_sidecar=start_sidecar,
        dapr_env=dapr_env,
    )
    assert deliveries == EXPECTED  # RETRY: held in the sidecar and handed out again after the back-off
    async with asyncio.timeout(10):  # SUCCESS is committed just after the app answers
        while await committed(app_id, topic, partitions=2) != 2:  # noqa: ASYNC110 (another process)
            await asyncio.sleep(0.05)
