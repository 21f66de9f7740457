"""The one official async Dapr client a service owns, opened once the sidecar answers, closed on stop.

Every call goes through `Dapr.call`, so the retry policy and the OpenTelemetry client interceptors
apply to everything the chassis asks of the sidecar. A call names the component it targets
(`dapr.call(fn, component="statestore")`); when the Resiliency YAML gives that component an outbound
retry policy the sidecar retries it, so the chassis makes one attempt (see _resilience.py). Every
unary call waits for a restarting sidecar (gRPC `wait_for_ready`) within its deadline instead of
failing at once, so the hop to the sidecar needs no retry of its own.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any, Self, TypeVar

import aiohttp
import grpc
from dapr.aio.clients import DaprClient
from dapr.clients.retry import RetryPolicy as SdkRetryPolicy
from dapr.conf import settings as dapr_settings
from opentelemetry.instrumentation.grpc import aio_client_interceptors

from chassis._errors import SidecarUnavailable
from chassis._resilience import ClientPolicies, load_policies, retrying
from chassis._settings import ServiceSettings

T = TypeVar("T")

HEALTH_TIMEOUT_ENV = "DAPR_HEALTH_TIMEOUT"
# How long a sidecar call may take, waiting for a restarting sidecar included, unless the SDK's
# DAPR_API_TIMEOUT_SECONDS or the call itself sets a deadline.
SIDECAR_CALL_TIMEOUT = 60.0


class Dapr:
    """Owns one `dapr.aio.clients.DaprClient` for the local sidecar; usable as `async with`."""

    def __init__(self, settings: ServiceSettings) -> None:
        self._settings = settings
        self._client: DaprClient | None = None
        self._lock = asyncio.Lock()
        self._policies: ClientPolicies | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self._settings.dapr_grpc_port}"

    async def client(self) -> DaprClient:
        """The open client, opened on first use (after the sidecar answers its health endpoint)."""
        if self._client is None:
            async with self._lock:
                if self._client is None:
                    self._client = await self._open()
        return self._client

    def load_policies(self) -> ClientPolicies:
        """The Resiliency YAML of `settings.resources_path` for this app; ConfigError if it is invalid."""
        if self._policies is None:
            self._policies = load_policies(self._settings.resources_path, self._settings.app_id)
        return self._policies

    async def call(self, fn: Callable[[DaprClient], Awaitable[T]], *, component: str | None = None) -> T:
        """Run one sidecar call: once if the sidecar retries `component`, else retrying transient failures."""
        policies = self.load_policies()
        client = await self.client()

        async def attempt() -> T:
            # A coroutine function, so tenacity awaits each attempt (a lambda's coroutine would escape it).
            return await fn(client)

        if component is not None and policies.sidecar_retries(component):
            return await attempt()
        result: T = await retrying()(attempt)
        return result

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()  # type: ignore[no-untyped-call]

    async def __aenter__(self) -> Self:
        await self.client()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _open(self) -> DaprClient:
        # The SDK's constructor polls healthz with blocking sleeps; waiting here first keeps the event
        # loop (and this service's own gRPC server) responsive while the sidecar starts.
        await wait_for_sidecar(self._settings.dapr_http_port)
        interceptors: list[Any] = [
            WaitForSidecar(),
            *aio_client_interceptors(),  # type: ignore[no-untyped-call]
        ]
        # The constructor probes the sidecar's HTTP port as the SDK's settings say (DAPR_HTTP_PORT env,
        # else 3500); point that probe at this service's sidecar, which need not match the env.
        with sdk_setting("DAPR_HTTP_ENDPOINT", f"http://127.0.0.1:{self._settings.dapr_http_port}"):
            client = DaprClient(address=self.address, interceptors=interceptors)
        # The SDK's own retries (DAPR_API_MAX_RETRIES) would stack on the chassis's and the sidecar's.
        client.retry_policy = SdkRetryPolicy(max_attempts=0)
        return client


class WaitForSidecar(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    """Unary calls wait for the sidecar to be reachable (`wait_for_ready`), bounded by a deadline.

    A call made while the sidecar restarts then completes once it is back, instead of failing
    UNAVAILABLE at once; the deadline is the call's own, else DAPR_API_TIMEOUT_SECONDS, else 60 s.
    """

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        timeout = details.timeout if details.timeout is not None else sidecar_call_timeout()
        wait = details.wait_for_ready if details.wait_for_ready is not None else True
        bounded = grpc.aio.ClientCallDetails(
            details.method, timeout, details.metadata, details.credentials, wait
        )
        return await continuation(bounded, request)


def sidecar_call_timeout() -> float:
    """The SDK's DAPR_API_TIMEOUT_SECONDS when set, else SIDECAR_CALL_TIMEOUT."""
    configured = dapr_settings.DAPR_API_TIMEOUT_SECONDS
    return float(configured) if configured else SIDECAR_CALL_TIMEOUT


@contextmanager
def sdk_setting(name: str, value: object) -> Iterator[None]:
    """Override one `dapr.conf.settings` value for a synchronous block, then restore it."""
    assigned = vars(dapr_settings)
    missing = object()
    previous = assigned.get(name, missing)
    setattr(dapr_settings, name, value)
    try:
        yield
    finally:
        if previous is missing:
            delattr(dapr_settings, name)
        else:
            setattr(dapr_settings, name, previous)


async def wait_for_sidecar(http_port: int, limit_seconds: float | None = None) -> None:
    """Poll the sidecar's `GET /v1.0/healthz/outbound` until it answers 2xx, as the Dapr SDK does."""
    limit = limit_seconds if limit_seconds is not None else float(os.environ.get(HEALTH_TIMEOUT_ENV) or 60)
    url = f"http://127.0.0.1:{http_port}/v1.0/healthz/outbound"
    deadline = time.monotonic() + limit
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while True:
            if await _healthy(session, url):
                return
            if time.monotonic() >= deadline:
                raise SidecarUnavailable(f"no healthy Dapr sidecar at {url} after {limit:g}s")
            await asyncio.sleep(0.1)


async def _healthy(session: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with session.get(url) as response:
            return 200 <= response.status < 300
    except (aiohttp.ClientError, TimeoutError):
        return False
