"""Delivery of pub/sub events to the app through `AppCallback.OnTopicEvent`, as daprd's gRPC subscriber does.

Once the app port answers, the app's `ListTopicSubscriptions` is read and each (pubsub, topic) becomes a
consumer group `app-id` in the broker. One loop per pubsub then claims leased messages and calls the app
(bounded concurrency); SUCCESS acks, RETRY or a gRPC error redelivers with exponential back-off, DROP or
UNIMPLEMENTED drops (to the subscription's dead-letter topic if it has one). A message whose lease runs
out (app hung, sidecar killed) is claimed again, so delivery is at-least-once.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
from dapr.proto.runtime.v1 import appcallback_pb2, appcallback_pb2_grpc
from google.protobuf import empty_pb2
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode

from chassis.sidecar import _cloudevents as ce
from chassis.sidecar._errors import SidecarError
from chassis.sidecar._grpc_api import SubscriptionInfo
from chassis.sidecar._resources import Resources
from chassis.sidecar._tracing import context_from_traceparent, grpc_trace_bin, traceparent, tracestate
from chassis.sidecar.components import Message, PubSub, meta_get, parse_duration

log = logging.getLogger("chassis.sidecar.delivery")

BACKOFF_START = 0.1  # seconds before the first redelivery
BACKOFF_FACTOR = 2.0
BACKOFF_CAP = 5.0  # unless the component sets redeliverInterval
MAX_IN_FLIGHT = 32  # per pubsub
CALL_TIMEOUT = 60.0  # one OnTopicEvent call
IDLE_WAIT = 1.0  # the broker notices other processes' commits within this (see PubSub.wait)
# Reconnect fast when the app restarts on the same port (gRPC's default back-off grows to minutes).
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]
_STATUS = appcallback_pb2.TopicEventResponse.TopicEventResponseStatus
_TYPE_EQUALS = re.compile(r"""^\s*event\.type\s*==\s*(?:"([^"\\]*)"|'([^'\\]*)')\s*$""")
_METADATA_KEY = re.compile(r"^[0-9a-z_.-]+$")
_TRACE_KEYS = frozenset({"traceparent", "tracestate", "grpc-trace-bin"})


class Outcome(enum.Enum):
    """What happens to a message after one delivery attempt."""

    ACK = "ack"
    RETRY = "retry"
    DROP = "drop"


Match = Callable[[Mapping[str, Any]], bool]


@dataclass(frozen=True)
class Route:
    """A routing rule; `match` None always matches (the default route)."""

    path: str
    match: Match | None = None


@dataclass(frozen=True)
class Subscription:
    """One programmatic subscription with its compiled routes."""

    pubsub: str
    topic: str
    metadata: dict[str, str]
    routes: tuple[Route, ...]
    dead_letter_topic: str
    info: SubscriptionInfo

    def route(self, event: Mapping[str, Any]) -> str | None:
        """The path of the first matching rule; None when nothing matches (daprd then drops)."""
        for rule in self.routes:
            if rule.match is None or rule.match(event):
                return rule.path
        return None


def _compile_match(expression: str, where: str) -> Match | None:
    """Compile a CEL `match`; only `event.type == "..."` is supported yet (None = always true)."""
    if not expression.strip():
        return None
    found = _TYPE_EQUALS.match(expression)
    if found:
        wanted = found.group(1) if found.group(1) is not None else found.group(2)
        return lambda event: event.get("type") == wanted
    log.warning(
        '%s: routing rule match %r is not supported by the embedded sidecar yet (only event.type == "...");'
        " the rule never matches, events go to later rules or the default route",
        where,
        expression,
    )
    return lambda event: False


def parse_subscription(sub: appcallback_pb2.TopicSubscription) -> Subscription:
    """daprd's parseRoutingRulesGRPC: rules in order, then the default, else path '' (gRPC default)."""
    where = f"subscription {sub.pubsub_name}/{sub.topic}"
    routes = [Route(rule.path, _compile_match(rule.match, where)) for rule in sub.routes.rules]
    if sub.routes.default:
        routes.append(Route(sub.routes.default))
    if not routes:
        routes.append(Route(""))
    rules = tuple((rule.match, rule.path) for rule in sub.routes.rules)
    if sub.routes.default:
        rules += (("", sub.routes.default),)
    info = SubscriptionInfo(sub.pubsub_name, sub.topic, dict(sub.metadata), rules, sub.dead_letter_topic)
    return Subscription(
        sub.pubsub_name, sub.topic, dict(sub.metadata), tuple(routes), sub.dead_letter_topic, info
    )


