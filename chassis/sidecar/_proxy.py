"""gRPC proxying by `dapr-app-id` (Dapr's proxy mode): any method not served locally goes to the named app.

Messages are forwarded as raw bytes, so the proxy needs none of the apps' protos. Every call is served
as a stream-stream call (what any call looks like on the wire); one whose caller sent a single message
and half-closed is forwarded as a unary-request call, the common case, which also avoids grpc.aio
reporting a callee's early status as INTERNAL when a separate write races it (grpc/grpc#36066).
Metadata goes through both ways (minus hop-by-hop keys), and the callee's status code, message and
trailers (including rich error details) reach the caller unchanged. The target's address comes from
the shared app registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import grpc
import grpc.aio
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from chassis.sidecar._auth import app_interceptors
from chassis.sidecar._registry import AppRegistry
from chassis.sidecar._resiliency import CircuitOpen, Policy, Resiliency
from chassis.sidecar._tracing import (
    context_from_metadata,
    grpc_trace_bin,
    metadata_pairs,
    traceparent,
    tracestate,
)

log = logging.getLogger("chassis.sidecar.proxy")

APP_ID_KEY = "dapr-app-id"
CALLER_KEY = "dapr-caller-app-id"
# Connection-level keys the gRPC stack sets itself, plus the trace keys we replace with the proxy span's.
_HOP_BY_HOP = frozenset(
    {
        "content-type",
        "user-agent",
        "te",
        "host",
        "connection",
        "keep-alive",
        "transfer-encoding",
        "upgrade",
        "grpc-timeout",
        "grpc-encoding",
        "grpc-accept-encoding",
        "grpc-status",
        "grpc-message",
        "dapr-api-token",
        "traceparent",
        "tracestate",
        "grpc-trace-bin",
        CALLER_KEY,
    }
)
# A local subchannel pool: otherwise the proxy shares gRPC's global pool with the delivery loop, whose
# attempts to reach a still-starting app leave the subchannel in back-off and fail the first calls.
CHANNEL_OPTIONS = [
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]
# How long to wait, after the first request message, for what follows it: a unary caller's half-close
# comes with the message and is read within a loop turn or two (more under load). A streaming caller
# that waits for a reply before sending more (ping-pong) pays this once, on its first message.
UNARY_GRACE = 0.05  # seconds
Behavior = grpc.aio.ServicerContext[bytes, bytes]


if TYPE_CHECKING:
    _GenericHandler = grpc.GenericRpcHandler[bytes, bytes]
else:  # grpc's classes are not generic at runtime
    _GenericHandler = grpc.GenericRpcHandler


def passthrough(metadata: object) -> list[tuple[str, str | bytes]]:
    """The metadata worth forwarding: no pseudo-headers, no hop-by-hop keys."""
    return [
        (key, value)
        for key, value in metadata_pairs(metadata)
        if not key.startswith(":") and key.lower() not in _HOP_BY_HOP
    ]


def _app_id(metadata: object) -> str | None:
    for key, value in metadata_pairs(metadata):
        if key.lower() == APP_ID_KEY and isinstance(value, str) and value:
            return value
    return None


def _timeout(context: Behavior) -> float | None:
    """The caller's remaining deadline, so the callee gives up when the caller does."""
    remaining = context.time_remaining()
    return None if remaining is None or math.isinf(remaining) else max(remaining, 0.0)


def _shortest(remaining: float | None, policy: Policy) -> float | None:
    """The caller's deadline or the policy's timeout, whichever ends first."""
    if policy.timeout is None:
        return remaining
    return policy.timeout if remaining is None else min(remaining, policy.timeout)


class _Inbox:
    """The caller's request messages, read ahead as they come, so the proxy can see a unary request."""

    END = None  # the caller half-closed

    def __init__(self, requests: AsyncIterator[bytes]) -> None:
        self._items: deque[bytes | None] = deque()
        self._arrived = asyncio.Event()
        self._reader = asyncio.create_task(self._read(requests))

    async def _read(self, requests: AsyncIterator[bytes]) -> None:
        async for message in requests:
            self._put(message)
        self._put(self.END)

    def _put(self, item: bytes | None) -> None:
        self._items.append(item)
        self._arrived.set()

    async def single(self) -> bytes | None:
        """The only request when the caller sent exactly one and half-closed with it, else None."""
        await self._until(lambda: len(self._items) >= 1)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(UNARY_GRACE):
                await self._until(lambda: len(self._items) >= 2 or self._items[0] is None)
        items = self._items
        return items[0] if len(items) == 2 and items[0] is not None and items[1] is None else None

    async def _until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            self._arrived.clear()
            await self._arrived.wait()

    async def stream(self) -> AsyncIterator[bytes]:
        """Every request, in order, until the caller half-closes."""
        while True:
            await self._until(lambda: bool(self._items))
            item = self._items.popleft()
            if item is None:
                return
            yield item

    async def close(self) -> None:
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)


