"""Pub/sub both ways: publishing typed events, and delivering the sidecar's events to handlers.

This is the one place where a handler's outcome (return, `Retry`, `Drop`, any other error) becomes
Dapr's `TopicEventResponse`, and where the trace of a delivery is joined to its publisher's.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeAlias, TypeVar

import grpc
from dapr.aio.clients import DaprClient
from dapr.proto.runtime.v1 import appcallback_pb2 as callback_v1
from dapr.proto.runtime.v1 import appcallback_pb2_grpc as callback_grpc
from google.protobuf import empty_pb2, json_format
from google.protobuf.message import Message
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode

from chassis._bindings import BindingEvent, InputBindingRegistry
from chassis._dapr import Dapr
from chassis._errors import ChassisError, ConfigError, Drop, PublishError, Retry
from chassis._events import JSON_CONTENT_TYPE, EventContext, event_to_json, event_type_of, message_from_json
from chassis._metrics import record_event_lag, record_handled, record_undeliverable
from chassis._middleware import Call, Middleware, chain
from chassis._resilience import grpc_code_of
from chassis._telemetry import context_from_traceparent, current_traceparent, trace_id_of

M = TypeVar("M", bound=Message)
Handler = Callable[[M, EventContext], Awaitable[None]]

if TYPE_CHECKING:
    Outcome: TypeAlias = callback_v1.TopicEventResponse.TopicEventResponseStatus.ValueType

_Response = callback_v1.TopicEventResponse
SUCCESS, RETRY, DROP = _Response.SUCCESS, _Response.RETRY, _Response.DROP

_log = logging.getLogger("chassis.pubsub")
_tracer = trace.get_tracer("chassis")

# gRPC metadata that belongs to the transport or to tracing, not to the message.
_TRANSPORT_KEYS = frozenset({"traceparent", "tracestate", "user-agent", "content-type", "te"})


@dataclass(frozen=True)
class Subscription(Generic[M]):
    """One handler for the events of one topic."""

    pubsub: str
    topic: str
    event: type[M]
    handler: Handler[M]
    dead_letter_topic: str | None = None


class SubscriptionRegistry:
    """The subscriptions a service declares; answers the sidecar's ListTopicSubscriptions."""

    def __init__(self) -> None:
        self._by_topic: dict[tuple[str, str], Subscription[Any]] = {}

    def add(self, subscription: Subscription[Any]) -> None:
        key = (subscription.pubsub, subscription.topic)
        if key in self._by_topic:
            raise ConfigError(
                f"topic {subscription.topic!r} on {subscription.pubsub!r} already has a handler"
            )
        self._by_topic[key] = subscription

    def __iter__(self) -> Iterator[Subscription[Any]]:
        return iter(self._by_topic.values())

    def find(self, pubsub: str, topic: str) -> Subscription[Any] | None:
        return self._by_topic.get((pubsub, topic))

    def as_response(self) -> callback_v1.ListTopicSubscriptionsResponse:
        return callback_v1.ListTopicSubscriptionsResponse(
            subscriptions=[
                callback_v1.TopicSubscription(
                    pubsub_name=sub.pubsub, topic=sub.topic, dead_letter_topic=sub.dead_letter_topic or ""
                )
                for sub in self._by_topic.values()
            ]
        )


class Publisher(Generic[M]):
    """Publishes events of one type to one topic; declared when the service is built (`Service.publisher`).

    Declaring publications up front makes them part of the service's contract, checked like its RPCs.
    """

    def __init__(
        self,
        dapr: Dapr,
        event: type[M],
        *,
        pubsub: str,
        topic: str,
        middleware: Sequence[Middleware] = (),
    ) -> None:
        self.event = event
        self.event_type = event_type_of(event)  # fails at start-up, not at the first publish
        self.pubsub = pubsub
        self.topic = topic
        self._dapr = dapr
        self._middleware = middleware  # the service's live list

    async def publish(
        self, event: M, *, event_id: str | None = None, metadata: Mapping[str, str] | None = None
    ) -> str:
        """Publish `event` as a CloudEvent of its declared type, through the service's middleware.

        Returns the event id (see `publish`).
        """

        async def send(call: Call) -> str:
            return await publish(
                self._dapr,
                event,
                pubsub=self.pubsub,
                topic=self.topic,
                event_id=event_id,
                metadata=call.metadata,
            )

        call = Call("publish", self.topic, event, dict(metadata or {}))
        event_id_sent: str = await chain(self._middleware, send)(call)
        return event_id_sent