def backoff(attempts: int, cap: float) -> float:
    """Delay before redelivering a message that failed `attempts` times: 100 ms, x2, capped."""
    return float(min(cap, BACKOFF_START * BACKOFF_FACTOR ** max(0, attempts - 1)))


def app_metadata(
    message: Mapping[str, str], pubsub: str, span: trace.SpanContext
) -> list[tuple[str, str | bytes]]:
    """gRPC metadata for OnTopicEvent: the message metadata, pubsubName, and the delivery span's context."""
    metadata: list[tuple[str, str | bytes]] = [("pubsubname", pubsub)]
    for key, value in message.items():
        key = key.lower()
        # gRPC only carries lowercase token keys and printable ASCII values; the rest stays in the broker.
        if key in _TRACE_KEYS or key == "pubsubname" or not _METADATA_KEY.match(key) or key.endswith("-bin"):
            continue
        if key.startswith("grpc-") or not value.isascii() or not value.isprintable():
            continue
        metadata.append((key, value))
    metadata.append(("traceparent", traceparent(span)))
    if state := tracestate(span):
        metadata.append(("tracestate", state))
    metadata.append(("grpc-trace-bin", grpc_trace_bin(span)))
    return metadata


def _backoff_cap(resources: Resources, pubsub: str) -> float:
    for spec in resources.specs:
        if spec.name == pubsub and (text := meta_get(spec.metadata, "redeliverInterval")):
            return parse_duration(text)
    return BACKOFF_CAP


