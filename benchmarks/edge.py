"""A service's edge: its own RPC served by a bare grpc.aio server vs by chassis.Service, in one run.

No sidecar: the client calls the app's port, so the difference is what the chassis adds to every
call a service serves (tracing interceptor, protovalidate check, middleware chain).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

import grpc

from benchmarks._common import (
    REPO,
    Figure,
    app_process,
    free_port,
    latency_figures,
    percentiles_ms,
    stopping,
    timed_calls,
)
from chassis._protogen import ensure_generated
from chassis.testing import wait_for

# The contracts, compiled as the tests and launchers compile them, for this process and the app's.
GEN = ensure_generated(REPO)
sys.path.insert(0, str(GEN))
from mooc.assessment.v1 import assessment_pb2 as api  # noqa: E402
from mooc.assessment.v1 import assessment_pb2_grpc as api_grpc  # noqa: E402

MODES = ("bare", "traced", "chassis", "middleware")
N = 3000
WARMUP = 300
CONCURRENCY = 16
DURATION = 4.0
REQUEST = api.GetSubmissionRequest(submission_id="s-1")


async def _serving(port: int) -> bool:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            await api_grpc.AssessmentServiceStub(channel).GetSubmission(REQUEST, timeout=1)
        except grpc.aio.AioRpcError:
            return False
    return True


async def _measure(port: int) -> tuple[list[int], float]:
    await wait_for(lambda: _serving(port), timeout=30, what=f"the edge app on {port}")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = api_grpc.AssessmentServiceStub(channel)
        latency = await timed_calls(lambda _: stub.GetSubmission(REQUEST), N, WARMUP)
        deadline = time.monotonic() + DURATION
        counts = [0] * CONCURRENCY

        async def worker(slot: int) -> None:
            while time.monotonic() < deadline:
                await stub.GetSubmission(REQUEST)
                counts[slot] += 1

        start = time.monotonic()
        await asyncio.gather(*(worker(i) for i in range(CONCURRENCY)))
        return latency, sum(counts) / (time.monotonic() - start)


def run() -> list[Figure]:
    measured: dict[str, tuple[list[int], float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-edge-") as tmp, stopping() as started:
        for mode in MODES:
            port = free_port()
            app = app_process(
                "edge_app.py", Path(tmp), {"APP_PORT": str(port), "EDGE_MODE": mode, "PYTHONPATH": str(GEN)}
            )
            started.append(app)
            app.spawn()
            measured[mode] = asyncio.run(_measure(port))
            app.stop()
    return _figures(measured)


def _figures(measured: dict[str, tuple[list[int], float]]) -> list[Figure]:
    bare_p50 = percentiles_ms(measured["bare"][0])["p50"]
    figures: list[Figure] = []
    for mode in MODES:
        figures += latency_figures(f"{mode} GetSubmission latency", measured[mode][0])
    for mode in MODES[1:]:
        added = percentiles_ms(measured[mode][0])["p50"] - bare_p50
        figures.append(Figure(f"{mode}: added latency at p50", added, "ms"))
    for mode in MODES:
        figures.append(Figure(f"{mode} throughput ({CONCURRENCY} in flight)", measured[mode][1], "calls/s"))
    for mode in MODES[1:]:
        figures.append(Figure(f"{mode}/bare throughput", measured[mode][1] / measured["bare"][1], "x"))
    return figures
