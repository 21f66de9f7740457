"""The transactional outbox (dapr/dapr `pkg/runtime/pubsub/outbox.go`): state and event commit together.

A state store with `outboxPublishPubsub` + `outboxPublishTopic` metadata turns every upsert of an
ExecuteStateTransaction into an event. As in daprd, before the transaction commits the sidecar
publishes each event to the internal topic `<namespace><appID><outboxPublishTopic>outbox` (on
`outboxPubsub`, default the publish pubsub) with the id of a marker state `outbox-<uuid>` that is
written in the same transaction. An internal subscriber publishes an event to `outboxPublishTopic`
only once it sees the marker (so a rolled-back transaction never publishes), then deletes the marker.
An upsert with `outbox.projection: "true"` is not stored: its value is what the event carries for the
upsert of the same key.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
from opentelemetry import trace

from chassis.sidecar import _cloudevents as ce
from chassis.sidecar._errors import EtagInvalid, EtagMismatch, IllegalKey, SidecarError
from chassis.sidecar._resources import ComponentSpec, Resources
from chassis.sidecar._status import ApiError
from chassis.sidecar._tracing import traceparent, tracestate
from chassis.sidecar.components import Message, PubSub, StateStore, TxOp, meta_get

__all__ = ["Outbox", "OutboxConfig", "outbox_configs", "start_outbox", "transact"]

log = logging.getLogger("chassis.sidecar.outbox")

PROJECTION = "outbox.projection"
MARKER_PREFIX = "outbox-"
# The marker may commit after the internal event is claimed: look again after 50 ms, x2, up to 3 s
# (daprd's retry cap); after MISSING_GRACE without a marker, discard if the store says so, else keep
# the event for later, looked at every LATER seconds (a crash between publish and commit leaves one).
RETRY_START, RETRY_CAP = 0.05, 3.0
MISSING_GRACE = 10.0  # seconds; daprd's MaxElapsedTime for the marker lookup
LATER = 30.0
IDLE_WAIT = 1.0
BATCH = 16
ABORTED_MEMORY = 10_000  # failed markers remembered; older ones fall back to daprd's missing-state rule
# daprd copies operation metadata into the event, except these (they would break the envelope).
_RESERVED = frozenset({"data", "id"})
_OVERRIDES = ("id", "source", "type", "subject")
_TRUTHY = frozenset({"1", "t", "true", "y", "yes", "on"})  # dapr/kit IsTruthy


@dataclass(frozen=True)
class OutboxConfig:
    """The outbox metadata of one state store."""

    store: str
    publish_pubsub: str
    publish_topic: str
    outbox_pubsub: str
    discard_when_missing_state: bool

    def internal_topic(self, app_id: str, namespace: str) -> str:
        return f"{namespace}{app_id}{self.publish_topic}outbox"


def outbox_configs(specs: Sequence[ComponentSpec]) -> dict[str, OutboxConfig]:
    """Outbox settings by state store name; a store needs both publish pubsub and topic (as daprd)."""
    configs = {}
    for spec in specs:
        if not spec.type.startswith("state."):
            continue
        pubsub = meta_get(spec.metadata, "outboxPublishPubsub")
        topic = meta_get(spec.metadata, "outboxPublishTopic")
        if pubsub and topic:
            configs[spec.name] = OutboxConfig(
                store=spec.name,
                publish_pubsub=pubsub,
                publish_topic=topic,
                outbox_pubsub=meta_get(spec.metadata, "outboxPubsub") or pubsub,
                discard_when_missing_state=_truthy(meta_get(spec.metadata, "outboxDiscardWhenMissingState")),
            )
    return configs


def _truthy(text: str) -> bool:
    return text.strip().lower() in _TRUTHY


def _outbox_error(problem: object) -> ApiError:
    """daprd's apierrors.PubSubOutbox."""
    return ApiError(
        grpc.StatusCode.INTERNAL,
        f"error while publishing outbox message: {problem}",
        error_code="ERR_PUBLISH_OUTBOX",
    )


def _split_projections(ops: Sequence[TxOp]) -> tuple[list[TxOp], dict[str, TxOp]]:
    """The operations to store, and the projections by key (each must match a stored upsert)."""
    stored: list[TxOp] = []
    projections: dict[str, TxOp] = {}
    for op in ops:
        if op.kind == "upsert" and _truthy(dict(op.metadata).get(PROJECTION, "")):
            projections[op.key] = op
        else:
            stored.append(op)
    upserted = {op.key for op in stored if op.kind == "upsert"}
    for key in projections:
        if key not in upserted:
            raise _outbox_error(f"outbox projection for key {key!r} has no upsert of the same key")
    return stored, projections


