"""Every broker driver against the same cases: fan-out, leases, redelivery, waiting and durability.

A new `pubsub.*` driver is added to the `backend` fixture and must pass this file unchanged; what only
one driver does (SQLite's rows, Redis' streams and groups) is tested in its own file. Cross-process
cases run real child processes against the same storage.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
from nats_support import NATS_URL, delete_stream, require_nats, unique_stream
from rabbitmq_support import RABBITMQ_URL, delete_marked, require_rabbitmq
from rabbitmq_support import unique as rabbitmq_unique
from redis_support import REDIS_HOST, delete_containing, require_redis, unique

from chassis.sidecar._errors import ComponentError, InvalidMetadata
from chassis.sidecar._resources import DRIVERS
from chassis.sidecar.components import PubSub, pubsub_sqlite

# Child process roles, run as `python -c CHILD <role> <driver> <metadata JSON> <topic> ...`; they
# print one JSON/text line per step.
CHILD = """
import asyncio, json, sys, time
from pathlib import Path
from chassis.sidecar._resources import DRIVERS

async def main(role, kind, metadata, topic, *args):
    metadata = json.loads(metadata) | {"processingTimeout": "60s"}
    broker = await DRIVERS[kind].open("pubsub", metadata, app_id=role, base_dir=Path.cwd())
    if role == "publish":
        count = int(args[0])
        for i in range(count):
            await broker.publish(topic, json.dumps({"n": i}).encode(), {"i": str(i)})
        print(f"published {count}", flush=True)
        time.sleep(60)  # blocks the loop on purpose: the parent kills us here
    elif role == "consume":
        await broker.subscribe(args[0], topic)  # every process names the topics it consumes
        print("ready", flush=True)
        sys.stdin.readline()
        seqs = []
        while batch := await broker.claim(args[0], 3):
            seqs += [m.seq for m in batch]
            await asyncio.sleep(0.001)  # "work", so the two consumers overlap
        print(json.dumps(seqs), flush=True)
        # Stay connected until told: brokers that track deliveries per connection (RabbitMQ) give
        # unacknowledged messages back on close, and the other consumer would claim them again.
        sys.stdin.readline()
    await broker.close()