class Deliverer:
    """Feeds the app its subscribed events; one instance per sidecar with an app port."""

    def __init__(
        self,
        *,
        app_id: str,
        address: str,
        resources: Resources,
        tracer: trace.Tracer,
        ready: asyncio.Event | None = None,
    ) -> None:
        self.app_id = app_id
        self.address = address
        self.resources = resources
        self.tracer = tracer
        self.ready = ready or asyncio.Event()  # set once the app answered and is subscribed (healthz)
        self._subscriptions: list[Subscription] = []
        self._stopping = asyncio.Event()
        self._channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        self._stub = appcallback_pb2_grpc.AppCallbackStub(self._channel)  # type: ignore[no-untyped-call]
        self._task: asyncio.Task[None] | None = None
        self._loops: list[asyncio.Task[None]] = []
        self._grace = 0.0

    def subscriptions(self) -> list[SubscriptionInfo]:
        """The app's subscriptions, for the metadata API."""
        return [sub.info for sub in self._subscriptions]

    def start(self) -> None:
        """Begin in the background: wait for the app, subscribe, deliver."""
        self._task = asyncio.create_task(self._run(), name="delivery")
        self._task.add_done_callback(_report_crash)

    async def stop(self, grace: float) -> None:
        """Stop claiming, let in-flight deliveries finish for up to `grace` seconds, close the channel."""
        self._grace = grace
        self._stopping.set()
        tasks = [self._task, *self._loops] if self._task else []
        await asyncio.gather(*tasks, return_exceptions=True)  # a crash was logged when it happened
        await self._channel.close(None)

    async def _run(self) -> None:
        if not await self._wait_for_app():
            return
        subscriptions = await self._list_subscriptions()
        if subscriptions is None:
            return
        self._loops = await self._subscribe(subscriptions)
        self.ready.set()
        await asyncio.gather(*self._loops)

    async def _sleep(self, seconds: float) -> bool:
        """Sleep unless stopping; True when the sidecar is stopping."""
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def _wait_for_app(self) -> bool:
        """Wait until the app's port accepts a gRPC connection; False if stopped first."""
        log.info("waiting for the app on %s", self.address)
        while not self._stopping.is_set():
            try:
                await asyncio.wait_for(self._channel.channel_ready(), 1.0)
                log.info("app channel to %s is ready", self.address)
                return True
            except TimeoutError:
                continue
        return False

    async def _list_subscriptions(self) -> list[Subscription] | None:
        """AppCallback.ListTopicSubscriptions, retried until the app answers (UNIMPLEMENTED = none)."""
        delay = BACKOFF_START
        while not self._stopping.is_set():
            try:
                response = await self._stub.ListTopicSubscriptions(empty_pb2.Empty(), timeout=5.0)
                return [parse_subscription(sub) for sub in response.subscriptions]
            except grpc.aio.AioRpcError as err:
                if err.code() == grpc.StatusCode.UNIMPLEMENTED:
                    log.info("pubsub subscriptions: gRPC app does not implement ListTopicSubscriptions")
                    return []
                log.warning("error getting topic list from app: %s: %s", err.code().name, err.details())
            if await self._sleep(delay):
                break
            delay = min(delay * BACKOFF_FACTOR, 2.0)
        return None

    async def _subscribe(self, subscriptions: list[Subscription]) -> list[asyncio.Task[None]]:
        """Register group=app-id per (pubsub, topic) and start one delivery loop per pubsub."""
        by_pubsub: dict[str, dict[str, Subscription]] = {}
        for sub in subscriptions:
            broker = self.resources.pubsubs.get(sub.pubsub)
            if broker is None:
                log.warning("pubsub %s is not found: subscription to topic %s ignored", sub.pubsub, sub.topic)
                continue
            try:
                await broker.subscribe(self.app_id, sub.topic)
            except SidecarError as err:
                log.error("cannot subscribe to topic %s on pubsub %s: %s", sub.topic, sub.pubsub, err)
                continue
            by_pubsub.setdefault(sub.pubsub, {})[sub.topic] = sub
            self._subscriptions.append(sub)
            log.info("app is subscribed to topic %s on pubsub %s", sub.topic, sub.pubsub)
        loops = []
        for name, topics in by_pubsub.items():
            loop = asyncio.create_task(self._loop(name, self.resources.pubsubs[name], topics), name=name)
            loop.add_done_callback(_report_crash)
            loops.append(loop)
        return loops

    async def _loop(self, pubsub: str, broker: PubSub, topics: dict[str, Subscription]) -> None:
        """Claim and deliver until stopping; then give in-flight deliveries the grace period."""
        in_flight: set[asyncio.Task[None]] = set()
        cap = _backoff_cap(self.resources, pubsub)
        try:
            while not self._stopping.is_set():
                free = MAX_IN_FLIGHT - len(in_flight)
                if free <= 0:
                    await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                    continue
                messages = await self._claim(broker, free)
                for message in messages:
                    task = asyncio.create_task(self._deliver(pubsub, broker, topics, message, cap))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                if not messages:
                    await self._idle(broker)
        finally:
            await self._drain(in_flight)

    async def _claim(self, broker: PubSub, limit: int) -> list[Message]:
        try:
            return await broker.claim(self.app_id, limit)
        except SidecarError as err:
            log.error("cannot claim messages from pubsub %s: %s", broker.name, err)
            await self._sleep(IDLE_WAIT)
            return []

    async def _idle(self, broker: PubSub) -> None:
        """Wait for new messages, a due retry, or the stop signal, whichever comes first."""
        waiter = asyncio.create_task(broker.wait(IDLE_WAIT))
        stopper = asyncio.create_task(self._stopping.wait())
        _, pending = await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _drain(self, in_flight: set[asyncio.Task[None]]) -> None:
        if not in_flight:
            return
        log.info("waiting up to %.1fs for %d in-flight deliveries", self._grace, len(in_flight))
        _, unfinished = await asyncio.wait(in_flight, timeout=self._grace)
        for task in unfinished:
            task.cancel()  # its lease runs out and the message is delivered again later
        await asyncio.gather(*unfinished, return_exceptions=True)

    async def _deliver(
        self, pubsub: str, broker: PubSub, topics: dict[str, Subscription], message: Message, cap: float
    ) -> None:
        """One delivery attempt and its outcome; broker failures leave the lease to expire."""
        sub = topics.get(message.topic)
        try:
            outcome = await self._attempt(pubsub, sub, message)
            if outcome is Outcome.ACK:
                await broker.ack(self.app_id, message)
            elif outcome is Outcome.RETRY:
                await broker.retry(self.app_id, message, backoff(message.attempts, cap))
            else:
                await self._drop(broker, sub, message)
        except SidecarError as err:
            log.error("pubsub %s: cannot settle message %d: %s", pubsub, message.seq, err)

    async def _attempt(self, pubsub: str, sub: Subscription | None, message: Message) -> Outcome:
        raw = ce.is_raw_payload(message.metadata) or (sub is not None and ce.is_raw_payload(sub.metadata))
        event = ce.read_message(message.data, topic=message.topic, pubsub=pubsub, raw=raw)
        if ce.has_expired(event):
            log.warning("dropping expired pub/sub event %s on topic %s", event.get("id"), message.topic)
            return Outcome.DROP
        path = sub.route(event) if sub is not None else ""
        if path is None:
            log.warning(
                "no route matches pub/sub event %s on topic %s: dropped", event.get("id"), message.topic
            )
            return Outcome.DROP
        try:
            request = ce.topic_event_request(event, topic=message.topic, pubsub=pubsub, path=path)
        except ce.EnvelopeError as err:
            log.warning("cannot read pub/sub event %s on topic %s: %s", event.get("id"), message.topic, err)
            return Outcome.RETRY
        parent = _parent_context(event, message.metadata)
        return await self._call(request, message, parent)

    async def _call(
        self, request: appcallback_pb2.TopicEventRequest, message: Message, parent: Context
    ) -> Outcome:
        """OnTopicEvent inside a `pubsub/<topic>` span continuing the publisher's trace."""
        attributes = {"messaging.system": "dapr", "messaging.destination.name": request.topic}
        with self.tracer.start_as_current_span(
            f"pubsub/{request.topic}", context=parent, kind=SpanKind.CLIENT, attributes=attributes
        ) as span:
            metadata = app_metadata(message.metadata, request.pubsub_name, span.get_span_context())
            try:
                response = await self._stub.OnTopicEvent(request, metadata=metadata, timeout=CALL_TIMEOUT)
            except grpc.aio.AioRpcError as err:
                span.set_status(Status(StatusCode.ERROR, err.details() or err.code().name))
                return _error_outcome(request.id, err)
            return _status_outcome(request.id, response.status)

    async def _drop(self, broker: PubSub, sub: Subscription | None, message: Message) -> None:
        """Ack as dropped; the original CloudEvent bytes go to the dead-letter topic first if one is set."""
        if sub is not None and sub.dead_letter_topic:
            await broker.publish(sub.dead_letter_topic, message.data, message.metadata)
            log.info("pub/sub message %d sent to dead-letter topic %s", message.seq, sub.dead_letter_topic)
        await broker.ack(self.app_id, message)