class Outbox:
    """Publishes transaction events through the internal topic and relays them once committed."""

    def __init__(self, resources: Resources, configs: dict[str, OutboxConfig], *, app_id: str) -> None:
        self.resources = resources
        self.configs = configs
        self.app_id = app_id
        self.namespace = os.environ.get("NAMESPACE", "")  # daprd prefixes the internal topic with it
        self.group = f"{app_id}.outbox"  # not the app's group: its delivery loop must not claim these
        # Markers of transactions this process saw fail: their events are dropped at once rather than
        # looked up until MISSING_GRACE (a dict keeps insertion order, so the oldest go first).
        self._aborted: dict[str, None] = {}
        self._stopping = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []

    # ---- the transaction side ---------------------------------------------------------------------

    async def transact(self, store_name: str, store: StateStore, ops: Sequence[TxOp]) -> None:
        """Publish one internal event per upsert, then commit the operations plus their markers."""
        config = self.configs.get(store_name)
        if config is None:
            await store.transact(ops)
            return
        stored, projections = _split_projections(ops)
        events = [self._event(config, op, projections.get(op.key)) for op in stored if op.kind == "upsert"]
        broker = self.resources.pubsubs.get(config.outbox_pubsub)
        if broker is None:
            raise _outbox_error(f"outbox pubsub {config.outbox_pubsub} is not loaded")
        topic = config.internal_topic(self.app_id, self.namespace)
        for _, data in events:
            try:
                await broker.publish(topic, data, {})
            except SidecarError as err:
                raise _outbox_error(err) from None
        markers = [marker for marker, _ in events]
        try:
            await store.transact([*stored, *(TxOp("upsert", marker, b"0") for marker in markers)])
        except (EtagMismatch, EtagInvalid, IllegalKey):
            # Rejected before anything committed. Any other failure (a cancelled call, a connection
            # lost during COMMIT) may still have committed: the marker lookup decides those.
            self._remember_aborted(markers)
            raise

    def _remember_aborted(self, markers: Sequence[str]) -> None:
        self._aborted.update(dict.fromkeys(markers))
        while len(self._aborted) > ABORTED_MEMORY:
            del self._aborted[next(iter(self._aborted))]

    def _event(self, config: OutboxConfig, op: TxOp, projection: TxOp | None) -> tuple[str, bytes]:
        """The internal CloudEvent of one upsert: id = its marker key, the op's metadata copied in.

        With a projection, its value is the payload and its metadata (e.g. `cloudevent.type`, as in
        Dapr's docs) is laid over the stored operation's.
        """
        marker = f"{MARKER_PREFIX}{uuid.uuid4()}"
        metadata = dict(op.metadata) | dict(projection.metadata if projection else ())
        payload = projection.value if projection else op.value
        span = trace.get_current_span().get_span_context()
        event = ce.new_envelope(
            source=self.app_id,
            topic=config.internal_topic(self.app_id, self.namespace),
            pubsub=config.outbox_pubsub,
            content_type=metadata.get("contentType", ""),
            data=payload,
            traceparent=traceparent(span),
            tracestate=tracestate(span),
            metadata={},  # overrides apply to the published event, not to the internal one
        )
        event.update({key: value for key, value in metadata.items() if key not in _RESERVED})
        event["id"] = marker
        return marker, ce.go_json(event)

    # ---- the relay side ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Subscribe to each internal topic and start one relay loop per outbox pubsub."""
        by_pubsub: dict[str, dict[str, OutboxConfig]] = {}
        for config in self.configs.values():
            broker = self.resources.pubsubs.get(config.outbox_pubsub)
            if broker is None:
                log.warning(
                    "outbox pubsub %s not loaded: store %s cannot publish", config.outbox_pubsub, config.store
                )
                continue
            topic = config.internal_topic(self.app_id, self.namespace)
            await broker.subscribe(self.group, topic)
            by_pubsub.setdefault(config.outbox_pubsub, {})[topic] = config
        for name, topics in by_pubsub.items():
            loop = asyncio.create_task(
                self._loop(self.resources.pubsubs[name], topics), name=f"outbox-{name}"
            )
            self._loops.append(loop)

    async def stop(self) -> None:
        """Stop relaying; an event being relayed finishes (its lease covers a crash)."""
        self._stopping.set()
        await asyncio.gather(*self._loops, return_exceptions=True)

    async def _loop(self, broker: PubSub, topics: dict[str, OutboxConfig]) -> None:
        while not self._stopping.is_set():
            try:
                messages = await broker.claim(self.group, BATCH)
            except SidecarError as err:
                log.error("outbox: cannot claim from pubsub %s: %s", broker.name, err)
                messages = []
            await asyncio.gather(*(self._settle(broker, topics, message) for message in messages))
            if not messages:
                await self._idle(broker)

    async def _idle(self, broker: PubSub) -> None:
        waiter = asyncio.create_task(broker.wait(IDLE_WAIT))
        stopper = asyncio.create_task(self._stopping.wait())
        _, pending = await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _settle(self, broker: PubSub, topics: dict[str, OutboxConfig], message: Message) -> None:
        """Relay one internal event, or drop it, or ask the broker to hand it over again later."""
        config = topics.get(message.topic)
        try:
            delay = None if config is None else await self._relay(config, message)
            if delay is None:
                await broker.ack(self.group, message)
            else:
                await broker.retry(self.group, message, delay)
        except SidecarError as err:
            log.error("outbox: cannot settle internal event %d: %s", message.seq, err)

    async def _relay(self, config: OutboxConfig, message: Message) -> float | None:
        """None when the event is finished with (published or dropped), else seconds until a retry."""
        try:
            event: dict[str, Any] = json.loads(message.data)
            marker = str(event["id"])
        except (ValueError, KeyError, TypeError):
            log.error("outbox: dropping unreadable internal event %d", message.seq)
            return None
        store = self.resources.state_stores.get(config.store)
        if store is None:
            log.error("outbox: cannot get outbox state: state store %s not found", config.store)
            return LATER
        if await store.get(marker) is None:
            return self._missing(config, marker, event, message.attempts)
        publisher = self.resources.pubsubs.get(config.publish_pubsub)
        if publisher is None:
            log.error("outbox: publish pubsub %s not loaded; will retry", config.publish_pubsub)
            return LATER
        await publisher.publish(config.publish_topic, ce.go_json(_published(config, event)), {})
        with contextlib.suppress(SidecarError):  # a leftover marker only costs a row; the event is out
            await store.delete(marker)
        return None

    def _missing(
        self, config: OutboxConfig, marker: str, event: Mapping[str, Any], attempts: int
    ) -> float | None:
        """No marker (yet): the transaction failed, or has not committed; daprd's rules decide."""
        if marker in self._aborted:
            del self._aborted[marker]
            log.debug("outbox: transaction of %s failed; its event is dropped", marker)
            return None
        if _age(event) < MISSING_GRACE:
            return float(min(RETRY_CAP, RETRY_START * 2 ** max(0, attempts - 1)))
        if config.discard_when_missing_state:
            log.error(
                "outbox: state %s not found, discarding message (outboxDiscardWhenMissingState)", marker
            )
            return None
        log.warning("outbox: state %s not found, rejecting for later processing", marker)
        return LATER


