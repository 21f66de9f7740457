"""The gRPC app channel: `AppCallback` calls daprd makes to a `--app-protocol grpc` app.

ListTopicSubscriptions (UNIMPLEMENTED = none), OnTopicEvent, and OnBulkTopicEvent falling back to
`AppCallbackAlpha.OnBulkTopicEventAlpha1` on UNIMPLEMENTED, with daprd's status rules
(SUCCESS/empty ack, RETRY or a gRPC error retry, DROP or UNIMPLEMENTED drop).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping

import grpc
import grpc.aio
from dapr.proto.runtime.v1 import appcallback_pb2, appcallback_pb2_grpc
from google.protobuf import empty_pb2
from opentelemetry import trace

from chassis.sidecar import _cloudevents as ce
from chassis.sidecar._auth import app_interceptors
from chassis.sidecar._outcomes import Delivery, Outcome, error_outcome, status_outcome
from chassis.sidecar._subscriptions import Subscription, from_topic_subscription, parse_each
from chassis.sidecar._tracing import grpc_trace_bin, traceparent, tracestate

log = logging.getLogger("chassis.sidecar.delivery")

CALL_TIMEOUT = 60.0  # one OnTopicEvent call
# Reconnect fast when the app restarts on the same port (gRPC's default back-off grows to minutes).
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]
_METADATA_KEY_CHARS = frozenset("0123456789abcdefghijklmnopqrstuvwxyz_.-")
_TRACE_KEYS = frozenset({"traceparent", "tracestate", "grpc-trace-bin"})


class Unanswered(Exception):
    """The app did not answer ListTopicSubscriptions (yet)."""


def app_metadata(
    message: Mapping[str, str], pubsub: str, span: trace.SpanContext
) -> list[tuple[str, str | bytes]]:
    """gRPC metadata for OnTopicEvent: the message metadata, pubsubName, and the delivery span's context."""
    metadata: list[tuple[str, str | bytes]] = [("pubsubname", pubsub)]
    for key, value in message.items():
        key = key.lower()
        # gRPC only carries lowercase token keys and printable ASCII values; the rest stays in the broker.
        if key in _TRACE_KEYS or key == "pubsubname" or not key or not set(key) <= _METADATA_KEY_CHARS:
            continue
        if key.endswith("-bin") or key.startswith("grpc-") or not value.isascii() or not value.isprintable():
            continue
        metadata.append((key, value))
    metadata.append(("traceparent", traceparent(span)))
    if state := tracestate(span):
        metadata.append(("tracestate", state))
    metadata.append(("grpc-trace-bin", grpc_trace_bin(span)))
    return metadata