def _report_crash(task: asyncio.Task[None]) -> None:
    """Say at once when delivery dies of a bug, rather than at shutdown."""
    if not task.cancelled() and task.exception() is not None:
        log.error("delivery to the app stopped: %r", task.exception(), exc_info=task.exception())


def _parent_context(event: Mapping[str, Any], metadata: Mapping[str, str]) -> Context:
    """The publisher's trace: the CloudEvent's traceparent (or traceid), else the raw message metadata."""
    for candidate in (event.get("traceparent"), event.get("traceid"), metadata.get("traceparent")):
        if isinstance(candidate, str) and candidate:
            state = event.get("tracestate")
            return context_from_traceparent(candidate, state if isinstance(state, str) else "")
    return Context()  # no trace to continue: the delivery span starts a new one


def _error_outcome(event_id: str, err: grpc.aio.AioRpcError) -> Outcome:
    if err.code() == grpc.StatusCode.UNIMPLEMENTED:
        log.warning(
            "non-retriable error returned from app while processing pub/sub event %s: %s",
            event_id,
            err.details(),
        )
        return Outcome.DROP
    log.info(
        "error returned from app while processing pub/sub event %s: %s %s",
        event_id,
        err.code().name,
        err.details(),
    )
    return Outcome.RETRY


def _status_outcome(event_id: str, status: int) -> Outcome:
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
