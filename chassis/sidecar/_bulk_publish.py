"""`BulkPublishEvent` (and its deprecated `BulkPublishEventAlpha1` name) as daprd answers it.

Every entry is checked and wrapped first (a unique, non-empty entry_id; a CloudEvent that cannot be
built fails the whole call), then published on its own with the request metadata under the entry's;
an entry the broker refuses is reported in `failedEntries` and the call itself succeeds, as daprd
does for partial failures. Each entry gets its own child span, so each
CloudEvent carries its own traceparent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc
from dapr.proto.runtime.v1 import pubsub_pb2
from opentelemetry.trace import SpanKind

from chassis.sidecar import _status
from chassis.sidecar._errors import SidecarError
from chassis.sidecar._status import ApiError

if TYPE_CHECKING:
    from chassis.sidecar._grpc_api import ApiContext
    from chassis.sidecar._operations import Operations


def _check_entries(request: pubsub_pb2.BulkPublishRequest) -> None:
    seen: set[str] = set()
    for entry in request.entries:
        if not entry.entry_id or entry.entry_id in seen:
            message = (
                f"error when marshalling events for topic {request.topic} pubsub {request.pubsub_name}:"
                " entryId is duplicated or not present for entry"
            )
            raise ApiError(
                grpc.StatusCode.INVALID_ARGUMENT, message, error_code="ERR_PUBSUB_EVENTS_SER", http_status=400
            )
        seen.add(entry.entry_id)


async def bulk_publish(
    ctx: ApiContext, ops: Operations, request: pubsub_pb2.BulkPublishRequest, rpc: str
) -> pubsub_pb2.BulkPublishResponse:
    """Envelope every entry (any failure fails the call), then publish each; broker failures come back."""
    # Unknown pubsub, empty topic or a topic out of scope fails the whole call.
    broker = ops.publisher(request.pubsub_name, request.topic)
    _check_entries(request)
    messages = []
    for entry in request.entries:
        metadata = dict(request.metadata) | dict(entry.metadata)  # entry keys win, as in daprd
        # A child span per entry: each CloudEvent carries its own traceparent, as daprd's do.
        with ctx.tracer.start_as_current_span(f"/dapr.proto.runtime.v1.Dapr/{rpc}/", kind=SpanKind.PRODUCER):
            data = ops.message(request.pubsub_name, request.topic, entry.event, entry.content_type, metadata)
        messages.append((entry.entry_id, data, metadata))
    failed = []
    for entry_id, data, metadata in messages:
        try:
            await broker.publish(request.topic, data, metadata)
        except SidecarError as err:
            error = _status.pubsub_publish_failed(
                request.pubsub_name, ops.kinds.get(request.pubsub_name, "pubsub"), request.topic, err
            )
            failed.append(pubsub_pb2.BulkPublishResponseFailedEntry(entry_id=entry_id, error=error.message))
    return pubsub_pb2.BulkPublishResponse(failedEntries=failed)
