"""pubsub.sqlite: fan-out, leases, redelivery and durability, across real processes sharing one file."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from chassis.sidecar._errors import InvalidMetadata
from chassis.sidecar.components.pubsub_sqlite import SqlitePubSub

# Child process roles, run with `python -c CHILD <role> <db> ...`; they print one JSON/text line per step.
CHILD = """
import asyncio, json, sys, time
from pathlib import Path
from chassis.sidecar.components.pubsub_sqlite import SqlitePubSub

async def main(role, db, *args):
    broker = await SqlitePubSub.open("pubsub", {"connectionString": db, "processingTimeout": "60s"},
                                     app_id=role, base_dir=Path.cwd())
    if role == "publish":
        count = int(args[0])
        for i in range(count):
            await broker.publish("orders", json.dumps({"n": i}).encode(), {"i": str(i)})
        print(f"published {count}", flush=True)
        time.sleep(60)  # blocks the loop on purpose: the parent kills us here
    elif role == "consume":
        print("ready", flush=True)
        sys.stdin.readline()
        seqs = []
        while batch := await broker.claim(args[0], 3):
            seqs += [m.seq for m in batch]
            await asyncio.sleep(0.001)  # "work", so the two consumers overlap
        print(json.dumps(seqs), flush=True)
    await broker.close()

