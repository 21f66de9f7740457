"""Middleware: one shape for the calls a service serves, the events it consumes and the events it publishes.

    async def timed(call: Call, call_next: Next) -> object:
        started = time.perf_counter()
        try:
            return await call_next(call)
        finally:
            log.info("%s %s took %.3fs", call.kind, call.name, time.perf_counter() - started)

    service.use(timed)

A middleware gets the `Call` and the rest of the chain; it may look at or change the call (its
metadata, say), return early, or raise. Raising means what it means where the call came from: for a
consumed event, `Retry`/`Drop` choose Dapr's outcome and any other error is RETRY; for an RPC, an
error aborts the call (`call.rpc.abort(...)` picks the status); for a publish, the error reaches the
publisher. Middlewares run in the order they were added, the first outermost, inside the call's span.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import grpc
from google.protobuf.message import Message

from chassis._events import EventContext

Kind = Literal["rpc", "consume", "publish"]


@dataclass
class Call:
    """One unit of work passing through the middleware chain."""

    kind: Kind
    # RPC: the full method ("/mooc.assessment.v1.AssessmentService/SubmitAssignment"); events: the topic.
    name: str
    # The request or the event; None for a request stream (client-streaming and bidirectional RPCs).
    message: Message | None
    # RPC: the caller's metadata; consume: the delivery's metadata; publish: the publish metadata,
    # which a middleware may extend (it is sent with the event).
    metadata: dict[str, str] = field(default_factory=dict)
    event: EventContext | None = None  # consume: the CloudEvent around the message
    rpc: grpc.aio.ServicerContext[Any, Any] | None = None  # rpc: to read peers, set trailers or abort

    @property
    def method(self) -> str:
        """The RPC's method name alone ("SubmitAssignment"); for events, the topic."""
        return self.name.rsplit("/", 1)[-1]


Next = Callable[[Call], Awaitable[Any]]
if TYPE_CHECKING:
    Handler: TypeAlias = grpc.RpcMethodHandler[Any, Any]
Middleware = Callable[[Call, Next], Awaitable[Any]]


def chain(middlewares: Sequence[Middleware], endpoint: Next) -> Next:
    """`endpoint` wrapped by `middlewares`, the first outermost; a plain endpoint when there are none."""
    wrapped = endpoint
    for middleware in reversed(middlewares):
        wrapped = partial(_step, middleware, wrapped)
    return wrapped


async def _step(middleware: Middleware, call_next: Next, call: Call) -> Any:
    return await middleware(call, call_next)


class MiddlewareInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Runs the service's middlewares around each of its own RPCs (not around Dapr's app callbacks).

    Unary requests reach middleware as `call.message`; a request stream as None. For a response
    stream, `call_next` returns once the handler has started streaming.
    """

    def __init__(self, middlewares: Sequence[Middleware], *, skip: Callable[[str], bool]) -> None:
        self._middlewares = middlewares  # the service's live list: `use` after start still counts
        self._skip = skip
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}  # method -> (its handler, wrapped)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(details)
        method: str = details.method
        if handler is None or not self._middlewares or self._skip(method):
            return handler
        cached = self._wrapped.get(method)
        if cached is None or cached[0] is not handler:  # wrap once per method, not on every call
            cached = (handler, _wrapped(handler, method, self._middlewares))
            self._wrapped[method] = cached
        return cached[1]


def _wrapped(handler: Handler, method: str, middlewares: Sequence[Middleware]) -> Handler:
    for kind, make in _HANDLER_KINDS.items():
        behavior = getattr(handler, kind)
        if behavior is not None:
            through = _Through(behavior, method, middlewares, streamed_request=kind.startswith("stream"))
            wrapped: Handler = make(
                through.stream if kind.endswith("stream") else through.unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
            return wrapped
    return handler


@dataclass(frozen=True)
class _Through:
    """One RPC handler behind the middleware chain."""

    behavior: Callable[..., Any]
    method: str
    middlewares: Sequence[Middleware]
    streamed_request: bool

    async def unary(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        async def endpoint(call: Call) -> Any:
            return await _result(self.behavior(request, context))

        metadata = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        message = None if self.streamed_request else request
        call = Call("rpc", self.method, message, metadata, rpc=context)
        return await chain(self.middlewares, endpoint)(call)

    async def stream(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        """grpc.aio streams what an async generator yields; a handler that writes has written already."""
        responses = await self.unary(request, context)
        if responses is not None:
            async for response in responses:
                yield response


async def _result(outcome: Any) -> Any:
    """A handler's answer: awaited when it is a coroutine; an async iterator (a stream) as it is."""
    if isinstance(outcome, Awaitable):
        return await outcome
    return outcome


_HANDLER_KINDS: dict[str, Callable[..., Handler]] = {
    "unary_unary": grpc.unary_unary_rpc_method_handler,
    "unary_stream": grpc.unary_stream_rpc_method_handler,
    "stream_unary": grpc.stream_unary_rpc_method_handler,
    "stream_stream": grpc.stream_stream_rpc_method_handler,
}