async def publish(
    dapr: Dapr,
    event: Message,
    *,
    pubsub: str,
    topic: str,
    event_id: str | None = None,
    metadata: Mapping[str, str] | None = None,
) -> str:
    """Publish `event` as a CloudEvent of its declared type; returns the CloudEvent id.

    The id is fixed before the first attempt, so a retried publish is a duplicate consumers can
    recognise, never a second event.
    """
    event_type = event_type_of(event)
    event_id = event_id or str(uuid.uuid4())
    attributes = {
        "messaging.system": "dapr",
        "messaging.destination.name": topic,
        "messaging.message.id": event_id,
    }
    with _tracer.start_as_current_span(f"publish {topic}", kind=SpanKind.PRODUCER, attributes=attributes):
        publish_metadata = {**(metadata or {}), "cloudevent.type": event_type, "cloudevent.id": event_id}
        traceparent = current_traceparent()
        if traceparent:
            publish_metadata["cloudevent.traceparent"] = traceparent
        data = event_to_json(event)

        async def send(client: DaprClient) -> object:
            return await client.publish_event(
                pubsub_name=pubsub,
                topic_name=topic,
                data=data,
                publish_metadata=publish_metadata,
                data_content_type=JSON_CONTENT_TYPE,
            )

        try:
            await dapr.call(send)
        except ChassisError:
            raise
        except Exception as err:
            raise PublishError(f"publish to {pubsub}/{topic} failed: {grpc_code_of(err)}: {err}") from err
    return event_id


async def deliver(
    registry: SubscriptionRegistry, request: callback_v1.TopicEventRequest, metadata: Mapping[str, str]
) -> callback_v1.TopicEventResponse:
    """Run the handler for one delivered event and answer SUCCESS, RETRY or DROP."""
    subscription = registry.find(request.pubsub_name, request.topic)
    if subscription is None or request.path:
        _log.warning(
            "no handler for %s/%s path %r: dropping", request.pubsub_name, request.topic, request.path
        )
        record_undeliverable(request.topic)
        return callback_v1.TopicEventResponse(status=DROP)
    context = _event_context(request, metadata)
    try:
        event = message_from_json(request.data, subscription.event)
    except (json_format.ParseError, UnicodeDecodeError) as err:
        _log.error(
            "event %s on %s is not a %s, dropping: %s", context.id, context.topic, subscription.event, err
        )
        record_undeliverable(request.topic)
        return callback_v1.TopicEventResponse(status=DROP)
    status = await _run_handler(subscription, event, context)
    return callback_v1.TopicEventResponse(status=status)


async def _run_handler(subscription: Subscription[Any], event: Message, context: EventContext) -> Outcome:
    attributes = {
        "messaging.system": "dapr",
        "messaging.destination.name": context.topic,
        "messaging.message.id": context.id,
        "cloudevents.event_type": context.type,
    }
    with _tracer.start_as_current_span(
        f"handle {context.topic}",
        context=_parent_for(context.traceparent),
        kind=SpanKind.CONSUMER,
        attributes=attributes,
        record_exception=False,
    ) as span:
        started = time.perf_counter()
        record_event_lag(context.topic, context.extensions.get("time"))
        status = await _outcome(subscription, event, context, span)
        outcome = _Response.TopicEventResponseStatus.Name(status)
        span.set_attribute("chassis.outcome", outcome)
        record_handled(context.topic, outcome, time.perf_counter() - started)
        return status