asyncio.run(main(*sys.argv[1:]))
"""


MAX_LEN = "<the driver's backlog bound>"


@dataclass
class Backend:
    """How the shared cases open one driver."""

    kind: str
    metadata: dict[str, str]
    base_dir: Path
    marker: str  # in every topic a case uses, so a shared server can be cleaned up
    trim_slack: int  # how far beyond maxLenApprox the backlog may grow before the driver trims
    max_len: str | None = "maxLenApprox"  # the driver's metadata bounding the backlog (None: none)
    # Why instances of one group cannot split its messages between them (None: they can).
    no_competing: str | None = None

    def topic(self, label: str = "t") -> str:
        return f"{label}-{self.marker}"

    async def open(self, *, app_id: str = "test", **metadata: str) -> PubSub:
        broker = await DRIVERS[self.kind].open(
            "pubsub", self.metadata | metadata, app_id=app_id, base_dir=self.base_dir
        )
        return cast(PubSub, broker)


@pytest.fixture(scope="module")
def rabbitmq_cleanup() -> Iterator[None]:
    """Listing RabbitMQ's queues is slow: delete this module's exchanges and queues once, at its end."""
    yield
    delete_marked()


BROKERS = ["sqlite", "redis", "rabbitmq", "jetstream", "kafka", "mqtt3"]


@pytest.fixture(params=[f"pubsub.{broker}" for broker in BROKERS])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    marker = unique("topic")
    if request.param == "pubsub.kafka":
        from kafka_support import BROKERS, ensure_tansu

        ensure_tansu()
        # Kafka groups span topics: {appID}-<marker> keeps concurrent tests' groups apart. Tansu waits
        # about half a session for members to join, so a short one keeps each subscribe near 1s. Two
        # partitions, so competing instances of a group both get some.
        metadata = {
            "brokers": BROKERS, "consumerGroup": f"{{appID}}-{marker}", "partitionCount": "2",
            "sessionTimeout": "2s", "heartbeatInterval": "300ms",
        }  # fmt: skip
        yield Backend("pubsub.kafka", metadata, tmp_path, marker, 0, None)  # no backlog bound
        return
    if request.param == "pubsub.mqtt3":
        from mqtt_support import MQTT_URL, forget_sessions, require_mosquitto

        require_mosquitto()
        # A group's session (client id) is `<consumerID>-<group>`: this test's own, so parallel tests
        # never take each other's over. Sessions are persistent: forgotten at the end.
        metadata = {"url": MQTT_URL, "consumerID": marker}
        one_session = "a group is one MQTT session (its consumerID), which instances take from each other"
        yield Backend("pubsub.mqtt3", metadata, tmp_path, marker, 0, None, one_session)  # no backlog bound
        forget_sessions(*(f"{marker}-{group}" for group in ("g", "g1", "g2", "g3", "workers")))
        return
    if request.param == "pubsub.sqlite":
        metadata = {"connectionString": "pubsub.db"}
        yield Backend("pubsub.sqlite", metadata, tmp_path, marker, pubsub_sqlite.TRIM_EVERY)
        return
    if request.param == "pubsub.rabbitmq":
        require_rabbitmq()
        request.getfixturevalue("rabbitmq_cleanup")
        # x-max-length drops the oldest message at once: no slack.
        metadata = {"connectionString": RABBITMQ_URL}
        yield Backend("pubsub.rabbitmq", metadata, tmp_path, rabbitmq_unique("topic"), 1, "maxLen")
        return
    if request.param == "pubsub.jetstream":
        require_nats()
        metadata = {"natsURL": NATS_URL, "streamName": unique_stream()}
        yield Backend("pubsub.jetstream", metadata, tmp_path, marker, 0, None)  # no backlog bound
        delete_stream(metadata["streamName"])
        return
    require_redis()
    # Redis trims whole stream nodes: stream-node-max-entries, 100 by default.
    yield Backend("pubsub.redis", {"redisHost": REDIS_HOST}, tmp_path, marker, 100)
    delete_containing(marker)


@pytest.fixture
async def broker(backend: Backend) -> AsyncIterator[PubSub]:
    broker = await backend.open(processingTimeout="300ms")
    yield broker
    await broker.close()


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[str]]]:
    """Child processes started by a test; every one is killed and reaped at the end."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()


def spawn(
    procs: list[subprocess.Popen[str]], backend: Backend, role: str, *args: str
) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, role, backend.kind, json.dumps(backend.metadata), *args],
        cwd=backend.base_dir,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    procs.append(proc)
    return proc


def read_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, f"child exited with {proc.wait(timeout=10)} before answering"
    return line.strip()


async def test_publish_claim_ack(broker: PubSub, backend: Backend) -> None:
    topic = backend.topic()
    await broker.subscribe("g", topic)
    await broker.publish(topic, b'{"a": 1}', {"traceparent": "00-abc"})
    [message] = await broker.claim("g", 10)
    assert (message.topic, message.data, message.metadata, message.attempts) == (
        topic,
        b'{"a": 1}',
        {"traceparent": "00-abc"},
        1,
    )
    assert await broker.claim("g", 10) == []  # leased
    await broker.ack("g", message)
    await asyncio.sleep(0.35)  # longer than the lease: an acked message never comes back
    assert await broker.claim("g", 10) == []


async def test_claim_is_ordered_and_limited(broker: PubSub, backend: Backend) -> None:
    topic = backend.topic()
    await broker.subscribe("g", topic)
    for i in range(5):
        await broker.publish(topic, str(i).encode(), {})
    first = await broker.claim("g", 3)
    rest = await broker.claim("g", 10)
    assert [m.data for m in first + rest] == [b"0", b"1", b"2", b"3", b"4"]
    assert [m.seq for m in first + rest] == sorted(m.seq for m in first + rest)
    assert await broker.claim("g", 0) == []


