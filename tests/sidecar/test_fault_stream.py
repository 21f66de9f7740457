"""Crash and fault: a stream of 10,000 events survives a killed sidecar and a restarted broker.

Issue 3 promises that nothing acknowledged to a publisher is ever lost. Each case publishes 10,000
events with the official async SDK through sidecar A, a recorder app beside sidecar B fsyncs every
delivered id, and mid-stream (after ~3,000 deliveries) one fault strikes: sidecar B is SIGKILLed and
restarted on its ports (embedded profile), a test-owned Redis is shut down and restarted on its AOF,
or the machine's RabbitMQ app is stopped and started. Only publishes the sidecar acknowledged count;
every one of them must reach the app at least once (duplicates are allowed and reported).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika
import grpc
import pytest
import redis
from dapr.aio.clients import DaprClient
from dapr.proto.runtime.v1 import dapr_pb2_grpc, metadata_pb2
from rabbitmq_support import RABBITMQ_URL, require_rabbitmq
from sidecar_support import APPS, REPO, child_env, port_accepts

from chassis.testing import ManagedProcess, Sidecar, free_port, wait_for

EVENTS = 10_000
FAULT_AFTER = 3_000  # deliveries before the fault strikes
WINDOW = 2_000  # the publisher stays at most this far ahead of deliveries, so the fault lands mid-stream
BATCH = 100  # publishes in flight at once
CASE_TIMEOUT = 120.0
PUBLISH_TIMEOUT = 10.0
OUTAGE = 2.0  # how long a broker stays down: long enough for publishes to hit the outage
PROFILES = REPO / "dapr" / "components"

Fault = Callable[[], None]


# ---- the subscriber's durable record ---------------------------------------------------------------


@dataclass
class Record:
    """The ids the recorder app fsynced, read incrementally (the file only grows)."""

    path: Path
    ids: Counter[str] = field(default_factory=Counter)
    _offset: int = 0

    def refresh(self) -> int:
        """Read the lines appended since the last call; return the number of distinct ids."""
        if self.path.exists():
            with self.path.open("rb") as file:
                file.seek(self._offset)
                chunk = file.read()
            complete = chunk[: chunk.rfind(b"\n") + 1]  # a half-written last line waits for next time
            self._offset += len(complete)
            self.ids.update(complete.decode().split())
        return len(self.ids)


# ---- processes -------------------------------------------------------------------------------------


def subscribed(sidecar: Sidecar, topic: str) -> bool:
    """The sidecar holds the app's subscription to `topic` (GetMetadata)."""
    try:
        with grpc.insecure_channel(f"127.0.0.1:{sidecar.grpc_port}") as channel:
            stub = dapr_pb2_grpc.DaprStub(channel)  # type: ignore[no-untyped-call]
            reply = stub.GetMetadata(metadata_pb2.GetMetadataRequest(), timeout=2)
    except grpc.RpcError:
        return False
    return any(s.topic == topic for s in reply.subscriptions)


@dataclass
class Stream:
    """Publisher sidecar A, subscriber sidecar B and the recorder app, sharing one work directory."""

    publisher: Sidecar
    subscriber: Sidecar
    app: ManagedProcess
    topic: str
    record: Record


@contextlib.contextmanager
def stream(workdir: Path, resources: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stream]:
    """Start the three processes (on a fresh topic); stop every one of them afterwards."""
    topic = f"stream-{uuid.uuid4().hex[:12]}"
    record = Record(workdir / "delivered.txt")
    app_port = free_port()
    publisher = Sidecar("publisher", workdir, resources=[resources])
    subscriber = Sidecar("recorder", workdir, app_port=app_port, resources=[resources])
    env = child_env({"APP_PORT": str(app_port), "TOPIC": topic, "RECORD_FILE": str(record.path)})
    app = ManagedProcess(
        "app-recorder", [sys.executable, str(APPS / "stream_recorder.py")], cwd=workdir, env=env
    )
    started: list[ManagedProcess] = []
    try:
        for process in (app, subscriber, publisher):
            started.append(process)
            process.spawn()
        app.wait_until(lambda: port_accepts(app_port), 30, "listening")
        for sidecar in (subscriber, publisher):
            sidecar.wait_until(sidecar.healthy, 30, "healthy")
        subscriber.wait_until(lambda: subscribed(subscriber, topic), 30, f"subscribed to {topic}")
        for key, value in publisher.app_env().items():
            monkeypatch.setenv(key, value)  # the SDK health-checks DAPR_HTTP_PORT before its first call
        yield Stream(publisher, subscriber, app, topic, record)
    finally:
        for process in reversed(started):
            process.stop()