async def _outcome(
    subscription: Subscription[Any], event: Message, context: EventContext, span: trace.Span
) -> Outcome:
    """The mapping itself: return -> SUCCESS, Retry -> RETRY, Drop -> DROP, any other error -> RETRY."""
    try:
        await subscription.handler(event, context)
    except Retry as outcome:
        _log.info("handler asked to retry event %s on %s: %s", context.id, context.topic, outcome)
        return RETRY
    except Drop as outcome:
        _log.warning("handler dropped event %s on %s: %s", context.id, context.topic, outcome)
        return DROP
    except Exception as err:
        _log.exception("handler failed on event %s on %s; it will be redelivered", context.id, context.topic)
        span.record_exception(err)
        span.set_status(Status(StatusCode.ERROR, str(err)))
        return RETRY
    return SUCCESS


def _parent_for(traceparent: str | None) -> Context | None:
    """Nest under the current (delivery) span when it already is in the event's trace, else join the event's.

    The sidecar's delivery span normally continues the publisher's trace; if it did not, the event's
    own traceparent wins, so the handler always shares the publisher's trace id.
    """
    event_trace = trace_id_of(traceparent)
    current = trace.get_current_span().get_span_context()
    if event_trace is None or (current.is_valid and trace.format_trace_id(current.trace_id) == event_trace):
        return None
    return context_from_traceparent(traceparent)


def _event_context(request: callback_v1.TopicEventRequest, metadata: Mapping[str, str]) -> EventContext:
    extensions = json_format.MessageToDict(request.extensions)
    traceparent = str(extensions.get("traceparent") or metadata.get("traceparent") or "") or None
    return EventContext(
        id=request.id,
        type=request.type,
        source=request.source,
        topic=request.topic,
        pubsub=request.pubsub_name,
        traceparent=traceparent,
        metadata={k: v for k, v in metadata.items() if _is_message_metadata(k)},
        extensions=extensions,
    )


def _is_message_metadata(key: str) -> bool:
    return not (key in _TRANSPORT_KEYS or key.startswith(("grpc-", ":")) or key.endswith("-bin"))


class AppCallback(callback_grpc.AppCallbackServicer):
    """The app side of Dapr's gRPC protocol: subscriptions and event delivery; the rest is UNIMPLEMENTED."""

    def __init__(self, registry: SubscriptionRegistry, bindings: InputBindingRegistry | None = None) -> None:
        self._registry = registry
        self._bindings = bindings or InputBindingRegistry()

    async def ListTopicSubscriptions(
        self, request: empty_pb2.Empty, context: grpc.aio.ServicerContext[Any, Any]
    ) -> callback_v1.ListTopicSubscriptionsResponse:
        return self._registry.as_response()

    async def OnTopicEvent(
        self, request: callback_v1.TopicEventRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> callback_v1.TopicEventResponse:
        metadata = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        return await deliver(self._registry, request, metadata)

    async def ListInputBindings(
        self, request: empty_pb2.Empty, context: grpc.aio.ServicerContext[Any, Any]
    ) -> callback_v1.ListInputBindingsResponse:
        return callback_v1.ListInputBindingsResponse(bindings=self._bindings.names())

    async def OnBindingEvent(
        self, request: callback_v1.BindingEventRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> callback_v1.BindingEventResponse:
        event = BindingEvent(request.name, bytes(request.data), dict(request.metadata))
        failed = await self._bindings.deliver(event)
        if failed is not None:  # the binding's retry policy, in the sidecar, decides what comes next
            await context.abort(failed, f"the handler of input binding {request.name} failed")
        return callback_v1.BindingEventResponse()

    async def OnInvoke(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await _unimplemented(context, "OnInvoke: call this service's own gRPC methods (Dapr gRPC proxying)")

    async def OnBulkTopicEvent(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await _unimplemented(context, "OnBulkTopicEvent: this service subscribes without bulk")

    async def OnJobEvent(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await _unimplemented(context, "OnJobEvent: this service schedules no jobs")


async def _unimplemented(context: grpc.aio.ServicerContext[Any, Any], what: str) -> None:
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, what)
