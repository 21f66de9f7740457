"""Protovalidate rules, enforced at a service's edge: a request that breaks them never reaches its servicer.

The rules are `(buf.validate.field)` options in `proto/`. `RequestValidationInterceptor` checks the request
of every unary and server-streaming RPC the service serves and refuses a bad one with INVALID_ARGUMENT:
a message naming each field, and a google.rpc.BadRequest with one FieldViolation per broken rule in the
rich status details (`grpc-status-details-bin`, read back by `grpc_status.rpc_status.from_call`).
`validate(message)` is the same check for other edges (consumed events, an HTTP gateway).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc
import protovalidate
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2  # type: ignore[import-untyped]
from grpc_status import rpc_status

from chassis._errors import ContractError, InvalidMessage

if TYPE_CHECKING:
    Handler: TypeAlias = grpc.RpcMethodHandler[Any, Any]
    Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]

# One validator for the process: it compiles a message type's rules on first sight and reuses them, so a
# message without rules costs a few microseconds.
_validator = protovalidate.Validator()


def validate(message: Message) -> None:
    """Raise InvalidMessage naming every field of `message` that breaks its proto's rules.

    ContractError when the rules themselves cannot be compiled or evaluated (a mistake in the proto).
    """
    try:
        violations = _validator.collect_violations(message)
    except (protovalidate.CompilationError, protovalidate.EvaluationError) as err:
        name = message.DESCRIPTOR.full_name
        raise ContractError(f"the protovalidate rules of {name} cannot be checked: {err}") from err
    if violations:
        found = [(_field_path(v.proto.field), v.proto.rule_id, v.proto.message) for v in violations]
        raise InvalidMessage(message.DESCRIPTOR.full_name, found)


def bad_request_status(error: InvalidMessage) -> grpc.Status:
    """INVALID_ARGUMENT with the readable message and a BadRequest in the rich details, as Google APIs do."""
    violations = [
        error_details_pb2.BadRequest.FieldViolation(field=field, description=what, reason=rule)
        for field, rule, what in error.violations
    ]
    status = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=str(error))
    status.details.add().Pack(error_details_pb2.BadRequest(field_violations=violations))
    refusal: grpc.Status = rpc_status.to_status(status)
    return refusal


class RequestValidationInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Validates each request of the service's own unary and server-streaming RPCs before its handler runs.

    Methods `skip` accepts (Dapr's app callbacks, health) pass untouched, as do request streams.
    """

    def __init__(self, *, skip: Callable[[str], bool]) -> None:
        self._skip = skip
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}  # method -> (its handler, validated)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(details)
        method: str = details.method
        if handler is None or self._skip(method):
            return handler
        cached = self._wrapped.get(method)
        if cached is None or cached[0] is not handler:
            cached = (handler, _validated(handler))
            self._wrapped[method] = cached
        return cached[1]


def _validated(handler: Handler) -> Handler:
    if handler.request_deserializer is None:
        return handler  # raw bytes (a proxy's generic handler): no message to check
    if handler.unary_unary is not None:
        check = _Checked(handler.unary_unary)
        wrapped: Handler = grpc.unary_unary_rpc_method_handler(
            check.unary,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
        return wrapped
    if handler.unary_stream is not None:
        check = _Checked(handler.unary_stream)
        wrapped = grpc.unary_stream_rpc_method_handler(
            check.stream,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
        return wrapped
    return handler  # a request stream: its messages arrive one by one, inside the handler


class _Checked:
    """One RPC handler behind the request check."""

    def __init__(self, behavior: Callable[..., Any]) -> None:
        self._behavior = behavior

    async def unary(self, request: Message, context: Context) -> Any:
        await _refuse_if_invalid(request, context)
        outcome = self._behavior(request, context)
        return await outcome if isinstance(outcome, Awaitable) else outcome

    async def stream(self, request: Message, context: Context) -> AsyncIterator[Any]:
        """grpc.aio streams what an async generator yields; a handler that writes has written already."""
        await _refuse_if_invalid(request, context)
        outcome = self._behavior(request, context)
        if isinstance(outcome, Awaitable):
            await outcome
            return
        async for response in outcome:
            yield response


async def _refuse_if_invalid(request: Message, context: Context) -> None:
    try:
        validate(request)
    except InvalidMessage as err:
        refusal = bad_request_status(err)
        await context.abort(refusal.code, refusal.details, refusal.trailing_metadata)
    except ContractError as err:
        await context.abort(grpc.StatusCode.INTERNAL, str(err))


def _field_path(path: Any) -> str:
    """protovalidate's FieldPath as one string: `answers[1].choice`, `attributes["colour"]`."""
    text = ""
    for element in path.elements:
        text += f".{element.field_name}" if text else element.field_name
        subscript = element.subscript
        if subscript is not None:
            key = subscript.value
            text += f"[{json.dumps(key) if isinstance(key, str | bool) else key}]"
    return text