async def test_fan_out_to_every_group_of_the_topic(broker: PubSub, backend: Backend) -> None:
    topic, other = backend.topic(), backend.topic("other")
    await broker.subscribe("g1", topic)
    await broker.subscribe("g2", topic)
    await broker.subscribe("g2", topic)  # idempotent
    await broker.subscribe("g3", other)
    await broker.publish(topic, b"x", {})
    [m1], [m2] = await broker.claim("g1", 10), await broker.claim("g2", 10)
    assert m1.seq == m2.seq
    assert await broker.claim("g3", 10) == []
    await broker.ack("g1", m1)
    await broker.ack("g2", m2)


async def test_retry_redelivers_after_the_delay(broker: PubSub, backend: Backend) -> None:
    topic = backend.topic()
    await broker.subscribe("g", topic)
    await broker.publish(topic, b"x", {})
    [message] = await broker.claim("g", 10)
    started = time.monotonic()
    await broker.retry("g", message, 0.2)
    assert await broker.claim("g", 10) == []
    async with asyncio.timeout(2):
        while not (again := await broker.claim("g", 10)):
            await broker.wait(1.0)
    assert time.monotonic() - started >= 0.2
    assert [(m.seq, m.attempts) for m in again] == [(message.seq, 2)]


async def test_expired_lease_is_redelivered_with_attempts_incremented(
    broker: PubSub, backend: Backend
) -> None:
    topic = backend.topic()
    await broker.subscribe("g", topic)
    await broker.publish(topic, b"x", {})
    [first] = await broker.claim("g", 10)  # the "consumer" dies without answering
    assert await broker.claim("g", 10) == []
    async with asyncio.timeout(2):
        while not (again := await broker.claim("g", 10)):
            await broker.wait(0.05)  # nothing wakes it early: lease expiry is only seen by polling
    assert [(m.seq, m.attempts) for m in again] == [(first.seq, 2)]


async def test_stale_retry_does_not_release_a_newer_lease(broker: PubSub, backend: Backend) -> None:
    topic = backend.topic()
    await broker.subscribe("g", topic)
    await broker.publish(topic, b"x", {})
    [stale] = await broker.claim("g", 10)
    await asyncio.sleep(0.35)
    [current] = await broker.claim("g", 10)
    await broker.retry("g", stale, 0)  # the first consumer answers late
    assert await broker.claim("g", 10) == []
    assert current.attempts == 2


async def test_wait_returns_early_on_local_publish(broker: PubSub, backend: Backend) -> None:
    waiter = asyncio.create_task(broker.wait(5))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    await broker.publish(backend.topic(), b"x", {})
    await asyncio.wait_for(waiter, 1)
    assert time.monotonic() - started < 0.5


async def test_wait_returns_early_on_publish_by_another_instance(broker: PubSub, backend: Backend) -> None:
    topic = backend.topic()
    await broker.subscribe("g", topic)
    other = await backend.open(app_id="other")
    try:
        waiter = asyncio.create_task(broker.wait(5))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        await other.publish(topic, b"x", {})
        await asyncio.wait_for(waiter, 1)
        assert time.monotonic() - started < 0.5
    finally:
        await other.close()
    assert [m.data for m in await broker.claim("g", 10)] == [b"x"]


async def test_wait_honours_the_timeout(broker: PubSub, backend: Backend) -> None:
    await broker.subscribe("g", backend.topic())  # a subscribed broker may block on the server
    started = time.monotonic()
    await broker.wait(0.1)
    assert 0.09 <= time.monotonic() - started < 0.5


async def test_max_len_approx_trims_the_oldest(backend: Backend) -> None:
    if backend.max_len is None:
        pytest.skip(f"{backend.kind} has no backlog bound")
    topic = backend.topic()
    broker = await backend.open(**{backend.max_len: "10"})
    try:
        await broker.subscribe("g", topic)
        for i in range(128):
            await broker.publish(topic, str(i).encode(), {})
        left = await broker.claim("g", 1000)
    finally:
        await broker.close()
    assert 10 <= len(left) < 10 + backend.trim_slack
    assert left[-1].data == b"127"