def _published(config: OutboxConfig, event: Mapping[str, Any]) -> dict[str, Any]:
    """The internal event retargeted at the publish topic, with `[outbox.]cloudevent.*` overrides."""
    published = dict(event)
    published.update(topic=config.publish_topic, pubsubname=config.publish_pubsub)
    lowered = {str(key).lower(): value for key, value in event.items()}
    for name in _OVERRIDES:
        for key in (f"cloudevent.{name}", f"outbox.cloudevent.{name}"):
            if isinstance(value := lowered.get(key), str) and value:
                published[name] = value
    return published


def _age(event: Mapping[str, Any]) -> float:
    """Seconds since the internal event was made (its RFC3339 `time`); 0 when unreadable."""
    text = event.get("time")
    try:
        made = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    return (datetime.now(UTC) - made).total_seconds() if made.tzinfo else 0.0


async def transact(outbox: Outbox | None, store_name: str, store: StateStore, ops: Sequence[TxOp]) -> None:
    """ExecuteStateTransaction's write: through the outbox when the store has one, else plainly."""
    if outbox is None:
        await store.transact(ops)
    else:
        await outbox.transact(store_name, store, ops)


async def start_outbox(
    stack: contextlib.AsyncExitStack, resources: Resources, *, app_id: str
) -> Outbox | None:
    """Start the relay when a loaded state store configures an outbox; stopped by `stack`."""
    configs = {
        name: c for name, c in outbox_configs(resources.specs).items() if name in resources.state_stores
    }
    if not configs:
        return None
    outbox = Outbox(resources, configs, app_id=app_id)
    await outbox.start()
    stack.push_async_callback(outbox.stop)
    log.info("transactional outbox enabled for state stores: %s", ", ".join(sorted(configs)))
    return outbox
