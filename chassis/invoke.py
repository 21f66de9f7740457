"""Service-to-service calls through the local sidecar (Dapr gRPC proxying), with generated stubs.

    async with chassis.invoke.channel("grading") as channel:
        grade = await GradingServiceStub(channel).GetGrade(GetGradeRequest(submission_id=...))

Every call carries `dapr-app-id`, one deadline for all its attempts (10 s unless the caller sets one;
the caller's wins), the W3C trace context, and waits for a restarting sidecar within that deadline.
Unary calls are retried by the chassis with the `apps.<app_id>` retry policy of the Resiliency YAML
(else the built-in transient policy): the sidecar applies that app's timeout and circuit breaker to
each attempt but cannot replay a proxied call, so the retries are the client's (see _resilience.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry.instrumentation.grpc import aio_client_interceptors

from chassis._resilience import Deadline, app_retrying, load_policies
from chassis._settings import ServiceSettings, resources_path, sidecar_grpc_port

if TYPE_CHECKING:
    from chassis.sidecar._resiliency import RetryPolicy

DEFAULT_TIMEOUT = 10.0
APP_ID_METADATA = "dapr-app-id"

__all__ = ["DEFAULT_TIMEOUT", "channel"]


def channel(
    app_id: str, *, settings: ServiceSettings | None = None, timeout: float = DEFAULT_TIMEOUT
) -> grpc.aio.Channel:
    """A channel to the local sidecar whose calls reach app `app_id`; close it when done.

    Raises ConfigError when the Resiliency YAML (settings.resources_path, else $CHASSIS_RESOURCES_PATH)
    is invalid.
    """
    interceptors: list[Any] = [
        _ToApp(app_id, timeout, _retry_policy(app_id, settings)),  # outermost: a client span per attempt
        *aio_client_interceptors(),  # type: ignore[no-untyped-call]
    ]
    return grpc.aio.insecure_channel(f"127.0.0.1:{sidecar_grpc_port(settings)}", interceptors=interceptors)


def _retry_policy(target: str, settings: ServiceSettings | None) -> RetryPolicy | None:
    """The YAML retry policy for calls to `target`, as scoped for this (the calling) app."""
    return load_policies(*resources_path(settings)).app_retry(target)


class _ToApp(
    grpc.aio.UnaryUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.aio.UnaryStreamClientInterceptor,  # type: ignore[type-arg]
    grpc.aio.StreamUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.aio.StreamStreamClientInterceptor,  # type: ignore[type-arg]
):
    """Addresses every call to one app, bounds it with a deadline, retries unary calls."""

    def __init__(self, app_id: str, timeout: float, policy: RetryPolicy | None) -> None:
        self._app_id = app_id
        self._timeout = timeout
        self._policy = policy

    def _details(self, details: grpc.aio.ClientCallDetails, timeout: float) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        if APP_ID_METADATA not in metadata:
            metadata.add(APP_ID_METADATA, self._app_id)
        # Wait for a restarting sidecar rather than fail: that hop never reached it, so it is no retry.
        wait = details.wait_for_ready if details.wait_for_ready is not None else True
        return grpc.aio.ClientCallDetails(details.method, timeout, metadata, details.credentials, wait)

    def _deadline(self, details: grpc.aio.ClientCallDetails) -> Deadline:
        return Deadline(details.timeout if details.timeout is not None else self._timeout)

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        deadline = self._deadline(details)

        async def attempt() -> Any:
            # Fresh details per attempt: inner interceptors add their own (trace) metadata to them, and
            # each attempt gets what is left of the one deadline.
            call = await continuation(self._details(details, deadline.remaining()), request)
            await call  # raises the call's error here, where the retry policy can see it
            return call

        return await app_retrying(self._policy, budget=deadline.seconds)(attempt)

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details, self._deadline(details).seconds), request)

    async def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return await continuation(self._details(details, self._deadline(details).seconds), request_iterator)

    async def intercept_stream_stream(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return await continuation(self._details(details, self._deadline(details).seconds), request_iterator)