# ---- the stream: publish, strike mid-way, wait for every acknowledged id --------------------------


@dataclass
class Outcome:
    """What the publisher saw and when the fault struck."""

    acked: set[str] = field(default_factory=set)
    failures: Counter[str] = field(default_factory=Counter)  # failed publish attempts, by error
    fault_at: int = -1  # distinct deliveries when the fault struck
    fault_seconds: float = 0.0
    elapsed: float = 0.0


def remaining(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


async def publish_one(client: DaprClient, topic: str, event_id: str) -> None:
    publish = client.publish_event(
        "pubsub",
        topic,
        event_id,
        data_content_type="text/plain",
        publish_metadata={"cloudevent.id": event_id},
    )
    await asyncio.wait_for(publish, PUBLISH_TIMEOUT)


async def publish_all(run: Stream, outcome: Outcome, deadline: float) -> None:
    """Publish every id in concurrent batches; a failed publish is retried, never counted as acked."""
    pending = [f"ev-{n:05d}" for n in range(EVENTS)]
    async with DaprClient() as client:  # DAPR_GRPC_PORT: sidecar A, as an app beside it would
        while pending and time.monotonic() < deadline:
            batch, pending = pending[:BATCH], pending[BATCH:]
            await wait_for(
                lambda: len(outcome.acked) - run.record.refresh() <= WINDOW,
                timeout=remaining(deadline),
                what=f"deliveries within {WINDOW} of the publisher",
            )
            results = await asyncio.gather(
                *(publish_one(client, run.topic, i) for i in batch), return_exceptions=True
            )
            for event_id, result in zip(batch, results, strict=True):
                if isinstance(result, BaseException):
                    outcome.failures[type(result).__name__] += 1
                    pending.append(event_id)  # retried after the rest
                else:
                    outcome.acked.add(event_id)
            if len(pending) > 0 and any(isinstance(r, BaseException) for r in results):
                await asyncio.sleep(0.2)  # the fault is on: back off a little before the next batch
    assert not pending, (
        f"{len(pending)} events never acknowledged within {CASE_TIMEOUT:g}s: {outcome.failures}"
    )


async def strike(run: Stream, fault: Fault, outcome: Outcome, deadline: float) -> None:
    """Once FAULT_AFTER ids are delivered, run the fault (break, then heal) off the event loop."""
    await wait_for(
        lambda: run.record.refresh() >= FAULT_AFTER,
        timeout=remaining(deadline),
        what="deliveries before the fault",
    )
    outcome.fault_at = len(run.record.ids)
    started = time.monotonic()
    await asyncio.to_thread(fault)
    outcome.fault_seconds = time.monotonic() - started


async def run_stream(run: Stream, fault: Fault) -> Outcome:
    outcome = Outcome()
    started = time.monotonic()
    deadline = started + CASE_TIMEOUT
    await asyncio.gather(publish_all(run, outcome, deadline), strike(run, fault, outcome, deadline))
    with contextlib.suppress(TimeoutError):  # `check` then names what is missing
        await wait_for(
            lambda: run.record.refresh() and outcome.acked <= run.record.ids.keys(), remaining(deadline)
        )
    outcome.elapsed = time.monotonic() - started
    return outcome


def check(run: Stream, outcome: Outcome) -> None:
    run.record.refresh()
    lost = sorted(outcome.acked - run.record.ids.keys())
    duplicates = sum(count - 1 for count in run.record.ids.values())
    summary = (
        f"{len(outcome.acked)} acknowledged, {len(run.record.ids)} distinct delivered,"
        f" {duplicates} duplicates, failed publish attempts {dict(outcome.failures)},"
        f" fault struck at {outcome.fault_at} deliveries and took {outcome.fault_seconds:.1f}s,"
        f" stream took {outcome.elapsed:.1f}s"
    )
    print(summary)  # shown with -s / on failure: the runtime and duplicates of each fault
    assert outcome.fault_at < EVENTS, f"the fault struck after the stream: {summary}"
    assert not lost, f"{len(lost)} acknowledged events never delivered (first {lost[:10]}): {summary}"


# ---- the faults ------------------------------------------------------------------------------------


def restart_sidecar(sidecar: Sidecar) -> Fault:
    """SIGKILL the subscriber's sidecar, then start it again on the same ports and SQLite files."""

    def fault() -> None:
        sidecar.kill()
        sidecar.spawn()
        sidecar.wait_until(sidecar.healthy, 30, "healthy after the restart")

    return fault


@dataclass
class RedisServer:
    """A test-owned redis-server with an AOF fsynced on every write, restartable on its port and dir."""

    workdir: Path
    port: int = field(default_factory=free_port)
    process: ManagedProcess | None = None

    def start(self) -> None:
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.workdir)]
        self.process = ManagedProcess("redis-server", argv, cwd=self.workdir, env=child_env())
        self.process.spawn()
        self.process.wait_until(lambda: port_accepts(self.port), 30, "accepting connections")

    def restart(self) -> None:
        """SHUTDOWN (the AOF is flushed), stay down for OUTAGE, start again from the same files."""
        assert self.process is not None
        with redis.Redis(host="127.0.0.1", port=self.port) as client:
            client.shutdown(nosave=False)
        self.process.process.wait(30)
        self.process.stop()  # reaped: closes its log before the next server takes over
        time.sleep(OUTAGE)  # the outage itself: publishes and deliveries meet a dead broker
        self.start()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


