"""Delivery of pub/sub events to their subscribers, as daprd's subscription loop does.

Subscriptions (declarative, the app's programmatic ones, streaming) each bind a pubsub topic to a sink:
the app channel (gRPC or HTTP) or a stream. The broker's consumer group is the app id. One loop per
pubsub claims leased messages; each is routed and settled by `_settle` (expiry, CEL routes, ack /
redeliver / dead-letter) and delivered singly or, for bulkSubscribe, batched per route path. With
app health checks the app's messages wait in the broker while it is unhealthy. A message whose lease
runs out (app hung, sidecar killed) is claimed again, so delivery is at-least-once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Protocol

from opentelemetry import trace
from opentelemetry.trace import SpanKind

from chassis.sidecar._app_grpc import Unanswered, app_metadata
from chassis.sidecar._app_health import AppHealth
from chassis.sidecar._errors import ComponentError, SidecarError
from chassis.sidecar._grpc_api import SubscriptionInfo
from chassis.sidecar._outcomes import Delivery, Outcome, Sink
from chassis.sidecar._resources import Resources
from chassis.sidecar._settle import (
    BACKOFF_FACTOR,
    BACKOFF_START,
    NO_SINK_DELAY,
    Settler,
    backoff,
    backoff_cap,
    parent_context,
    prepare,
)
from chassis.sidecar._subscriptions import (
    Subscription,
    from_topic_subscription,
    merge,
)
from chassis.sidecar._topic_scopes import SUBSCRIPTION, is_allowed
from chassis.sidecar.components import Message, PubSub

__all__ = ["Deliverer", "Outcome", "app_metadata", "backoff", "parse_subscription"]

log = logging.getLogger("chassis.sidecar.delivery")

MAX_IN_FLIGHT = 32  # per pubsub; a bulk subscription may hold two full batches on top (see _room)
IDLE_WAIT = 1.0  # the broker notices other processes' commits within this (see PubSub.wait)
parse_subscription = from_topic_subscription  # the name the first tests used


class AppChannel(Sink, Protocol):
    """The app behind --app-port: readiness, its programmatic subscriptions, and delivery."""

    async def ready(self) -> bool: ...

    async def subscriptions(self) -> list[Subscription]: ...

    async def close(self) -> None: ...


def info(sub: Subscription) -> SubscriptionInfo:
    """What the metadata API reports for a subscription."""
    return SubscriptionInfo(
        sub.pubsub, sub.topic, dict(sub.metadata), sub.rules(), sub.dead_letter_topic, sub.type
    )


class Deliverer:
    """Feeds subscribers their events; one per sidecar (the app channel is optional: streams need none)."""

    def __init__(
        self,
        *,
        app_id: str,
        resources: Resources,
        tracer: trace.Tracer,
        app: AppChannel | None = None,
        declared: Sequence[Subscription] = (),
        ready: asyncio.Event | None = None,
        health: AppHealth | None = None,
    ) -> None:
        self.app_id = app_id
        self.resources = resources
        self.tracer = tracer
        self.app = app
        self.declared = list(declared)
        self.ready = ready or asyncio.Event()  # set once the app answered and is subscribed (healthz)
        self.health = health  # --enable-app-health-check: deliver to the app only while it is healthy
        self._bindings: dict[str, dict[str, tuple[Subscription, Sink]]] = {}
        self._loops: dict[str, asyncio.Task[None]] = {}
        self._batches: dict[tuple[str, str], _Batch] = {}
        self._in_flight: dict[str, set[asyncio.Task[None]]] = {}
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._grace = 0.0

    # ---- lifecycle ----------------------------------------------------------------------------------

    @property
    def stopping(self) -> asyncio.Event:
        """Set when the sidecar stops (streams end then)."""
        return self._stopping

    def subscriptions(self) -> list[SubscriptionInfo]:
        """Every active subscription, for the metadata API."""
        return [info(sub) for topics in self._bindings.values() for sub, _ in topics.values()]

    def start(self) -> None:
        """Begin in the background: wait for the app, subscribe, deliver."""
        if self.app is not None:
            self._task = asyncio.create_task(self._run(self.app), name="delivery")
            self._task.add_done_callback(_report_crash)
        if self.health is not None:
            self.health.start()

    async def stop(self, grace: float) -> None:
        """Stop claiming, let in-flight deliveries finish for up to `grace` seconds, close the channel."""
        self._grace = grace
        self._stopping.set()
        tasks = [t for t in [self._task, *self._loops.values()] if t is not None]
        await asyncio.gather(*tasks, return_exceptions=True)  # a crash was logged when it happened
        if self.health is not None:
            await self.health.stop()
        if self.app is not None:
            await self.app.close()

    async def _run(self, app: AppChannel) -> None:
        if not await self._wait_for_app(app) or not await self._wait_healthy():
            return
        programmatic = await self._list_subscriptions(app)
        if programmatic is None:
            return
        for sub in merge(self.declared, programmatic):
            try:
                await self.add(sub, app)
            except SidecarError as err:
                log.error("cannot subscribe to topic %s on pubsub %s: %s", sub.topic, sub.pubsub, err)
        self.ready.set()

    async def _sleep(self, seconds: float) -> bool:
        """Sleep unless stopping; True when the sidecar is stopping."""
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def _wait_for_app(self, app: AppChannel) -> bool:
        """Wait until the app's port answers; False if stopped first."""
        log.info("waiting for the app")
        while not self._stopping.is_set():
            if await app.ready():
                log.info("app channel is ready")
                return True
            await self._sleep(0.1)  # a refused connection answers at once: do not spin
        return False

    async def _list_subscriptions(self, app: AppChannel) -> list[Subscription] | None:
        """The app's programmatic subscriptions, asked until it answers; None if stopped first."""
        delay = BACKOFF_START
        while not self._stopping.is_set():
            try:
                return await app.subscriptions()
            except Unanswered as err:
                log.warning("error getting topic list from app: %s", err)
            if await self._sleep(delay):
                break
            delay = min(delay * BACKOFF_FACTOR, 2.0)
        return None

    # ---- subscriptions ------------------------------------------------------------------------------

    async def add(self, sub: Subscription, sink: Sink) -> None:
        """Bind `sub` to `sink`: consumer group app-id in the broker, and a delivery loop for its pubsub."""
        broker = self.resources.pubsubs.get(sub.pubsub)
        if broker is None:
            raise ComponentError(f"pubsub {sub.pubsub} is not found")
        if not is_allowed(sub.topic, self._metadata_of(sub.pubsub), self.app_id, SUBSCRIPTION):
            raise ComponentError(
                f"subscription to topic '{sub.topic}' on pubsub '{sub.pubsub}' is not allowed"
            )
        await broker.subscribe(self.app_id, sub.topic)
        self._bindings.setdefault(sub.pubsub, {})[sub.topic] = (sub, sink)
        log.info("app is subscribed to topic %s on pubsub %s (%s)", sub.topic, sub.pubsub, sub.type.lower())
        if sub.pubsub not in self._loops and not self._stopping.is_set():
            loop = asyncio.create_task(self._loop(sub.pubsub, broker), name=f"delivery-{sub.pubsub}")
            loop.add_done_callback(_report_crash)
            self._loops[sub.pubsub] = loop

    def _metadata_of(self, pubsub: str) -> dict[str, str]:
        return next((spec.metadata for spec in self.resources.specs if spec.name == pubsub), {})

    def remove(self, pubsub: str, topic: str, sink: Sink) -> None:
        """Unbind a topic (a stream ended); its messages wait in the broker for the next subscriber."""
        bound = self._bindings.get(pubsub, {}).get(topic)
        if bound is not None and bound[1] is sink:
            del self._bindings[pubsub][topic]
            log.info("app is no longer subscribed to topic %s on pubsub %s", topic, pubsub)

    def bound(self, pubsub: str, topic: str) -> bool:
        return topic in self._bindings.get(pubsub, {})

    # ---- the loop -----------------------------------------------------------------------------------

    async def _loop(self, pubsub: str, broker: PubSub) -> None:
        """Claim and deliver until stopping; then give in-flight deliveries the grace period."""
        in_flight = self._in_flight.setdefault(pubsub, set())
        policy = self.resources.resiliency.component_inbound(pubsub, "pubsub")
        settler = Settler(self.app_id, broker, backoff_cap(self.resources, pubsub), policy)
        try:
            while not self._stopping.is_set():
                free = self._room(pubsub) - len(in_flight) - self._buffered(pubsub)
                if free <= 0 or self._only_paused_app(pubsub):
                    await self._wait_for_room(in_flight)
                    continue
                messages = await self._claim(broker, free)
                for message in messages:
                    await self._dispatch(pubsub, settler, message)
                if not messages:
                    await self._idle(broker)
        finally:
            await self._drain(pubsub, settler, in_flight)

    async def _wait_for_room(self, in_flight: set[asyncio.Task[None]]) -> None:
        """Until a delivery finishes (or a moment passes, when the app is paused or batches are full)."""
        if in_flight:
            await asyncio.wait(in_flight, timeout=IDLE_WAIT, return_when=asyncio.FIRST_COMPLETED)
        else:
            await self._sleep(0.05)

    def _paused(self, sink: Sink) -> bool:
        return self.health is not None and sink is self.app and not self.health.healthy.is_set()

    def _only_paused_app(self, pubsub: str) -> bool:
        """Nothing to claim for: every subscription of this pubsub goes to the app, which is unhealthy."""
        sinks = [sink for _, sink in self._bindings.get(pubsub, {}).values()]
        return bool(sinks) and all(self._paused(sink) for sink in sinks)

    async def _wait_healthy(self) -> bool:
        """With app health checks, wait for the first healthy probe; False if stopped first."""
        if self.health is None:
            return True
        log.info("waiting for the app to report healthy")
        while not self.health.healthy.is_set():
            if await self._sleep(0.05):
                return False
        return True

    def _room(self, pubsub: str) -> int:
        """How many messages of `pubsub` may be claimed and not yet settled.

        A bulk subscription must be able to fill a batch (and claim the next while one is out), or a
        `maxMessagesCount` above the plain limit would only ever be reached by its `maxAwaitDurationMs`.
        """
        batches = [sub.bulk.max_count for sub, _ in self._bindings.get(pubsub, {}).values() if sub.bulk]
        return MAX_IN_FLIGHT + 2 * max(batches, default=0)

    def _buffered(self, pubsub: str) -> int:
        return sum(len(batch.items) for (name, _), batch in self._batches.items() if name == pubsub)

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

    async def _drain(self, pubsub: str, settler: Settler, in_flight: set[asyncio.Task[None]]) -> None:
        for key in [key for key in self._batches if key[0] == pubsub]:
            self._flush(key, settler)
        if not in_flight:
            return
        log.info("waiting up to %.1fs for %d in-flight deliveries", self._grace, len(in_flight))
        _, unfinished = await asyncio.wait(in_flight, timeout=self._grace)
        for task in unfinished:
            task.cancel()  # its lease runs out and the message is delivered again later
        await asyncio.gather(*unfinished, return_exceptions=True)

    def _spawn(self, pubsub: str, work: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(work)
        in_flight = self._in_flight.setdefault(pubsub, set())
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)

    # ---- one message --------------------------------------------------------------------------------

    async def _dispatch(self, pubsub: str, settler: Settler, message: Message) -> None:
        bound = self._bindings.get(pubsub, {}).get(message.topic)
        if bound is None:  # nobody listens right now (a stream closed): leave it in the broker
            await settler.release(message, NO_SINK_DELAY)
            return
        sub, sink = bound
        if self._paused(sink):  # the app turned unhealthy: its messages wait in the broker
            await settler.release(message, NO_SINK_DELAY)
            return
        prepared = prepare(pubsub, sub, message)
        if isinstance(prepared, Outcome):
            self._spawn(pubsub, settler.settle(sub, message, prepared))
        elif sub.bulk is not None:
            self._add_to_batch(pubsub, sub, sink, settler, message, prepared)
        else:
            self._spawn(pubsub, self._deliver_one(sub, sink, settler, message, prepared))

    async def _deliver_one(
        self, sub: Subscription, sink: Sink, settler: Settler, message: Message, delivery: Delivery
    ) -> None:
        """One delivery inside a `pubsub/<topic>` span continuing the publisher's trace."""
        attributes = {"messaging.system": "dapr", "messaging.destination.name": delivery.topic}
        parent = parent_context(delivery.event, message.metadata)
        with self.tracer.start_as_current_span(
            f"pubsub/{delivery.topic}", context=parent, kind=SpanKind.CLIENT, attributes=attributes
        ) as span:
            outcome = await sink.deliver(replace(delivery, span=span.get_span_context()))
        await settler.settle(sub, message, outcome)

    # ---- bulk ---------------------------------------------------------------------------------------

    def _add_to_batch(
        self,
        pubsub: str,
        sub: Subscription,
        sink: Sink,
        settler: Settler,
        message: Message,
        delivery: Delivery,
    ) -> None:
        assert sub.bulk is not None
        key = (pubsub, f"{sub.topic}\n{delivery.path}")  # daprd sends one bulk request per route path
        batch = self._batches.get(key)
        if batch is None:
            batch = self._batches[key] = _Batch(sub, sink)
            batch.timer = asyncio.get_running_loop().call_later(sub.bulk.max_await, self._flush, key, settler)
        batch.items.append((message, delivery))
        if len(batch.items) >= sub.bulk.max_count:
            self._flush(key, settler)

    def _flush(self, key: tuple[str, str], settler: Settler) -> None:
        batch = self._batches.pop(key, None)
        if batch is None:
            return
        if batch.timer is not None:
            batch.timer.cancel()
        self._spawn(key[0], self._deliver_batch(batch, settler))

    async def _deliver_batch(self, batch: _Batch, settler: Settler) -> None:
        messages = [message for message, _ in batch.items]
        topic = messages[0].topic
        log.debug("delivering a bulk of %d events on topic %s", len(messages), topic)
        with self.tracer.start_as_current_span(f"pubsub/{topic}", kind=SpanKind.CLIENT) as span:
            context = span.get_span_context()
            deliveries = [replace(d, span=context) for _, d in batch.items]
            try:
                outcomes = await batch.sink.deliver_bulk(deliveries)
            except Exception:  # a bug in a sink must not lose the batch: everything is redelivered
                log.exception("bulk delivery to topic %s failed", topic)
                outcomes = [Outcome.RETRY] * len(messages)
        await asyncio.gather(
            *(settler.settle(batch.sub, m, o) for m, o in zip(messages, outcomes, strict=True))
        )


class _Batch:
    """Messages of one bulk subscription and route path waiting to be sent together."""

    def __init__(self, sub: Subscription, sink: Sink) -> None:
        self.sub = sub
        self.sink = sink
        self.items: list[tuple[Message, Delivery]] = []
        self.timer: asyncio.TimerHandle | None = None


def _report_crash(task: asyncio.Task[None]) -> None:
    """Say at once when delivery dies of a bug, rather than at shutdown."""
    if not task.cancelled() and task.exception() is not None:
        log.error("delivery to the app stopped: %r", task.exception(), exc_info=task.exception())
