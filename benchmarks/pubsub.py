"""Publish p50 through the official async SDK and publish -> handler p50 to a grpc.aio subscriber app,
on the embedded profile (pubsub.sqlite) and, for comparison, the redis profile, in one run.
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

from benchmarks._common import (
    REDIS_COMPONENTS,
    Figure,
    latency_figures,
    percentiles_ms,
    pointed_at,
    report,
    start_pair,
    stopping,
    timed_calls,
)
from benchmarks._profile import profiling

N = 2000
WARMUP = 200
PACED = 500
PACE_S = 0.01  # one event in flight: the next publish waits well past the previous delivery


def _payload(phase: int) -> str:
    return json.dumps({"t": time.monotonic_ns(), "m": phase, "pad": "x" * 64})


async def _publish(topic: str) -> list[int]:
    """Sequential publishes (phase 0, latency of the SDK call), then paced ones (phase 1)."""
    async with DaprClient() as client:

        def publish(phase: int) -> object:
            return client.publish_event(
                "pubsub", topic, _payload(phase), data_content_type="application/json"
            )

        samples = await timed_calls(lambda _: publish(0), N, WARMUP)
        for _ in range(PACED):
            await publish(1)
            await asyncio.sleep(PACE_S)
    return samples


def _handler_latencies(record: Path, timeout: float = 15.0) -> list[int]:
    """Phase-1 publish -> handler latencies once all have arrived (or what arrived by `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [line.split() for line in record.read_text().splitlines() if line.startswith("1 ")]
        if len(lines) >= PACED or time.monotonic() > deadline:
            return [int(fields[1]) for fields in lines]
        time.sleep(0.1)


def _profile(workdir: Path, app_id: str, resources: list[Path]) -> tuple[list[int], list[int]]:
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    record = workdir / "received.txt"
    workdir.mkdir(parents=True, exist_ok=True)
    record.touch()
    try:
        with stopping() as started:
            sidecar = start_pair(
                started, workdir, app_id, resources, {"TOPIC": topic, "RECORD_FILE": str(record)}
            )
            with pointed_at(sidecar), profiling(sidecar.pid, f"pubsub-{workdir.name}-sidecar"):
                publish = asyncio.run(_publish(topic))
                return publish, _handler_latencies(record)
    finally:
        redis.Redis(host="127.0.0.1", port=6379).delete(topic)  # the redis profile's stream


def run() -> list[Figure]:
    with tempfile.TemporaryDirectory(prefix="bench-pubsub-") as tmp:
        workdir = Path(tmp)
        embedded = _profile(workdir / "embedded", "bench-pubsub", [])
        on_redis = _profile(workdir / "redis", f"bench-pubsub-{uuid.uuid4().hex[:8]}", [REDIS_COMPONENTS])
    return _figures("embedded", embedded, True) + _figures("redis", on_redis, False)


def _figures(label: str, measured: tuple[list[int], list[int]], targeted: bool) -> list[Figure]:
    publish, handler = measured
    pub50, hand50 = percentiles_ms(publish)["p50"], percentiles_ms(handler)["p50"]
    return [
        Figure(
            f"{label} publish p50",
            pub50,
            "ms",
            "<= 0.6 ms" if targeted else "",
            pub50 <= 0.6 if targeted else None,
        ),
        *latency_figures(f"{label} publish", publish)[1:],
        Figure(
            f"{label} publish -> handler p50",
            hand50,
            "ms",
            "<= 3 ms" if targeted else "",
            hand50 <= 3 if targeted else None,
        ),
        *latency_figures(f"{label} publish -> handler", handler)[1:],
        Figure(f"{label} handler deliveries seen", len(handler), f"of {PACED}"),
    ]


if __name__ == "__main__":
    report("publish and publish -> handler", run())
