"""Pub/sub both ways: publishing typed events, and delivering the sidecar's events to handlers.

This is the one place where a handler's outcome (return, `Retry`, `Drop`, any other error) becomes
Dapr's `TopicEventResponse`, and where the trace of a delivery is joined to its publisher's.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
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
from chassis._metrics import record_duplicate, record_event_lag, record_handled, record_undeliverable
from chassis._middleware import Call, Middleware, Next, chain
from chassis._resilience import grpc_code_of
from chassis._telemetry import context_from_traceparent, current_traceparent, trace_id_of

M = TypeVar("M", bound=Message)
Handler = Callable[[M, EventContext], Awaitable[None]]

if TYPE_CHECKING:
    from chassis._inbox import Inbox

    Outcome: TypeAlias = callback_v1.TopicEventResponse.TopicEventResponseStatus.ValueType

_Response = callback_v1.TopicEventResponse
SUCCESS, RETRY, DROP = _Response.SUCCESS, _Response.RETRY, _Response.DROP

_log = logging.getLogger("chassis.pubsub")
_tracer = trace.get_tracer("chassis")

# gRPC metadata that belongs to the transport or to tracing, not to the message.
_TRANSPORT_KEYS = frozenset({"traceparent", "tracestate", "user-agent", "content-type", "te"})


@dataclass(frozen=True)
class Subscription(Generic[M]):
    """One handler for the events of one topic (all of them, or those its route selects)."""

    pubsub: str
    topic: str
    event: type[M]
    handler: Handler[M]
    dead_letter_topic: str | None = None
    match: str | None = None  # a CEL rule over the CloudEvent; None: `event.type == <the event's type>`
    default: bool = False  # the topic's default route: what no rule selects
    inbox: Inbox | None = None  # None: no inbox and no ctx.work (a bare registry, as in tests)

    def rule(self) -> str | None:
        """The routing rule this handler is declared under; None for the default route."""
        if self.default:
            return None
        return self.match if self.match is not None else f'event.type == "{event_type_of(self.event)}"'


@dataclass(frozen=True)
class BulkSubscription(Generic[M]):
    """One handler for a topic's events in batches (Dapr's bulkSubscribe)."""

    pubsub: str
    topic: str
    event: type[M]
    handler: BulkHandler[M]
    max_messages: int = 100
    max_await_ms: int = 1000
    dead_letter_topic: str | None = None
    inbox: Inbox | None = None

    def __post_init__(self) -> None:
        if self.max_messages < 1 or self.max_await_ms < 1:
            raise ConfigError(
                f"subscribe_bulk({self.topic!r}): max_messages and max_await_ms must be positive, "
                f"got {self.max_messages} and {self.max_await_ms}"
            )


@dataclass
class BulkEvent(Generic[M]):
    """One event of a batch, with its context; SUCCESS unless the handler calls `retry` or `drop`."""

    event: M
    ctx: EventContext
    outcome: Retry | Drop | None = None

    def retry(self, reason: str) -> None:
        """Have this event delivered again later (Dapr's RETRY for this entry)."""
        self.outcome = Retry(reason)

    def drop(self, reason: str) -> None:
        """Give up on this event (DROP for this entry; dead-lettered where configured)."""
        self.outcome = Drop(reason)


BulkHandler = Callable[[Sequence[BulkEvent[M]]], Awaitable[None]]
DEFAULT_PATH = "default"


class SubscriptionRegistry:
    """The subscriptions a service declares; answers ListTopicSubscriptions and finds a delivery's handler.

    Several handlers may share a topic, one route each: a rule per handler (by default
    `event.type == "<its event's type>"`, else its `match`), in the order declared, plus at most one
    default route. A topic's only handler, declared without `match`, takes all of the topic's events.
    """

    def __init__(self, middleware: Sequence[Middleware] = ()) -> None:
        self.middleware = middleware  # the service's live list, around every handler
        self._by_topic: dict[tuple[str, str], list[Subscription[Any]]] = {}
        self._bulk: dict[tuple[str, str], BulkSubscription[Any]] = {}

    def add(self, subscription: Subscription[Any]) -> None:
        key = (subscription.pubsub, subscription.topic)
        where = f"topic {subscription.topic!r} on {subscription.pubsub!r}"
        if key in self._bulk:
            raise ConfigError(f"{where} has a bulk handler, which takes all of its events")
        if subscription.default and subscription.match is not None:
            raise ConfigError(f"{where}: a handler is either the default route or has a match, not both")
        handlers = [*self._by_topic.get(key, []), subscription]
        rules = [handler.rule() for handler in handlers] if len(handlers) > 1 else []
        if len(set(rules)) != len(rules):
            route = "the default route" if subscription.rule() is None else repr(subscription.rule())
            raise ConfigError(f"{where} already has a handler for {route}")
        dead_letters = {h.dead_letter_topic for h in handlers if h.dead_letter_topic}
        if len(dead_letters) > 1:
            raise ConfigError(
                f"{where}: its handlers name different dead-letter topics {sorted(dead_letters)}"
            )
        self._by_topic[key] = handlers

    def add_bulk(self, subscription: BulkSubscription[Any]) -> None:
        key = (subscription.pubsub, subscription.topic)
        if key in self._by_topic or key in self._bulk:
            raise ConfigError(
                f"topic {subscription.topic!r} on {subscription.pubsub!r} already has a handler: "
                "a bulk handler takes all of a topic's events"
            )
        self._bulk[key] = subscription

    def __iter__(self) -> Iterator[Subscription[Any] | BulkSubscription[Any]]:
        for handlers in self._by_topic.values():
            yield from handlers
        yield from self._bulk.values()

    def find(self, pubsub: str, topic: str, path: str = "") -> Subscription[Any] | None:
        """The handler of the route `path` (what the sidecar's routing rules chose)."""
        return self._routes(self._by_topic.get((pubsub, topic), [])).get(path)

    def find_bulk(self, pubsub: str, topic: str) -> BulkSubscription[Any] | None:
        return self._bulk.get((pubsub, topic))

    def as_response(self) -> callback_v1.ListTopicSubscriptionsResponse:
        subscriptions = []
        for (pubsub, topic), handlers in self._by_topic.items():
            paths = self._routes(handlers)
            rules = [
                callback_v1.TopicRule(match=handler.rule() or "", path=path)
                for path, handler in paths.items()
                if path not in ("", DEFAULT_PATH)
            ]
            subscriptions.append(
                callback_v1.TopicSubscription(
                    pubsub_name=pubsub,
                    topic=topic,
                    dead_letter_topic=_dead_letter_topic(handlers),
                    routes=callback_v1.TopicRoutes(
                        rules=rules, default=DEFAULT_PATH if DEFAULT_PATH in paths else ""
                    ),
                )
            )
        for bulk in self._bulk.values():
            config = callback_v1.BulkSubscribeConfig(
                enabled=True, max_messages_count=bulk.max_messages, max_await_duration_ms=bulk.max_await_ms
            )
            subscriptions.append(
                callback_v1.TopicSubscription(
                    pubsub_name=bulk.pubsub,
                    topic=bulk.topic,
                    dead_letter_topic=bulk.dead_letter_topic or "",
                    bulk_subscribe=config,
                )
            )
        return callback_v1.ListTopicSubscriptionsResponse(subscriptions=subscriptions)

    @staticmethod
    def _routes(handlers: Sequence[Subscription[Any]]) -> dict[str, Subscription[Any]]:
        """Route path -> handler: '' for a topic's only plain handler, else a path per rule, in order."""
        if len(handlers) == 1 and handlers[0].match is None:
            return {"": handlers[0]}
        return {
            DEFAULT_PATH if handler.default else f"route-{n}": handler for n, handler in enumerate(handlers)
        }


def _dead_letter_topic(handlers: Sequence[Subscription[Any]]) -> str:
    return next((h.dead_letter_topic for h in handlers if h.dead_letter_topic), "")


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
            await dapr.call(send, component=pubsub)
        except ChassisError:
            raise
        except Exception as err:
            raise PublishError(f"publish to {pubsub}/{topic} failed: {grpc_code_of(err)}: {err}") from err
    return event_id


async def deliver(
    registry: SubscriptionRegistry, request: callback_v1.TopicEventRequest, metadata: Mapping[str, str]
) -> callback_v1.TopicEventResponse:
    """Run the handler of the event's route and answer SUCCESS, RETRY or DROP."""
    subscription = registry.find(request.pubsub_name, request.topic, request.path)
    if subscription is None:
        _log.warning(
            "no handler for %s/%s path %r: dropping", request.pubsub_name, request.topic, request.path
        )
        record_undeliverable(request.topic)
        return callback_v1.TopicEventResponse(status=DROP)
    context = _event_context(request, metadata)
    event = _parse(request.data, subscription.event, context)
    if event is None:
        return callback_v1.TopicEventResponse(status=DROP)
    status = await _run_handler(subscription, event, context, registry.middleware)
    return callback_v1.TopicEventResponse(status=status)


def _parse(data: bytes, model: type[M], context: EventContext) -> M | None:
    """The event's data as `model`; None (logged, counted) when it is not one, so it is dropped."""
    try:
        return message_from_json(data, model)
    except (json_format.ParseError, UnicodeDecodeError) as err:
        _log.error("event %s on %s is not a %s, dropping: %s", context.id, context.topic, model, err)
        record_undeliverable(context.topic)
        return None


async def _run_handler(
    subscription: Subscription[Any], event: Message, context: EventContext, middleware: Sequence[Middleware]
) -> Outcome:
    with _consumer_span(context) as span:
        started = time.perf_counter()
        record_event_lag(context.topic, context.extensions.get("time"))
        status = await _outcome(subscription, event, context, span, middleware)
        outcome = _Response.TopicEventResponseStatus.Name(status)
        span.set_attribute("chassis.outcome", outcome)
        record_handled(context.topic, outcome, time.perf_counter() - started)
        return status


def _consumer_span(context: EventContext, *, batch: int | None = None) -> AbstractContextManager[trace.Span]:
    attributes: dict[str, str | int] = {
        "messaging.system": "dapr",
        "messaging.destination.name": context.topic,
        "messaging.message.id": context.id,
        "cloudevents.event_type": context.type,
    }
    if batch is not None:
        attributes["messaging.batch.message_count"] = batch
    return _tracer.start_as_current_span(
        f"handle {context.topic}",
        context=_parent_for(context.traceparent),
        kind=SpanKind.CONSUMER,
        attributes=attributes,
        record_exception=False,
    )


async def _outcome(
    subscription: Subscription[Any],
    event: Message,
    context: EventContext,
    span: trace.Span,
    middleware: Sequence[Middleware],
) -> Outcome:
    """The mapping itself: return -> SUCCESS, Retry -> RETRY, Drop -> DROP, any other error -> RETRY.

    With an inbox, an event already handled is SUCCESS without running the handler, and the handler's
    `ctx.work` is committed with the event's marker once it returns (see chassis/_inbox.py).
    """
    inbox = subscription.inbox
    try:
        if inbox is not None:
            context = inbox.open(context)
            if await inbox.handled(context):
                _skip_duplicate(context, span, "its marker is in the inbox")
                return SUCCESS
        await chain(middleware, _handler_endpoint(subscription, context))(
            Call("consume", context.topic, event, dict(context.metadata), event=context)
        )
        if inbox is not None and not await inbox.complete(context):
            _skip_duplicate(context, span, "another delivery committed it first")
    except Exception as err:
        return _failure(err, f"event {context.id} on {context.topic}", span)
    return SUCCESS


def _failure(err: Exception, what: str, span: trace.Span) -> Outcome:
    """What a handler's error answers: Retry -> RETRY, Drop -> DROP, any other error -> RETRY.

    Called from an `except` block, so an unexpected error is logged with its traceback.
    """
    if isinstance(err, Retry):
        _log.info("handler asked to retry %s: %s", what, err)
        return RETRY
    if isinstance(err, Drop):
        _log.warning("handler dropped %s: %s", what, err)
        return DROP
    _log.exception("handler failed on %s; it will be redelivered", what)
    span.record_exception(err)
    span.set_status(Status(StatusCode.ERROR, str(err)))
    return RETRY


def _handler_endpoint(subscription: Subscription[Any], context: EventContext) -> Next:
    """The end of the consume chain: the handler, on the event as the middlewares pass it on."""

    async def handle(call: Call) -> None:
        await subscription.handler(call.message, context)

    return handle


async def deliver_bulk(
    registry: SubscriptionRegistry, request: callback_v1.TopicEventBulkRequest, metadata: Mapping[str, str]
) -> callback_v1.TopicEventBulkResponse:
    """Run the bulk handler on a batch and answer one status per entry (Dapr counts a missing one RETRY)."""
    subscription = registry.find_bulk(request.pubsub_name, request.topic)
    statuses: dict[str, Outcome] = {}
    batch: list[tuple[str, BulkEvent[Any]]] = []
    for entry in request.entries:
        if subscription is None:
            statuses[entry.entry_id] = DROP
            record_undeliverable(request.topic)
            continue
        context = _bulk_entry_context(request, entry, metadata)
        data = entry.cloud_event.data if entry.WhichOneof("event") == "cloud_event" else entry.bytes
        event = _parse(data, subscription.event, context)
        if event is None:
            statuses[entry.entry_id] = DROP
        else:
            batch.append((entry.entry_id, BulkEvent(event, context)))
    if subscription is None:
        _log.warning("no bulk handler for %s/%s: dropping the batch", request.pubsub_name, request.topic)
    elif batch:
        statuses.update(await _run_bulk_handler(subscription, batch, registry.middleware))
    return callback_v1.TopicEventBulkResponse(
        statuses=[
            callback_v1.TopicEventBulkResponseEntry(entry_id=entry_id, status=status)
            for entry_id, status in statuses.items()
        ]
    )


async def _run_bulk_handler(
    subscription: BulkSubscription[Any],
    batch: list[tuple[str, BulkEvent[Any]]],
    middleware: Sequence[Middleware],
) -> dict[str, Outcome]:
    with _consumer_span(batch[0][1].ctx, batch=len(batch)) as span:
        started = time.perf_counter()
        for _, item in batch:
            record_event_lag(item.ctx.topic, item.ctx.extensions.get("time"))
        statuses = await _bulk_outcomes(subscription, batch, span, middleware)
        seconds = time.perf_counter() - started
        for status in statuses.values():
            record_handled(subscription.topic, _Response.TopicEventResponseStatus.Name(status), seconds)
        return statuses


async def _bulk_outcomes(
    subscription: BulkSubscription[Any],
    batch: list[tuple[str, BulkEvent[Any]]],
    span: trace.Span,
    middleware: Sequence[Middleware],
) -> dict[str, Outcome]:
    """Per entry: duplicates SUCCESS unseen; then the handler's `retry`/`drop`, else SUCCESS once committed.

    An exception from the handler answers for the whole batch: Retry -> RETRY, Drop -> DROP, else RETRY.
    Middleware sees the batch as one consume call whose message is None (as a request stream).
    """
    inbox = subscription.inbox
    statuses: dict[str, Outcome] = {}
    try:
        if inbox is not None:
            for _, item in batch:
                item.ctx = inbox.open(item.ctx)
            seen = await inbox.handled_among([item.ctx for _, item in batch])
            for entry_id, item in batch:
                if item.ctx.id in seen:
                    _skip_duplicate(item.ctx, span, "its marker is in the inbox")
                    statuses[entry_id] = SUCCESS
            batch = [(entry_id, item) for entry_id, item in batch if entry_id not in statuses]
        if batch:
            items = [item for _, item in batch]

            async def handle(call: Call) -> None:
                await subscription.handler(items)

            await chain(middleware, handle)(Call("consume", subscription.topic, None))
    except Exception as err:
        status = _failure(err, f"a batch of {len(batch)} events on {subscription.topic}", span)
        return statuses | {entry_id: status for entry_id, _ in batch}
    outcomes = await asyncio.gather(*(_bulk_entry_outcome(inbox, item, span) for _, item in batch))
    return statuses | {entry_id: status for (entry_id, _), status in zip(batch, outcomes, strict=True)}


async def _bulk_entry_outcome(inbox: Inbox | None, item: BulkEvent[Any], span: trace.Span) -> Outcome:
    ctx = item.ctx
    if item.outcome is not None:  # the handler's `retry` or `drop` of this entry
        return _failure(item.outcome, f"event {ctx.id} on {ctx.topic}", span)
    if inbox is None:
        return SUCCESS
    try:
        if not await inbox.complete(ctx):
            _skip_duplicate(ctx, span, "another delivery committed it first")
    except Exception:
        _log.exception(
            "committing the effects of event %s on %s failed; it will be redelivered", ctx.id, ctx.topic
        )
        return RETRY
    return SUCCESS


def _skip_duplicate(context: EventContext, span: trace.Span, why: str) -> None:
    _log.info("event %s on %s was handled already (%s): acknowledged", context.id, context.topic, why)
    span.set_attribute("chassis.duplicate", True)
    record_duplicate(context.topic)


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


def _bulk_entry_context(
    request: callback_v1.TopicEventBulkRequest,
    entry: callback_v1.TopicEventBulkRequestEntry,
    metadata: Mapping[str, str],
) -> EventContext:
    """The context of one entry: its CloudEvent (a raw entry has none: its entry id stands for the id)."""
    cloud_event = entry.cloud_event
    extensions = json_format.MessageToDict(cloud_event.extensions)
    message_metadata = dict(entry.metadata)
    traceparent = (
        extensions.get("traceparent") or message_metadata.get("traceparent") or metadata.get("traceparent")
    )
    return EventContext(
        id=cloud_event.id or entry.entry_id,
        type=cloud_event.type,
        source=cloud_event.source,
        topic=request.topic,
        pubsub=request.pubsub_name,
        traceparent=str(traceparent or "") or None,
        metadata={k: v for k, v in message_metadata.items() if _is_message_metadata(k)},
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

    async def OnBulkTopicEvent(
        self, request: callback_v1.TopicEventBulkRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> callback_v1.TopicEventBulkResponse:
        metadata = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        return await deliver_bulk(self._registry, request, metadata)

    async def OnJobEvent(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await _unimplemented(context, "OnJobEvent: this service schedules no jobs")


async def _unimplemented(context: grpc.aio.ServicerContext[Any, Any], what: str) -> None:
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, what)
