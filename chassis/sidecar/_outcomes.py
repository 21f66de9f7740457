"""What one delivery attempt hands to an app channel, and daprd's rules for reading the answer.

Shared by every channel (gRPC app, HTTP app, streaming subscription) so SUCCESS/RETRY/DROP mean the
same thing everywhere: UNIMPLEMENTED (gRPC) and 404 (HTTP) drop, any other failure retries.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
from dapr.proto.runtime.v1 import appcallback_pb2
from opentelemetry import trace

log = logging.getLogger("chassis.sidecar.delivery")

_STATUS = appcallback_pb2.TopicEventResponse.TopicEventResponseStatus


class Outcome(enum.Enum):
    """What happens to a message after one delivery attempt."""

    ACK = "ack"
    RETRY = "retry"
    DROP = "drop"
    REQUEUE = "requeue"  # the subscriber went away (a stream closed): back to the broker, not a failure


@dataclass(frozen=True)
class Delivery:
    """One routed event on its way to the app."""

    pubsub: str
    topic: str  # the topic the message was read from (a dead-letter topic for DLQ deliveries)
    path: str  # the matched route
    event: dict[str, Any]  # the CloudEvent
    body: bytes  # the CloudEvent JSON as stored (HTTP apps get these bytes)
    metadata: dict[str, str] = field(default_factory=dict)
    raw: bool = False  # published with rawPayload: the event wraps the bytes
    entry_id: str = ""  # unique within a bulk request
    span: trace.SpanContext = trace.INVALID_SPAN_CONTEXT

    @property
    def id(self) -> str:
        value = self.event.get("id")
        return value if isinstance(value, str) else ""


class Sink(Protocol):
    """Where a subscription's events go: the app channel or a streaming subscription."""

    async def deliver(self, delivery: Delivery) -> Outcome: ...

    async def deliver_bulk(self, batch: list[Delivery]) -> list[Outcome]: ...


def error_outcome(event_id: str, code: grpc.StatusCode, details: str) -> Outcome:
    """A gRPC error from the app: UNIMPLEMENTED drops, anything else retries."""
    if code == grpc.StatusCode.UNIMPLEMENTED:
        log.warning(
            "non-retriable error returned from app while processing pub/sub event %s: %s", event_id, details
        )
        return Outcome.DROP
    log.info("error returned from app while processing pub/sub event %s: %s %s", event_id, code.name, details)
    return Outcome.RETRY


def status_outcome(event_id: str, status: int) -> Outcome:
    """TopicEventResponse.status: SUCCESS (or unset) acks, RETRY retries, DROP drops, unknown retries."""
    if status == _STATUS.SUCCESS:
        return Outcome.ACK
    if status == _STATUS.RETRY:
        log.info("RETRY status returned from app while processing pub/sub event %s", event_id)
        return Outcome.RETRY
    if status == _STATUS.DROP:
        log.warning("DROP status returned from app while processing pub/sub event %s", event_id)
        return Outcome.DROP
    log.warning(
        "unknown status returned from app while processing pub/sub event %s, status: %s", event_id, status
    )
    return Outcome.RETRY
