"""Service-to-service calls through the local sidecar (Dapr gRPC proxying), with generated stubs.

    stub = GradingServiceStub(chassis.invoke.channel("grading"))
    grade = await stub.GetGrade(GetGradeRequest(submission_id=...))

Every call carries `dapr-app-id`, a deadline (10 s unless the caller sets one), the W3C trace
context, and unary calls are retried on transient failures by the chassis retry policy.
"""

from __future__ import annotations

from typing import Any

import grpc
from opentelemetry.instrumentation.grpc import aio_client_interceptors

from chassis._resilience import retrying
from chassis._settings import ServiceSettings, sidecar_grpc_port

DEFAULT_TIMEOUT = 10.0
APP_ID_METADATA = "dapr-app-id"

__all__ = ["DEFAULT_TIMEOUT", "channel"]


def channel(
    app_id: str, *, settings: ServiceSettings | None = None, timeout: float = DEFAULT_TIMEOUT
) -> grpc.aio.Channel:
    """A channel to the local sidecar whose calls reach app `app_id`; close it when done."""
    interceptors: list[Any] = [
        _ToApp(app_id, timeout),  # outermost: each retry attempt gets its own client span below
        *aio_client_interceptors(),  # type: ignore[no-untyped-call]
    ]
    return grpc.aio.insecure_channel(f"127.0.0.1:{sidecar_grpc_port(settings)}", interceptors=interceptors)


class _ToApp(
    grpc.aio.UnaryUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.aio.UnaryStreamClientInterceptor,  # type: ignore[type-arg]
    grpc.aio.StreamUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.aio.StreamStreamClientInterceptor,  # type: ignore[type-arg]
):
    """Addresses every call to one app, bounds it with a deadline, retries unary calls."""

    def __init__(self, app_id: str, timeout: float) -> None:
        self._app_id = app_id
        self._timeout = timeout

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        if APP_ID_METADATA not in metadata:
            metadata.add(APP_ID_METADATA, self._app_id)
        timeout = details.timeout if details.timeout is not None else self._timeout
        return grpc.aio.ClientCallDetails(
            details.method, timeout, metadata, details.credentials, details.wait_for_ready
        )

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        async def attempt() -> Any:
            # Fresh details per attempt: inner interceptors add their own (trace) metadata to them.
            call = await continuation(self._details(details), request)
            await call  # raises the call's error here, where the retry policy can see it
            return call

        return await retrying()(attempt)

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)

    async def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return await continuation(self._details(details), request_iterator)

    async def intercept_stream_stream(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return await continuation(self._details(details), request_iterator)
