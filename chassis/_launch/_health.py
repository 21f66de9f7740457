"""Readiness probes, as Dapr defines them: a sidecar is up when `/v1.0/healthz/outbound` answers 204 and
has reached its app when `/v1.0/healthz` does; an app is up when gRPC health says SERVING (or, for apps
that do not speak gRPC, when its port accepts connections).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

_PROBE_TIMEOUT = 1.0
_INTERVAL = 0.1


OUTBOUND = "/v1.0/healthz/outbound"
WITH_APP = "/v1.0/healthz"


async def sidecar_healthy(http_port: int, path: str = OUTBOUND) -> bool:
    """True when `GET <path>` answers 204 (OUTBOUND: the sidecar is up; WITH_APP: it reached its app)."""
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
    try:
        async with asyncio.timeout(_PROBE_TIMEOUT):
            reader, writer = await asyncio.open_connection("127.0.0.1", http_port)
            try:
                writer.write(request)
                status = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError):
        return False
    parts = status.split()
    return len(parts) >= 2 and parts[1] == b"204"


async def app_serving(port: int, protocol: str) -> bool:
    """True when the app answers: gRPC health SERVING for gRPC apps, an accepted connection otherwise."""
    if protocol.lower() not in ("grpc", "grpcs"):
        return await _port_open(port)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=_PROBE_TIMEOUT)
        except grpc.aio.AioRpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


async def _port_open(port: int) -> bool:
    try:
        async with asyncio.timeout(_PROBE_TIMEOUT):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


async def wait_for(probe: Callable[[], Awaitable[bool]]) -> None:
    """Poll `probe` until it answers True; callers bound the wait (timeouts, or racing a process exit)."""
    while True:
        if await probe():
            return
        await asyncio.sleep(_INTERVAL)
