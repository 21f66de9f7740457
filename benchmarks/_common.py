"""Shared plumbing for the benchmarks: clean env, real processes on free ports, percentiles, results.

Processes are the test kit's (`chassis.testing._processes`), so a benchmark starts the sidecar exactly
as the tests do; every process is stopped by `stopping` even when a benchmark fails.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from dapr.proto.runtime.v1 import dapr_pb2_grpc, metadata_pb2

from chassis.testing._processes import ManagedProcess, Sidecar, free_port

REPO = Path(__file__).resolve().parents[1]
APPS = Path(__file__).resolve().parent / "apps"
REDIS_COMPONENTS = REPO / "dapr" / "components" / "redis"
_CLEARED = ("DAPR_", "OTEL_", "CHASSIS_")

__all__ = ["APPS", "REDIS_COMPONENTS", "ManagedProcess", "Sidecar", "free_port"]


def clean_environment() -> None:
    """Drop Dapr/OTel/chassis settings so children see only what a benchmark gives them."""
    for name in [n for n in os.environ if n.startswith(_CLEARED)]:
        del os.environ[name]


def app_process(script: str, workdir: Path, env: dict[str, str]) -> ManagedProcess:
    """benchmarks/apps/<script> as a child process (not yet started)."""
    argv = [sys.executable, str(APPS / script)]
    label = f"app-{Path(script).stem}"
    return ManagedProcess(label, argv, cwd=workdir, env={**os.environ, **env})


@contextlib.contextmanager
def stopping() -> Iterator[list[ManagedProcess]]:
    """A list to append started processes to; all are stopped (reverse order) on exit."""
    started: list[ManagedProcess] = []
    try:
        yield started
    finally:
        for process in reversed(started):
            with contextlib.suppress(Exception):
                process.stop()


def percentiles_ms(samples_ns: list[int]) -> dict[str, float]:
    """p50/p90/p99 of nanosecond samples, in milliseconds."""
    cuts = statistics.quantiles(samples_ns, n=100, method="inclusive")
    return {"p50": cuts[49] / 1e6, "p90": cuts[89] / 1e6, "p99": cuts[98] / 1e6}


async def timed_calls(call: Callable[[int], Awaitable[object]], count: int, warmup: int) -> list[int]:
    """Latency (ns) of `count` sequential calls, after `warmup` unrecorded ones."""
    for i in range(warmup):
        await call(i)
    samples = []
    for i in range(count):
        start = time.perf_counter_ns()
        await call(i)
        samples.append(time.perf_counter_ns() - start)
    return samples


@dataclass
class Figure:
    """One measured figure, optionally checked against a target."""

    name: str
    value: float
    unit: str
    target: str = ""
    met: bool | None = None

    def line(self) -> str:
        verdict = {None: "", True: "met", False: "MISSED"}[self.met]
        return f"| {self.name} | {self.value:.3f} {self.unit} | {self.target} | {verdict} |"


def report(title: str, figures: list[Figure]) -> None:
    """Print a markdown table of `figures` under `title`."""
    print(f"\n### {title}\n\n| figure | value | target | |\n|---|---|---|---|")
    for figure in figures:
        print(figure.line())
    sys.stdout.flush()


def latency_figures(label: str, samples_ns: list[int]) -> list[Figure]:
    """p50/p90/p99 figures of one latency series."""
    return [Figure(f"{label} {k}", v, "ms") for k, v in percentiles_ms(samples_ns).items()]


@contextlib.contextmanager
def pointed_at(sidecar: Sidecar) -> Iterator[None]:
    """DAPR_GRPC_PORT / DAPR_HTTP_PORT of `sidecar` for the SDK (which reads them per use), then restored."""
    saved = {name: os.environ.get(name) for name in ("DAPR_GRPC_PORT", "DAPR_HTTP_PORT")}
    os.environ.update(sidecar.app_env())
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def subscribed(sidecar: Sidecar, topic: str) -> bool:
    """True once the sidecar's metadata lists a subscription to `topic` (i.e. its app was asked)."""
    try:
        with grpc.insecure_channel(f"127.0.0.1:{sidecar.grpc_port}") as channel:
            stub = dapr_pb2_grpc.DaprStub(channel)
            reply = stub.GetMetadata(metadata_pb2.GetMetadataRequest(), timeout=2)
    except grpc.RpcError:
        return False
    return any(s.topic == topic for s in reply.subscriptions)


def start_pair(
    started: list[ManagedProcess], workdir: Path, app_id: str, resources: list[Path], app_env: dict[str, str]
) -> Sidecar:
    """The subscriber app and its sidecar, returned once the sidecar holds the app's subscription."""
    app_port = free_port()
    app = app_process("subscriber_app.py", workdir, {"APP_PORT": str(app_port), **app_env})
    started.append(app)
    app.spawn()
    sidecar = Sidecar(app_id, workdir, app_port=app_port, resources=resources)
    started.append(sidecar)
    sidecar.start()
    sidecar.wait_until(lambda: subscribed(sidecar, app_env["TOPIC"]), 30, "subscribed")
    return sidecar