@pytest.mark.parametrize(
    ("metadata", "field"),
    [
        ({"processingTimeout": "soon"}, "processingTimeout"),
        ({"processingTimeout": "0s"}, "processingTimeout"),
        ({"redeliverInterval": "1y"}, "redeliverInterval"),
        ({MAX_LEN: "-5"}, MAX_LEN),
    ],
)
async def test_invalid_metadata(backend: Backend, metadata: dict[str, str], field: str) -> None:
    if field == MAX_LEN:  # each driver names its backlog bound its own way
        if backend.max_len is None:
            pytest.skip(f"{backend.kind} has no backlog bound")
        metadata, field = {backend.max_len: metadata[MAX_LEN]}, backend.max_len
    with pytest.raises(InvalidMetadata) as caught:
        await backend.open(**metadata)
    assert caught.value.field == field


async def test_durations_from_metadata(backend: Backend) -> None:
    broker: Any = await backend.open(processingTimeout="1m30s", redeliverInterval="250ms")
    await broker.close()
    assert (broker.processing_timeout, broker.redeliver_interval) == (90.0, 0.25)


async def test_closed_broker_raises_component_error(backend: Backend) -> None:
    broker = await backend.open()
    await broker.close()
    await broker.close()  # idempotent
    with pytest.raises(ComponentError, match="closed"):
        await broker.publish(backend.topic(), b"x", {})


async def test_fan_out_from_another_process(
    broker: PubSub, backend: Backend, children: list[subprocess.Popen[str]]
) -> None:
    topic = backend.topic("orders")
    await broker.subscribe("g1", topic)
    await broker.subscribe("g2", topic)
    publisher = spawn(children, backend, "publish", topic, "50")
    assert await asyncio.to_thread(read_line, publisher) == "published 50"
    for group in ("g1", "g2"):
        messages = await broker.claim(group, 100)
        assert [json.loads(m.data)["n"] for m in messages] == list(range(50))
        assert [m.metadata["i"] for m in messages] == [str(i) for i in range(50)]


async def test_competing_consumers_never_claim_the_same_message(
    backend: Backend, children: list[subprocess.Popen[str]]
) -> None:
    if backend.no_competing is not None:
        pytest.skip(f"{backend.kind}: {backend.no_competing}")
    topic = backend.topic("orders")
    broker = await backend.open()
    try:
        await broker.subscribe("workers", topic)
        for i in range(500):
            await broker.publish(topic, str(i).encode(), {})
    finally:
        await broker.close()
    consumers = [spawn(children, backend, "consume", topic, "workers") for _ in range(2)]
    for proc in consumers:
        assert await asyncio.to_thread(read_line, proc) == "ready"
    for proc in consumers:  # start both together so their claims interleave
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    claimed = [set(json.loads(await asyncio.to_thread(read_line, proc))) for proc in consumers]
    for proc in consumers:
        assert proc.stdin is not None
        proc.stdin.write("done\n")
        proc.stdin.flush()
    assert claimed[0].isdisjoint(claimed[1])
    assert len(claimed[0] | claimed[1]) == 500
    assert all(claimed), "both consumers should have won some claims"


async def test_published_message_survives_sigkill_of_the_publisher(
    backend: Backend, children: list[subprocess.Popen[str]]
) -> None:
    topic = backend.topic("orders")
    broker = await backend.open()
    await broker.subscribe("g", topic)
    await broker.close()
    publisher = spawn(children, backend, "publish", topic, "20")
    assert await asyncio.to_thread(read_line, publisher) == "published 20"
    os.kill(publisher.pid, signal.SIGKILL)
    assert await asyncio.to_thread(publisher.wait, 10) == -signal.SIGKILL
    broker = await backend.open()
    try:
        await broker.subscribe("g", topic)  # a restarted subscriber names its topics again
        messages = await broker.claim("g", 100)
    finally:
        await broker.close()
    assert [json.loads(m.data)["n"] for m in messages] == list(range(20))