def redis_resources(folder: Path, port: int) -> Path:
    """The redis profile's YAML, pointed at the test-owned server."""
    folder.mkdir(parents=True)
    for source in (PROFILES / "redis").glob("*.yaml"):
        text = source.read_text().replace("localhost:6379", f"127.0.0.1:{port}")
        assert f"127.0.0.1:{port}" in text, f"no redisHost to point at the test server in {source}"
        (folder / source.name).write_text(text)
    return folder


def restart_rabbitmq(ctl: str) -> Fault:
    def fault() -> None:
        subprocess.run([ctl, "-q", "stop_app"], check=True, timeout=60)
        try:
            time.sleep(OUTAGE)  # the outage itself
        finally:
            subprocess.run([ctl, "-q", "start_app"], check=True, timeout=60)

    return fault


async def delete_rabbitmq_topic(topic: str, queue: str) -> None:
    connection = await aio_pika.connect(RABBITMQ_URL)
    async with connection:
        channel = await connection.channel()
        await channel.queue_delete(queue)
        await channel.exchange_delete(topic)


def rabbitmq_resources(folder: Path) -> Path:
    """pubsub.rabbitmq from the postgresql-rabbitmq profile, with the embedded SQLite state store."""
    folder.mkdir(parents=True)
    shutil.copy(PROFILES / "postgresql-rabbitmq" / "pubsub.yaml", folder / "pubsub.yaml")
    shutil.copy(PROFILES / "embedded" / "statestore.yaml", folder / "statestore.yaml")
    return folder


# ---- the cases -------------------------------------------------------------------------------------


def case_embedded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    resources = tmp_path / "components"
    shutil.copytree(PROFILES / "embedded", resources)
    with stream(tmp_path, resources, monkeypatch) as run:
        outcome = asyncio.run(run_stream(run, restart_sidecar(run.subscriber)))
        check(run, outcome)


def case_redis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not on PATH (apt-get install redis-server)")
    server = RedisServer(tmp_path / "redis")
    server.workdir.mkdir()
    try:
        server.start()
        with stream(tmp_path, redis_resources(tmp_path / "components", server.port), monkeypatch) as run:
            outcome = asyncio.run(run_stream(run, server.restart))
            check(run, outcome)
    finally:
        server.stop()


def case_rabbitmq(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_rabbitmq()
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        pytest.skip("rabbitmqctl is not on PATH: the test cannot restart RabbitMQ")
    queue = ""
    try:
        with stream(tmp_path, rabbitmq_resources(tmp_path / "components"), monkeypatch) as run:
            queue = f"recorder-{run.topic}"
            outcome = asyncio.run(run_stream(run, restart_rabbitmq(ctl)))
            check(run, outcome)
    finally:
        if queue:
            asyncio.run(delete_rabbitmq_topic(queue.removeprefix("recorder-"), queue))


@pytest.mark.serial
@pytest.mark.timeout(CASE_TIMEOUT + 120)
@pytest.mark.parametrize(
    "case",
    [
        pytest.param(case_embedded, id="embedded-sidecar-sigkill"),
        pytest.param(case_redis, id="redis-restart"),
        pytest.param(case_rabbitmq, id="rabbitmq-restart"),
    ],
)
def test_acknowledged_events_survive_the_fault(
    case: Callable[[Path, pytest.MonkeyPatch], None], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    case(tmp_path, monkeypatch)
