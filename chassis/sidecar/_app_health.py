"""App health checks as daprd's `--enable-app-health-check` runs them, so delivery waits for a healthy app.

Every `--app-health-probe-interval` the app is probed (HTTP apps: `GET <--app-health-check-path>`, 2xx
is healthy; gRPC apps: `AppCallbackHealthCheck.HealthCheck`, OK is healthy), each probe bounded by
`--app-health-probe-timeout`. After `--app-health-threshold` failures in a row the app is unhealthy
and pub/sub delivery to it pauses; the first successful probe resumes it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import aiohttp
import grpc
import grpc.aio
from dapr.proto.runtime.v1 import appcallback_pb2_grpc
from google.protobuf import empty_pb2

from chassis.sidecar._auth import app_interceptors, app_token_metadata

log = logging.getLogger("chassis.sidecar.health")

Probe = Callable[[float], Awaitable[bool]]  # time limit in seconds -> healthy?


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """daprd's app health flags (same names and defaults)."""
    parser.add_argument(
        "--enable-app-health-check", action="store_true", help="probe the app; deliver only while healthy"
    )
    parser.add_argument("--app-health-check-path", default="/healthz", help="HTTP apps (default %(default)s)")
    parser.add_argument(
        "--app-health-probe-interval",
        type=int,
        default=5,
        help="seconds between probes (default %(default)s)",
    )
    parser.add_argument(
        "--app-health-probe-timeout",
        type=int,
        default=500,
        help="milliseconds per probe (default %(default)s)",
    )
    parser.add_argument(
        "--app-health-threshold", type=int, default=3, help="failures before unhealthy (default %(default)s)"
    )


def http_probe(address: str, path: str) -> Probe:
    """GET http://<address><path>: any 2xx is healthy."""
    url = f"http://{address}/{path.lstrip('/')}"

    async def probe(limit: float) -> bool:
        try:
            async with (
                aiohttp.ClientSession(
                    timeout=aiohttp.ClientTimeout(total=limit), headers=dict(app_token_metadata())
                ) as session,
                session.get(url) as response,
            ):
                return 200 <= response.status < 300
        except (aiohttp.ClientError, TimeoutError):
            return False

    return probe


def grpc_probe(address: str) -> Probe:
    """AppCallbackHealthCheck.HealthCheck: an OK answer is healthy."""

    async def probe(limit: float) -> bool:
        async with grpc.aio.insecure_channel(address, interceptors=app_interceptors()) as channel:
            stub = appcallback_pb2_grpc.AppCallbackHealthCheckStub(channel)  # type: ignore[no-untyped-call]
            try:
                await stub.HealthCheck(empty_pb2.Empty(), timeout=limit)
            except grpc.aio.AioRpcError:
                return False
        return True

    return probe


class AppHealth:
    """Probes the app in the background; `healthy` is set while it is healthy."""

    def __init__(self, probe: Probe, *, interval: float, timeout: float, threshold: int) -> None:
        self.probe = probe
        self.interval = interval
        self.timeout = timeout
        self.threshold = max(1, threshold)
        self.healthy = asyncio.Event()
        self._failures = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="app-health")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            self.report(await self.probe(self.timeout))
            await asyncio.sleep(self.interval)

    def report(self, ok: bool) -> None:
        """One probe result: a success makes the app healthy, `threshold` failures in a row unhealthy."""
        if ok:
            self._failures = 0
            if not self.healthy.is_set():
                log.info("app is healthy: delivering")
            self.healthy.set()
            return
        self._failures += 1
        if self._failures >= self.threshold and self.healthy.is_set():
            log.warning("app is unhealthy after %d failed probes: delivery paused", self._failures)
            self.healthy.clear()


def from_args(args: argparse.Namespace, address: str | None) -> AppHealth | None:
    """The health checker the flags ask for (None unless --enable-app-health-check and an app port)."""
    if not args.enable_app_health_check or address is None:
        return None
    probe = (
        http_probe(address, args.app_health_check_path)
        if args.app_protocol == "http"
        else grpc_probe(address)
    )
    return AppHealth(
        probe,
        interval=float(args.app_health_probe_interval),
        timeout=args.app_health_probe_timeout / 1000,
        threshold=args.app_health_threshold,
    )
