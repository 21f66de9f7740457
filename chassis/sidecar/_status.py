"""daprd-style API errors: a gRPC code, daprd's message and google.rpc.Status rich details.

The Python SDK's `DaprGrpcError` parses `grpc-status-details-bin` (ErrorInfo, ResourceInfo, BadRequest),
so the embedded sidecar sends the same details daprd sends (`dapr/kit/errors` builder, domain "dapr.io");
the HTTP body carries them too, as `details` (dapr/kit `Error.JSONErrorValue`).
"""

from __future__ import annotations

from typing import Any, NoReturn

import grpc
import grpc.aio
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]

DOMAIN = "dapr.io"
_DETAILS_KEY = "grpc-status-details-bin"
_TYPE_PREFIX = "type.googleapis.com/"


class ApiError(Exception):
    """An error the sidecar answers with: gRPC code, message, rich details, and the HTTP twin."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        error_code: str = "ERR_INTERNAL",
        http_status: int = 500,
        details: tuple[Message, ...] = (),
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.error_code = error_code
        self.http_status = http_status
        self.details = details

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        """The `grpc-status-details-bin` trailer; its code and message must equal the call's own."""
        if not self.details:
            return ()
        status = status_pb2.Status(code=self.code.value[0], message=self.message)
        for detail in self.details:
            status.details.add().Pack(detail)
        return ((_DETAILS_KEY, status.SerializeToString()),)

    async def abort(self, context: grpc.aio.ServicerContext[Any, Any]) -> NoReturn:
        """End the RPC with this error."""
        await context.abort(self.code, self.message, self.trailing_metadata())

    def http_body(self) -> dict[str, Any]:
        """daprd's HTTP error JSON `{errorCode, message}`, plus `details` when the error has rich details."""
        body: dict[str, Any] = {"errorCode": self.error_code, "message": self.message}
        if self.details:
            body["details"] = [detail_json(detail) for detail in self.details]
        return body


def detail_json(detail: Message) -> dict[str, Any]:
    """One rich detail as dapr/kit writes it in HTTP bodies: `@type` plus the proto field names."""
    fields: dict[str, Any]
    if isinstance(detail, error_details_pb2.ErrorInfo):
        fields = {"reason": detail.reason, "domain": detail.domain, "metadata": dict(detail.metadata)}
    elif isinstance(detail, error_details_pb2.ResourceInfo):
        fields = {
            "resource_type": detail.resource_type,
            "resource_name": detail.resource_name,
            "owner": detail.owner,
            "description": detail.description,
        }
    elif isinstance(detail, error_details_pb2.BadRequest):
        # Go's encoding/json of the violation structs: empty fields are omitted (`omitempty`).
        fields = {
            "field_violations": [
                MessageToDict(v, preserving_proto_field_name=True) for v in detail.field_violations
            ]
        }
    else:
        fields = MessageToDict(detail, preserving_proto_field_name=True)
    return {"@type": _TYPE_PREFIX + detail.DESCRIPTOR.full_name} | fields


def error_info(reason: str, metadata: dict[str, str] | None = None) -> error_details_pb2.ErrorInfo:
    """ErrorInfo as daprd fills it (domain is always dapr.io)."""
    return error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=metadata or {})


def resource_info(kind: str, name: str, description: str = "") -> error_details_pb2.ResourceInfo:
    """ResourceInfo naming the component the error is about."""
    return error_details_pb2.ResourceInfo(resource_type=kind, resource_name=name, description=description)


def bad_request(field: str, description: str) -> error_details_pb2.BadRequest:
    """BadRequest with one field violation."""
    violation = error_details_pb2.BadRequest.FieldViolation(field=field, description=description)
    return error_details_pb2.BadRequest(field_violations=[violation])


# --- the errors the implemented APIs can answer (messages from dapr/dapr pkg/messages, pkg/api/errors) ---


def unimplemented(rpc: str) -> ApiError:
    """Any Dapr RPC the embedded sidecar does not serve."""
    return ApiError(
        grpc.StatusCode.UNIMPLEMENTED,
        f"{rpc} is not implemented by the embedded sidecar",
        error_code="ERR_API_UNIMPLEMENTED",
        http_status=501,
    )