asyncio.run(main(*sys.argv[1:]))
"""


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


def spawn(procs: list[subprocess.Popen[str]], cwd: Path, *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, *args],
        cwd=cwd,
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


async def open_broker(base_dir: Path, **metadata: str) -> SqlitePubSub:
    return await SqlitePubSub.open(
        "pubsub", {"connectionString": "pubsub.db", **metadata}, app_id="test", base_dir=base_dir
    )


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[SqlitePubSub]:
    broker = await open_broker(tmp_path, processingTimeout="300ms")
    yield broker
    await broker.close()


def count_rows(db: Path, table: str) -> int:
    with sqlite3.connect(db) as conn:
        count: int = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        return count


async def test_publish_claim_ack(broker: SqlitePubSub, tmp_path: Path) -> None:
    await broker.subscribe("g", "t")
    await broker.publish("t", b'{"a": 1}', {"traceparent": "00-abc"})
    [message] = await broker.claim("g", 10)
    assert (message.topic, message.data, message.metadata, message.attempts) == (
        "t",
        b'{"a": 1}',
        {"traceparent": "00-abc"},
        1,
    )
    assert await broker.claim("g", 10) == []  # leased
    await broker.ack("g", message)
    await asyncio.sleep(0.35)  # longer than the lease: an acked message never comes back
    assert await broker.claim("g", 10) == []
    assert count_rows(tmp_path / "pubsub.db", "messages") == 0


async def test_claim_is_ordered_and_limited(broker: SqlitePubSub) -> None:
    await broker.subscribe("g", "t")
    for i in range(5):
        await broker.publish("t", str(i).encode(), {})
    first = await broker.claim("g", 3)
    rest = await broker.claim("g", 10)
    assert [m.data for m in first + rest] == [b"0", b"1", b"2", b"3", b"4"]
    assert [m.seq for m in first + rest] == sorted(m.seq for m in first + rest)
    assert await broker.claim("g", 0) == []


async def test_fan_out_to_every_group_of_the_topic(broker: SqlitePubSub, tmp_path: Path) -> None:
    await broker.subscribe("g1", "t")
    await broker.subscribe("g2", "t")
    await broker.subscribe("g2", "t")  # idempotent
    await broker.subscribe("g3", "other")
    await broker.publish("t", b"x", {})
    [m1], [m2] = await broker.claim("g1", 10), await broker.claim("g2", 10)
    assert m1.seq == m2.seq
    assert await broker.claim("g3", 10) == []
    await broker.ack("g1", m1)
    assert count_rows(tmp_path / "pubsub.db", "messages") == 1  # g2 still needs it
    await broker.ack("g2", m2)
    assert count_rows(tmp_path / "pubsub.db", "messages") == 0


async def test_new_group_gets_messages_from_now_on(broker: SqlitePubSub, tmp_path: Path) -> None:
    await broker.publish("t", b"before", {})
    assert count_rows(tmp_path / "pubsub.db", "messages") == 0  # nobody needed it
    await broker.subscribe("g", "t")
    await broker.publish("t", b"after", {})
    assert [m.data for m in await broker.claim("g", 10)] == [b"after"]


async def test_retry_redelivers_after_the_delay(broker: SqlitePubSub) -> None:
    await broker.subscribe("g", "t")
    await broker.publish("t", b"x", {})
    [message] = await broker.claim("g", 10)
    started = time.monotonic()
    await broker.retry("g", message, 0.2)
    assert await broker.claim("g", 10) == []
    async with asyncio.timeout(2):
        while not (again := await broker.claim("g", 10)):
            await broker.wait(1.0)
    assert time.monotonic() - started >= 0.2
    assert [(m.seq, m.attempts) for m in again] == [(message.seq, 2)]


async def test_expired_lease_is_redelivered_with_attempts_incremented(broker: SqlitePubSub) -> None:
    await broker.subscribe("g", "t")
    await broker.publish("t", b"x", {})
    [first] = await broker.claim("g", 10)  # the "consumer" dies without answering
    assert await broker.claim("g", 10) == []
    async with asyncio.timeout(2):
        while not (again := await broker.claim("g", 10)):
            await broker.wait(0.05)  # nothing wakes it early: lease expiry is only seen by polling
    assert [(m.seq, m.attempts) for m in again] == [(first.seq, 2)]


async def test_stale_retry_does_not_release_a_newer_lease(broker: SqlitePubSub) -> None:
    await broker.subscribe("g", "t")
    await broker.publish("t", b"x", {})
    [stale] = await broker.claim("g", 10)
    await asyncio.sleep(0.35)
    [current] = await broker.claim("g", 10)
    await broker.retry("g", stale, 0)  # the first consumer answers late
    assert await broker.claim("g", 10) == []
    assert current.attempts == 2


async def test_wait_returns_early_on_local_publish(broker: SqlitePubSub) -> None:
    waiter = asyncio.create_task(broker.wait(5))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    await broker.publish("t", b"x", {})
    await asyncio.wait_for(waiter, 1)
    assert time.monotonic() - started < 0.5


async def test_wait_returns_early_on_commit_by_another_connection(
    broker: SqlitePubSub, tmp_path: Path
) -> None:
    other = await open_broker(tmp_path)
    try:
        waiter = asyncio.create_task(broker.wait(5))
        await asyncio.sleep(0.05)
        await other.subscribe("g", "t")
        await asyncio.wait_for(waiter, 1)
    finally:
        await other.close()


async def test_wait_honours_the_timeout(broker: SqlitePubSub) -> None:
    started = time.monotonic()
    await broker.wait(0.1)
    assert 0.09 <= time.monotonic() - started < 0.5


async def test_max_len_approx_trims_the_oldest(tmp_path: Path) -> None:
    broker = await open_broker(tmp_path, maxLenApprox="10")
    try:
        await broker.subscribe("g", "t")
        for i in range(128):
            await broker.publish("t", str(i).encode(), {})
        left = await broker.claim("g", 1000)
    finally:
        await broker.close()
    assert 10 <= len(left) < 10 + 64
    assert left[-1].data == b"127"


@pytest.mark.parametrize(
    ("metadata", "field"),
    [
        ({"connectionString": ""}, "connectionString"),
        ({"connectionString": "x.db", "processingTimeout": "soon"}, "processingTimeout"),
        ({"connectionString": "x.db", "processingTimeout": "0s"}, "processingTimeout"),
        ({"connectionString": "x.db", "redeliverInterval": "1y"}, "redeliverInterval"),
        ({"connectionString": "x.db", "maxLenApprox": "-5"}, "maxLenApprox"),
    ],
)
async def test_invalid_metadata(tmp_path: Path, metadata: dict[str, str], field: str) -> None:
    with pytest.raises(InvalidMetadata) as caught:
        await SqlitePubSub.open("p", metadata, app_id="a", base_dir=tmp_path)
    assert caught.value.field == field


async def test_durations_from_metadata(tmp_path: Path) -> None:
    broker = await open_broker(tmp_path, processingTimeout="1m30s", redeliverInterval="250ms")
    await broker.close()
    assert (broker.processing_timeout, broker.redeliver_interval) == (90.0, 0.25)


async def test_fan_out_from_another_process(
    broker: SqlitePubSub, tmp_path: Path, children: list[subprocess.Popen[str]]
) -> None:
    await broker.subscribe("g1", "orders")
    await broker.subscribe("g2", "orders")
    publisher = spawn(children, tmp_path, "publish", "pubsub.db", "50")
    assert await asyncio.to_thread(read_line, publisher) == "published 50"
    for group in ("g1", "g2"):
        messages = await broker.claim(group, 100)
        assert [json.loads(m.data)["n"] for m in messages] == list(range(50))
        assert [m.metadata["i"] for m in messages] == [str(i) for i in range(50)]


async def test_competing_consumers_never_claim_the_same_message(
    tmp_path: Path, children: list[subprocess.Popen[str]]
) -> None:
    broker = await open_broker(tmp_path)
    try:
        await broker.subscribe("workers", "orders")
        for i in range(500):
            await broker.publish("orders", str(i).encode(), {})
    finally:
        await broker.close()
    consumers = [spawn(children, tmp_path, "consume", "pubsub.db", "workers") for _ in range(2)]
    for proc in consumers:
        assert await asyncio.to_thread(read_line, proc) == "ready"
    for proc in consumers:  # start both together so their claims interleave
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    claimed = [set(json.loads(await asyncio.to_thread(read_line, proc))) for proc in consumers]
    assert claimed[0].isdisjoint(claimed[1])
    assert len(claimed[0] | claimed[1]) == 500
    assert all(claimed), "both consumers should have won some claims"


async def test_published_message_survives_sigkill_of_the_publisher(
    tmp_path: Path, children: list[subprocess.Popen[str]]
) -> None:
    broker = await open_broker(tmp_path)
    await broker.subscribe("g", "orders")
    await broker.close()
    publisher = spawn(children, tmp_path, "publish", "pubsub.db", "20")
    assert await asyncio.to_thread(read_line, publisher) == "published 20"
    os.kill(publisher.pid, signal.SIGKILL)
    assert await asyncio.to_thread(publisher.wait, 10) == -signal.SIGKILL
    broker = await open_broker(tmp_path)
    try:
        messages = await broker.claim("g", 100)
    finally:
        await broker.close()
    assert [json.loads(m.data)["n"] for m in messages] == list(range(20))