class GrpcApp:
    """Talks to the app's AppCallback service over one channel."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._channel = grpc.aio.insecure_channel(
            address,
            options=CHANNEL_OPTIONS,
            interceptors=app_interceptors(),  # APP_API_TOKEN
        )
        self._stub = appcallback_pb2_grpc.AppCallbackStub(self._channel)  # type: ignore[no-untyped-call]
        self._alpha = appcallback_pb2_grpc.AppCallbackAlphaStub(self._channel)  # type: ignore[no-untyped-call]
        self._bulk_alpha_only = False

    async def ready(self) -> bool:
        """True once the app's port accepts a gRPC connection (waits up to a second)."""
        try:
            await asyncio.wait_for(self._channel.channel_ready(), 1.0)
        except TimeoutError:
            return False
        return True

    async def subscriptions(self) -> list[Subscription]:
        """ListTopicSubscriptions (UNIMPLEMENTED = none); Unanswered while the app cannot answer."""
        try:
            response = await self._stub.ListTopicSubscriptions(empty_pb2.Empty(), timeout=5.0)
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.UNIMPLEMENTED:
                log.info("pubsub subscriptions: gRPC app does not implement ListTopicSubscriptions")
                return []
            raise Unanswered(f"{err.code().name}: {err.details()}") from None
        return parse_each(response.subscriptions, from_topic_subscription)

    async def deliver(self, delivery: Delivery) -> Outcome:
        """OnTopicEvent with the TopicEventRequest daprd builds."""
        try:
            request = ce.topic_event_request(
                delivery.event, topic=delivery.topic, pubsub=delivery.pubsub, path=delivery.path
            )
        except ce.EnvelopeError as err:
            log.warning("cannot read pub/sub event %s on topic %s: %s", delivery.id, delivery.topic, err)
            return Outcome.RETRY
        metadata = app_metadata(delivery.metadata, delivery.pubsub, delivery.span)
        try:
            response = await self._stub.OnTopicEvent(request, metadata=metadata, timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as err:
            trace.get_current_span().set_status(trace.Status(trace.StatusCode.ERROR, err.code().name))
            return error_outcome(request.id, err.code(), err.details() or "")
        return status_outcome(request.id, response.status)

    async def deliver_bulk(self, batch: list[Delivery]) -> list[Outcome]:
        """OnBulkTopicEvent (else OnBulkTopicEventAlpha1): one outcome per entry, a missing status = RETRY."""
        first = batch[0]
        entries = {d.entry_id: entry for d in batch if (entry := _bulk_entry(d)) is not None}
        if not entries:
            return [Outcome.RETRY] * len(batch)
        request = appcallback_pb2.TopicEventBulkRequest(
            id=str(uuid.uuid4()), topic=first.topic, pubsub_name=first.pubsub, path=first.path,
            type="com.dapr.event.sent.bulk", entries=list(entries.values()),
        )  # fmt: skip
        metadata = app_metadata({}, first.pubsub, first.span)
        try:
            response = await self._call_bulk(request, metadata)
        except grpc.aio.AioRpcError as err:
            outcome = error_outcome(request.id, err.code(), err.details() or "")
            return [outcome if d.entry_id in entries else Outcome.RETRY for d in batch]
        statuses = {entry.entry_id: entry.status for entry in response.statuses}
        return [
            status_outcome(d.id, statuses[d.entry_id]) if d.entry_id in statuses else Outcome.RETRY
            for d in batch
        ]

    async def _call_bulk(
        self, request: appcallback_pb2.TopicEventBulkRequest, metadata: list[tuple[str, str | bytes]]
    ) -> appcallback_pb2.TopicEventBulkResponse:
        if not self._bulk_alpha_only:
            try:
                response: appcallback_pb2.TopicEventBulkResponse = await self._stub.OnBulkTopicEvent(
                    request, metadata=metadata, timeout=CALL_TIMEOUT
                )
                return response
            except grpc.aio.AioRpcError as err:
                if err.code() != grpc.StatusCode.UNIMPLEMENTED:
                    raise
                self._bulk_alpha_only = True  # an older SDK: remember, as daprd does
        alpha: appcallback_pb2.TopicEventBulkResponse = await self._alpha.OnBulkTopicEventAlpha1(
            request, metadata=metadata, timeout=CALL_TIMEOUT
        )
        return alpha

    async def close(self) -> None:
        await self._channel.close(None)


def _bulk_entry(delivery: Delivery) -> appcallback_pb2.TopicEventBulkRequestEntry | None:
    """A CloudEvent entry (`cloud_event` unless the message was a raw payload); None if unreadable."""
    try:
        single = ce.topic_event_request(delivery.event, topic=delivery.topic, pubsub=delivery.pubsub, path="")
    except ce.EnvelopeError as err:  # left out of the request: no status, so it is retried
        log.warning("cannot read pub/sub event %s on topic %s: %s", delivery.id, delivery.topic, err)
        return None
    if delivery.raw:
        return appcallback_pb2.TopicEventBulkRequestEntry(
            entry_id=delivery.entry_id, bytes=single.data, content_type=single.data_content_type,
            metadata=delivery.metadata,
        )  # fmt: skip
    cloud_event = appcallback_pb2.TopicEventCERequest(
        id=single.id, source=single.source, type=single.type, spec_version=single.spec_version,
        data_content_type=single.data_content_type, data=single.data, extensions=single.extensions,
    )  # fmt: skip
    return appcallback_pb2.TopicEventBulkRequestEntry(
        entry_id=delivery.entry_id, cloud_event=cloud_event, content_type=single.data_content_type,
        metadata=delivery.metadata,
    )  # fmt: skip