class AppProxy(_GenericHandler):
    """Serves every method the Dapr servicer does not, when the call names a target with `dapr-app-id`."""

    def __init__(
        self,
        *,
        registry: AppRegistry,
        tracer: trace.Tracer,
        app_id: str,
        app_address: str | None,
        resiliency: Resiliency | None = None,
    ) -> None:
        self._resiliency = resiliency or Resiliency()  # apps.<id> policies: timeout and circuit breaker
        self._registry = registry
        self._tracer = tracer
        self._app_id = app_id
        self._app_address = app_address
        self._channels: dict[str, grpc.aio.Channel] = {}

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[bytes, bytes] | None:
        """A raw-bytes stream-stream handler; None (gRPC's UNIMPLEMENTED) without `dapr-app-id`."""
        if _app_id(handler_call_details.invocation_metadata) is None:
            return None
        method = handler_call_details.method

        async def forward(requests: AsyncIterator[bytes], context: Behavior) -> None:
            await self._forward(method, requests, context)

        return grpc.stream_stream_rpc_method_handler(forward)

    async def close(self) -> None:
        """Close the cached channels to the other apps."""
        for channel in self._channels.values():
            await channel.close(None)
        self._channels.clear()

    def _channel(self, address: str) -> grpc.aio.Channel:
        # One channel per target address, kept for the sidecar's life (HTTP/2 multiplexes the calls).
        if address not in self._channels:
            self._channels[address] = grpc.aio.insecure_channel(
                address, options=CHANNEL_OPTIONS, interceptors=app_interceptors()
            )
        return self._channels[address]

    async def _resolve(self, app_id: str) -> str | None:
        if app_id == self._app_id and self._app_address:
            return self._app_address
        return await self._registry.lookup(app_id)

    async def _forward(self, method: str, requests: AsyncIterator[bytes], context: Behavior) -> None:
        incoming = context.invocation_metadata()
        app_id = _app_id(incoming) or ""
        address = await self._resolve(app_id)
        if address is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"app id {app_id} is not registered")
        parent = context_from_metadata(incoming)
        attributes = {
            "rpc.system": "grpc",
            "rpc.method": method,
            "dapr.app_id": app_id,
            "net.peer.name": address,
        }
        with self._tracer.start_as_current_span(
            method, context=parent, kind=SpanKind.CLIENT, attributes=attributes, record_exception=False
        ) as span:
            outgoing = self._outgoing(incoming, span.get_span_context())
            policy = await self._admit(app_id, context)
            inbox = _Inbox(requests)
            try:
                call = await self._call(
                    address, method, inbox, outgoing, _shortest(_timeout(context), policy)
                )
                failure = await self._relay(call, context)
            finally:
                await inbox.close()
            if policy.breaker:
                policy.breaker.after(failure is None)
            if failure is not None:
                span.set_status(Status(StatusCode.ERROR, failure.details() or failure.code().name))
        if failure is not None:
            await context.abort(
                failure.code(), failure.details() or "", tuple(passthrough(failure.trailing_metadata()))
            )

    async def _call(
        self,
        address: str,
        method: str,
        inbox: _Inbox,
        metadata: list[tuple[str, str | bytes]],
        deadline: float | None,
    ) -> grpc.aio.UnaryStreamCall[bytes, bytes] | grpc.aio.StreamStreamCall[bytes, bytes]:
        """The call to the callee: unary-request when the caller sent one message, else a stream."""
        channel = self._channel(address)
        if (request := await inbox.single()) is not None:
            unary = channel.unary_stream(method, request_serializer=None, response_deserializer=None)
            return unary(request, metadata=metadata, timeout=deadline)
        stream = channel.stream_stream(method, request_serializer=None, response_deserializer=None)
        return stream(inbox.stream(), metadata=metadata, timeout=deadline)

    async def _admit(self, app_id: str, context: Behavior) -> Policy:
        """The target's app policy; an open circuit breaker fails the call at once (no retries: streams)."""
        policy = self._resiliency.app(app_id)
        if policy.breaker:
            try:
                policy.breaker.before()
            except CircuitOpen as err:
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"{err} for app {app_id}")
        return policy

    def _outgoing(self, incoming: object, span: trace.SpanContext) -> list[tuple[str, str | bytes]]:
        outgoing = passthrough(incoming)
        outgoing += [(CALLER_KEY, self._app_id), ("traceparent", traceparent(span))]
        if state := tracestate(span):
            outgoing.append(("tracestate", state))
        outgoing.append(("grpc-trace-bin", grpc_trace_bin(span)))
        return outgoing

    @staticmethod
    async def _relay(
        call: grpc.aio.UnaryStreamCall[bytes, bytes] | grpc.aio.StreamStreamCall[bytes, bytes],
        context: Behavior,
    ) -> grpc.aio.AioRpcError | None:
        """Copy the callee's headers, messages and trailers to the caller; its error is returned."""
        sent_headers = False
        try:
            await context.send_initial_metadata(tuple(passthrough(await call.initial_metadata())))
            sent_headers = True
            async for response in call:
                await context.write(response)
            context.set_trailing_metadata(tuple(passthrough(await call.trailing_metadata())))
        except grpc.aio.AioRpcError as err:
            if not sent_headers and (headers := passthrough(err.initial_metadata())):
                await context.send_initial_metadata(tuple(headers))
            return err
        return None
