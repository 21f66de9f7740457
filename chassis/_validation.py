"""Protovalidate rules, enforced at a service's edge: a request that breaks them never reaches its servicer.

The rules are `(buf.validate.field)` options in `proto/`. `check_requests`, the first middleware of every
service, checks the request of each unary and server-streaming RPC it serves and refuses a bad one with
INVALID_ARGUMENT before any other middleware (proctoring, say) or the servicer sees it:
a message naming each field, and a google.rpc.BadRequest with one FieldViolation per broken rule in the
rich status details (`grpc-status-details-bin`, read back by `grpc_status.rpc_status.from_call`).
`validate(message)` is the same check for other edges (consumed events, an HTTP gateway).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc
import protovalidate
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2  # type: ignore[import-untyped]
from grpc_status import rpc_status

from chassis._errors import ContractError, InvalidMessage
from chassis._middleware import Call, Next

if TYPE_CHECKING:
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


async def check_requests(call: Call, call_next: Next) -> object:
    """Middleware, always first in a service's chain: a request that breaks its rules goes no further.

    Request streams (message None) and raw bytes (a proxy's generic handler) pass: nothing to check.
    """
    if call.kind == "rpc" and isinstance(call.message, Message) and call.rpc is not None:
        await _refuse_if_invalid(call.message, call.rpc)
    return await call_next(call)


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
