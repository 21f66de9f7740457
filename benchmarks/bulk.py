"""Delivery rate on the redis profile: a backlog drained by a bulkSubscribe subscriber (OnBulkTopicEvent)
beside the same backlog drained one event per OnTopicEvent, in one run.

The backlog is bulk-published (SDK `publish_events`) through a second sidecar before the subscriber's
sidecar starts; its consumer group starts at 0, so it reads the whole stream. The rate is measured from
the subscriber's own receive times (first delivery to last).
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
import uuid
from pathlib import Path

import redis
from dapr.aio.clients import DaprClient

from benchmarks._common import REDIS_COMPONENTS, Figure, Sidecar, pointed_at, report, start_pair, stopping
from benchmarks._profile import profiling

SINGLE_TOTAL = 5_000
CHUNK = 500
# (maxMessagesCount, backlog): 500 is a typical bulk setting; 32 matches the sidecar's in-flight cap.
BULK_RUNS = ((500, 5_000), (32, 10_000))
TIMEOUT = 40.0


async def _publish_backlog(topic: str, total: int) -> float:
    """Bulk-publish `total` small JSON events; return the publish rate (events/s)."""
    start = time.monotonic()
    async with DaprClient() as client:
        for first in range(0, total, CHUNK):
            data = [json.dumps({"t": 0, "n": n}) for n in range(first, min(first + CHUNK, total))]
            reply = await client.publish_events("pubsub", topic, data, data_content_type="application/json")
            assert not reply.failed_entries, reply.failed_entries
    return total / (time.monotonic() - start)


def _received(record: Path, bulk: bool) -> list[tuple[int, int]]:
    """(events, monotonic_ns) per delivery recorded so far."""
    rows = [line.split() for line in record.read_text().splitlines()]
    return [(int(r[0]), int(r[1])) if bulk else (1, int(r[2])) for r in rows if len(r) == (2 if bulk else 3)]


def _drain_rate(record: Path, total: int, bulk: bool) -> tuple[float, int]:
    """Events/s from the first delivery to the one completing `total` (or all seen by TIMEOUT)."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        rows = _received(record, bulk)
        seen = sum(n for n, _ in rows)
        if seen >= total or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if len(rows) < 2:
        return 0.0, seen
    first_events, first_at = rows[0]
    last_at = max(at for _, at in rows)
    return (seen - first_events) / ((last_at - first_at) / 1e9), seen


def _drain(workdir: Path, publisher: Sidecar, total: int, bulk_count: int) -> tuple[float, float, int]:
    bulk = bulk_count > 0
    topic = f"bench-bulk-{uuid.uuid4().hex[:8]}"
    record = workdir / f"{topic}.txt"
    workdir.mkdir(parents=True, exist_ok=True)
    record.touch()
    env = {
        "TOPIC": topic,
        "RECORD_FILE": str(record),
        "BULK": "1" if bulk else "0",
        "BULK_COUNT": str(bulk_count),
    }
    try:
        with pointed_at(publisher):
            publish_rate = asyncio.run(_publish_backlog(topic, total))
        with stopping() as started:
            sidecar = start_pair(
                started, workdir, f"bench-sub-{uuid.uuid4().hex[:8]}", [REDIS_COMPONENTS], env
            )
            with profiling(sidecar.pid, f"delivery-{workdir.name}-sidecar"):
                rate, seen = _drain_rate(record, total, bulk)
    finally:
        redis.Redis(host="127.0.0.1", port=6379).delete(topic)  # leave the shared Redis as found
    return publish_rate, rate, seen


def run() -> list[Figure]:
    with tempfile.TemporaryDirectory(prefix="bench-bulk-") as tmp, stopping() as started:
        workdir = Path(tmp)
        publisher = Sidecar(
            f"bench-pub-{uuid.uuid4().hex[:8]}", workdir / "pub", resources=[REDIS_COMPONENTS]
        )
        started.append(publisher)
        publisher.start()
        bulk = [
            (count, _drain(workdir / f"bulk{count}", publisher, total, count)) for count, total in BULK_RUNS
        ]
        single = _drain(workdir / "single", publisher, SINGLE_TOTAL, 0)
    return _figures(bulk, single)


def _figures(
    bulk: list[tuple[int, tuple[float, float, int]]], single: tuple[float, float, int]
) -> list[Figure]:
    figures = [Figure("bulk publish rate (SDK publish_events, 500/call)", bulk[0][1][0], "events/s")]
    for count, (_, rate, seen) in bulk:
        name = f"bulk delivery rate (bulkSubscribe, maxMessagesCount {count})"
        figures.append(Figure(name, rate, "events/s", ">= 10,000/s", rate >= 10_000))
        figures.append(Figure(f"events delivered (maxMessagesCount {count})", seen, "events"))
    best = max(rate for _, (_, rate, _) in bulk)
    return [
        *figures,
        Figure("single delivery rate (OnTopicEvent)", single[1], "events/s"),
        Figure("single events delivered", single[2], f"of {SINGLE_TOTAL}"),
        Figure("best bulk/single delivery ratio", best / single[1] if single[1] else 0.0, "x"),
    ]


if __name__ == "__main__":
    report("bulk delivery on Redis", run())
