"""Invoke hop: grpc.health Check called directly on a grpc.aio app vs through the sidecar's gRPC proxy.

Same client, same server, one run: the difference is the sidecar hop (`dapr-app-id` metadata).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks._common import (
    Figure,
    Sidecar,
    app_process,
    free_port,
    latency_figures,
    percentiles_ms,
    report,
    stopping,
    timed_calls,
)
from benchmarks._profile import profiling

APP_ID = "bench-invoke"
N = 2000
WARMUP = 300
CONCURRENCY = 16
DURATION = 5.0


async def _latency(stub: health_pb2_grpc.HealthStub, metadata: tuple[tuple[str, str], ...]) -> list[int]:
    request = health_pb2.HealthCheckRequest()
    return await timed_calls(lambda _: stub.Check(request, metadata=metadata), N, WARMUP)


async def _throughput(stub: health_pb2_grpc.HealthStub, metadata: tuple[tuple[str, str], ...]) -> float:
    """Calls/s with CONCURRENCY calls in flight for DURATION seconds."""
    request = health_pb2.HealthCheckRequest()
    deadline = time.monotonic() + DURATION
    counts = [0] * CONCURRENCY

    async def worker(slot: int) -> None:
        while time.monotonic() < deadline:
            await stub.Check(request, metadata=metadata)
            counts[slot] += 1

    start = time.monotonic()
    await asyncio.gather(*(worker(i) for i in range(CONCURRENCY)))
    return sum(counts) / (time.monotonic() - start)


async def _measure(port: int, metadata: tuple[tuple[str, str], ...]) -> tuple[list[int], float]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return await _latency(stub, metadata), await _throughput(stub, metadata)


def run() -> list[Figure]:
    with tempfile.TemporaryDirectory(prefix="bench-invoke-") as tmp, stopping() as started:
        workdir = Path(tmp)
        app_port = free_port()
        app = app_process("health_app.py", workdir, {"APP_PORT": str(app_port)})
        started.append(app)
        app.spawn()
        sidecar = Sidecar(APP_ID, workdir, app_port=app_port)
        started.append(sidecar)
        sidecar.start()
        direct = asyncio.run(_measure(app_port, ()))
        with profiling(sidecar.pid, "invoke-sidecar"):
            proxied = asyncio.run(_measure(sidecar.grpc_port, (("dapr-app-id", APP_ID),)))
    return _figures(direct, proxied)


def _figures(direct: tuple[list[int], float], proxied: tuple[list[int], float]) -> list[Figure]:
    added = percentiles_ms(proxied[0])["p50"] - percentiles_ms(direct[0])["p50"]
    ratio = proxied[1] / direct[1]
    return [
        *latency_figures("direct Check latency", direct[0]),
        *latency_figures("via sidecar Check latency", proxied[0]),
        Figure("added latency at p50", added, "ms", "<= 1.0 ms", added <= 1.0),
        Figure(f"direct throughput ({CONCURRENCY} in flight)", direct[1], "calls/s"),
        Figure(f"via sidecar throughput ({CONCURRENCY} in flight)", proxied[1], "calls/s"),
        Figure("throughput ratio sidecar/direct", ratio, "x", ">= 0.6x", ratio >= 0.6),
    ]


if __name__ == "__main__":
    report("invoke hop", run())