def pubsub_not_configured() -> ApiError:
    """No pubsub component was loaded at all."""
    return ApiError(
        grpc.StatusCode.FAILED_PRECONDITION,
        "no pubsub is configured",
        error_code="ERR_PUBSUB_NOT_CONFIGURED",
        http_status=400,
        details=(error_info("DAPR_PUBSUB_NOT_CONFIGURED"),),
    )


def pubsub_name_empty() -> ApiError:
    """PublishEvent without a pubsub name."""
    message = "pubsub name is empty"
    return ApiError(
        grpc.StatusCode.INVALID_ARGUMENT,
        message,
        error_code="ERR_PUBSUB_EMPTY",
        http_status=404,
        details=(error_info("DAPR_PUBSUB_NAME_EMPTY"), resource_info("pubsub", "", message)),
    )


def pubsub_not_found(name: str) -> ApiError:
    """PublishEvent naming a pubsub that was not loaded."""
    return ApiError(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"pubsub {name} is not found",
        error_code="ERR_PUBSUB_NOT_FOUND",
        http_status=404,
        details=(error_info("DAPR_PUBSUB_NOT_FOUND"),),
    )


def pubsub_topic_empty(name: str, kind: str) -> ApiError:
    """PublishEvent without a topic."""
    message = f"topic is empty in pubsub {name}"
    return ApiError(
        grpc.StatusCode.INVALID_ARGUMENT,
        message,
        error_code="ERR_TOPIC_EMPTY",
        http_status=404,
        details=(error_info("DAPR_PUBSUB_TOPIC_NAME_EMPTY"), resource_info(kind, name, message)),
    )


def pubsub_cloudevent_creation(name: str, kind: str) -> ApiError:
    """An `application/cloudevents+json` payload that is not a JSON object."""
    message = "cannot create cloudevent"
    return ApiError(
        grpc.StatusCode.INVALID_ARGUMENT,
        message,
        error_code="ERR_PUBSUB_CLOUD_EVENTS_SER",
        http_status=500,
        details=(error_info("DAPR_PUBSUB_CLOUD_EVENT_CREATION"), resource_info(kind, name, message)),
    )


def pubsub_publish_failed(name: str, kind: str, topic: str, err: Exception) -> ApiError:
    """The broker refused or failed the publish."""
    message = f"error when publishing to topic {topic} in pubsub {name}: {err}"
    return ApiError(
        grpc.StatusCode.INTERNAL,
        message,
        error_code="ERR_PUBSUB_PUBLISH_MESSAGE",
        http_status=500,
        details=(
            error_info("DAPR_PUBSUB_PUBLISH_MESSAGE", {"topic": topic, "error": str(err)}),
            resource_info(kind, name, message),
        ),
    )


def state_not_configured() -> ApiError:
    """No state store component was loaded at all."""
    return ApiError(
        grpc.StatusCode.FAILED_PRECONDITION,
        "state store is not configured",
        error_code="ERR_STATE_STORE_NOT_CONFIGURED",
        http_status=500,
        details=(error_info("DAPR_STATE_NOT_CONFIGURED"),),
    )


def state_store_not_found(name: str) -> ApiError:
    """A state call naming a store that was not loaded."""
    return ApiError(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"state store {name} is not found",
        error_code="ERR_STATE_STORE_NOT_FOUND",
        http_status=400,
        details=(error_info("DAPR_STATE_NOT_FOUND"),),
    )


def illegal_key(store: str, key: str) -> ApiError:
    """A key holding daprd's separator `||` (pkg/api/errors/state.go StateStoreInvalidKeyName)."""
    message = f"input key/keyPrefix '{key}' can't contain '||'"
    return ApiError(
        grpc.StatusCode.INVALID_ARGUMENT,
        message,
        error_code="ERR_MALFORMED_REQUEST",
        http_status=400,
        details=(
            error_info("DAPR_STATE_ILLEGAL_KEY"),
            resource_info("state", store),
            bad_request(key, message),
        ),
    )


def invalid_argument(message: str, error_code: str = "ERR_MALFORMED_REQUEST") -> ApiError:
    """A plain INVALID_ARGUMENT without rich details (daprd's status.Errorf cases)."""
    return ApiError(grpc.StatusCode.INVALID_ARGUMENT, message, error_code=error_code, http_status=400)
