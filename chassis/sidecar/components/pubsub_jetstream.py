"""Dapr `pubsub.jetstream` on NATS JetStream: topics are subjects of a stream, a durable consumer per group.

`publish` waits for JetStream's PubAck (the message is stored). Each consumer group gets a durable
pull consumer per topic (`<durableName or group>-<topic>`, explicit acks), shared by every instance
of the group, so instances compete for messages and the lease is JetStream's own `ackWait`: a
message not acknowledged in time (handler hung, sidecar killed) is delivered again by the server.
`retry` is a NAK with a delay. `claim` sends a no-wait pull request and reads exactly what it
returns, so no lingering request can capture messages nobody is asking for.

Unlike Dapr's component, a missing stream is created and a topic missing from the stream's subjects
is added (so profiles work without the nats CLI); with no `streamName`, the stream that already stores
the subject is used, as in Dapr.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import nats
import nats.errors
import nats.js.api as api
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

from chassis.sidecar._errors import ComponentError, InvalidMetadata
from chassis.sidecar.components import Driver, Message, meta_get
from chassis.sidecar.components._common import message_metadata, positive_duration
from chassis.sidecar.components._held import Held, Wakeup, boolean, client_errors, whole_number

__all__ = ["DRIVER", "JetStreamPubSub"]

log = logging.getLogger(__name__)

DEFAULT_ACK_WAIT = 30.0  # NATS' default, which Dapr keeps
DEFAULT_REDELIVER_INTERVAL = 60.0
CONNECT_TIMEOUT = 5.0
REQUEST_TIMEOUT = 5.0  # one JetStream API call or pull request
START_ATTEMPTS = 1
START_RETRY_WAIT = 0.2
RECONNECT_WAIT = 2.0  # nats-py's default between reconnect attempts
METADATA_HEADER = "Chassis-Metadata"
DELIVER_POLICIES = {
    "all": api.DeliverPolicy.ALL,
    "last": api.DeliverPolicy.LAST,
    "new": api.DeliverPolicy.NEW,
    "sequence": api.DeliverPolicy.BY_START_SEQUENCE,
    "time": api.DeliverPolicy.BY_START_TIME,
}
# Consumer names may not hold '.', '*', '>' or whitespace.
_NAME_UNSAFE = re.compile(r"[.*>\s]")
_ERRORS = (nats.errors.Error, asyncio.TimeoutError, OSError)


def check_metadata(metadata: Mapping[str, str]) -> None:
    """Validate the metadata values this driver reads (raises InvalidMetadata)."""
    url = meta_get(metadata, "natsURL").strip()
    if not url:
        raise InvalidMetadata("natsURL", "must not be empty (e.g. nats://localhost:4222)")
    if not url.startswith(("nats://", "tls://")):
        raise InvalidMetadata("natsURL", f"expected nats://host:port, got {url!r}")
    _deliver_policy(metadata)
    ack_policy = meta_get(metadata, "ackPolicy", "explicit").strip() or "explicit"
    if ack_policy != "explicit":
        raise InvalidMetadata(
            "ackPolicy", f"{ack_policy!r} is not supported: only explicit acks keep messages"
        )
    for name in ("maxDeliver", "maxAckPending", "replicas", "startSequence", "startTime"):
        whole_number(metadata, name, None)
    boolean(metadata, "memoryStorage", False)
    _ack_wait(metadata)
    positive_duration(metadata, "redeliverInterval", DEFAULT_REDELIVER_INTERVAL)


def _deliver_policy(metadata: Mapping[str, str]) -> api.DeliverPolicy:
    name = meta_get(metadata, "deliverPolicy", "all").strip() or "all"
    if name not in DELIVER_POLICIES:
        raise InvalidMetadata("deliverPolicy", f"must be one of {', '.join(DELIVER_POLICIES)}, got {name!r}")
    return DELIVER_POLICIES[name]


def _ack_wait(metadata: Mapping[str, str]) -> float:
    """Dapr's `ackWait`; this sidecar's `processingTimeout` (the other brokers' lease) is accepted too."""
    if meta_get(metadata, "ackWait"):
        return positive_duration(metadata, "ackWait", DEFAULT_ACK_WAIT)
    return positive_duration(metadata, "processingTimeout", DEFAULT_ACK_WAIT)


def consumer_name(group: str, topic: str) -> str:
    """The durable consumer of a group for one topic."""
    return _NAME_UNSAFE.sub("_", f"{group}-{topic}")


@dataclass
class _Consumer:
    """One durable pull consumer and the inbox its pull requests answer to."""

    stream: str
    name: str
    inbox: Subscription
    lock: asyncio.Lock


class JetStreamPubSub:
    """A broker on one NATS connection; streams and consumers live in JetStream."""

    def __init__(self, name: str, metadata: Mapping[str, str], *, app_id: str, base_dir: Path) -> None:
        check_metadata(metadata)
        self.name = name
        self.app_id = app_id
        self.processing_timeout = _ack_wait(metadata)
        # Not used here: the delivery loop reads it as the cap of its retry back-off.
        self.redeliver_interval = positive_duration(metadata, "redeliverInterval", DEFAULT_REDELIVER_INTERVAL)
        self._metadata = dict(metadata)
        self._url = meta_get(metadata, "natsURL").strip()
        self._stream = meta_get(metadata, "streamName").strip()
        self._durable = (
            meta_get(metadata, "durableName").strip() or meta_get(metadata, "queueGroupName").strip()
        )
        self._api_prefix = _api_prefix(metadata)
        self._wakeup = Wakeup()
        # The server keeps the leases; this only tells a late answer from the current lease's.
        self._held: Held[Msg] = Held(self.processing_timeout, self._wakeup)
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._streams: dict[str, str] = {}  # topic -> the stream storing it
        self._consumers: dict[str, dict[str, _Consumer]] = {}  # group -> topic -> consumer
        self._signals: dict[str, Subscription] = {}
        self._turn = 0

    @classmethod
    async def open(
        cls, name: str, metadata: Mapping[str, str], *, app_id: str, base_dir: Path
    ) -> JetStreamPubSub:
        """Connect; raise ComponentError if the server cannot be used."""
        broker = cls(name, metadata, app_id=app_id, base_dir=base_dir)
        try:
            broker._nc = await nats.connect(
                broker._url,
                name=meta_get(metadata, "name") or "dapr.io - pubsub.jetstream",
                token=meta_get(metadata, "token") or None,
                connect_timeout=CONNECT_TIMEOUT,
                max_reconnect_attempts=START_ATTEMPTS,  # fail the start quickly, as daprd's Init does
                reconnect_time_wait=START_RETRY_WAIT,
                error_cb=broker._on_error,
            )
            # Once up, never give up reconnecting (a server restart), as Dapr's client does. nats-py
            # reads this option on every reconnect; it has no separate one for the first connect.
            broker._nc.options["max_reconnect_attempts"] = -1
            broker._nc.options["reconnect_time_wait"] = RECONNECT_WAIT
            broker._js = broker._nc.jetstream(
                timeout=REQUEST_TIMEOUT, domain=meta_get(metadata, "domain") or None
            )
        except _ERRORS as exc:
            raise ComponentError(f"{name}: error connecting to nats at {broker._url}: {exc!r}") from None
        return broker

    async def _on_error(self, exc: Exception) -> None:
        log.warning("pubsub %s: nats: %r", self.name, exc)

    def _check_open(self) -> tuple[Client, JetStreamContext]:
        if self._nc is None or self._js is None or self._nc.is_closed:
            raise ComponentError(f"{self.name}: broker is closed")
        return self._nc, self._js

    async def publish(self, topic: str, data: bytes, metadata: Mapping[str, str]) -> None:
        """Publish to the topic's subject; returns once JetStream acknowledged storing it."""
        _, js = self._check_open()
        headers = {METADATA_HEADER: json.dumps(dict(metadata))}
        with client_errors(self.name, "nats", _ERRORS):
            stream = await self._stream_for(topic)
            try:
                await js.publish(topic, data, stream=stream, headers=headers)
            except nats.errors.NoRespondersError:
                # Another process rewrote the stream's subjects meanwhile: add ours back, once.
                await self._stream_for(topic, refresh=True)
                await js.publish(topic, data, stream=stream, headers=headers)
        self._wakeup.notify()

    async def _stream_for(self, topic: str, *, refresh: bool = False) -> str:
        """The stream storing `topic`; with `streamName`, created or extended to cover it."""
        if not refresh and (known := self._streams.get(topic)):
            return known
        _, js = self._check_open()
        if not self._stream:
            try:
                stream = await js.find_stream_name_by_subject(topic)
            except nats.js.errors.NotFoundError:
                raise ComponentError(
                    f"{self.name}: no JetStream stream stores subject {topic!r}: create one or set streamName"
                ) from None
        else:
            stream = self._stream
            await self._cover(js, topic)
        self._streams[topic] = stream
        return stream

    async def _cover(self, js: JetStreamContext, topic: str) -> None:
        """Create the stream, or add `topic` to its subjects (re-read after writing: others may too)."""
        for _ in range(5):
            try:
                info = await js.stream_info(self._stream)
            except nats.js.errors.NotFoundError:
                try:
                    await js.add_stream(self._stream_config([topic]))
                except nats.js.errors.BadRequestError:
                    continue  # created by another process just now
                return
            subjects = list(info.config.subjects or [])
            if topic in subjects:
                return
            info.config.subjects = [*subjects, topic]
            await js.update_stream(info.config)
        raise ComponentError(f"{self.name}: could not add subject {topic!r} to stream {self._stream!r}")

    def _stream_config(self, subjects: list[str]) -> api.StreamConfig:
        memory = boolean(self._metadata, "memoryStorage", False)
        return api.StreamConfig(
            name=self._stream,
            subjects=subjects,
            storage=api.StorageType.MEMORY if memory else api.StorageType.FILE,
            num_replicas=whole_number(self._metadata, "replicas", None),
        )

    async def subscribe(self, group: str, topic: str) -> None:
        """Create (or bind) the group's durable consumer of `topic` (idempotent)."""
        nc, js = self._check_open()
        if topic in self._consumers.get(group, {}):
            return
        name = consumer_name(self._durable or group, topic)
        with client_errors(self.name, "nats", _ERRORS):
            stream = await self._stream_for(topic)
            try:
                await js.consumer_info(stream, name)
            except nats.js.errors.NotFoundError:
                await js.add_consumer(stream, self._consumer_config(name, topic))
            inbox = await nc.subscribe(nc.new_inbox())
            if topic not in self._signals:
                # Any publish to the subject, by anyone, ends a `wait` here.
                self._signals[topic] = await nc.subscribe(topic, cb=self._on_signal)
        self._consumers.setdefault(group, {})[topic] = _Consumer(stream, name, inbox, asyncio.Lock())

    def _consumer_config(self, name: str, topic: str) -> api.ConsumerConfig:
        metadata = self._metadata
        max_deliver = whole_number(metadata, "maxDeliver", None)
        return api.ConsumerConfig(
            name=name,
            durable_name=name,
            filter_subject=topic,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=self.processing_timeout,
            max_deliver=max_deliver or -1,
            max_ack_pending=whole_number(metadata, "maxAckPending", None),
            deliver_policy=_deliver_policy(metadata),
            opt_start_seq=whole_number(metadata, "startSequence", None),
        )

    async def _on_signal(self, _: Msg) -> None:
        self._wakeup.notify()

    async def claim(self, group: str, limit: int) -> list[Message]:
        """Up to `limit` messages of `group`: whatever its consumers hand out right now."""
        self._check_open()
        if limit <= 0:
            return []
        # The server redelivers what ran out (to whichever instance pulls first); a late answer
        # from here then finds no lease and is not sent.
        self._held.forget_expired(group)
        messages: list[Message] = []
        consumers = list(self._consumers.get(group, {}).items())
        self._turn = (self._turn + 1) % max(len(consumers), 1)  # no topic starves the others
        with client_errors(self.name, "nats", _ERRORS):
            for topic, consumer in consumers[self._turn :] + consumers[: self._turn]:
                for msg in await self._pull(consumer, limit - len(messages)):
                    messages.append(self._held.lease(group, _message(topic, msg), msg))
        return messages

    async def _pull(self, consumer: _Consumer, count: int) -> list[Msg]:
        """One no-wait pull request: the available messages (up to `count`), then a status ends it."""
        if count <= 0:
            return []
        nc, _ = self._check_open()
        request = json.dumps({"batch": count, "no_wait": True}).encode()
        subject = f"{self._api_prefix}.CONSUMER.MSG.NEXT.{consumer.stream}.{consumer.name}"
        found: list[Msg] = []
        async with consumer.lock:  # one request in flight per consumer: answers cannot interleave
            await nc.publish(subject, request, reply=consumer.inbox.subject)
            while len(found) < count:
                msg = await consumer.inbox.next_msg(timeout=REQUEST_TIMEOUT)
                if JetStreamContext.is_status_msg(msg):
                    break  # 404 no messages / 408 / 409: nothing more for this request
                found.append(msg)
        return found

    async def ack(self, group: str, message: Message) -> None:
        """Acknowledge the delivery: the consumer moves past it for good."""
        self._check_open()
        if (msg := self._held.take(group, message)) is not None:
            with client_errors(self.name, "nats", _ERRORS):
                await msg.ack()

    async def retry(self, group: str, message: Message, delay: float) -> None:
        """NAK with a delay: JetStream delivers the message again once it passes."""
        self._check_open()
        if (msg := self._held.take(group, message)) is not None:
            with client_errors(self.name, "nats", _ERRORS):
                await msg.nak(delay=max(delay, 0.0))
            self._wakeup.notify_later(delay)

    async def wait(self, timeout: float) -> None:  # noqa: ASYNC109 (the PubSub interface)
        """Sleep up to `timeout` seconds, returning early when a message may be claimable.

        Publishes by anyone to a subscribed subject, local retries falling due and leases running
        out (as far as this process knows them) end the wait.
        """
        await self._wakeup.wait(timeout)

    async def close(self) -> None:
        """Close the connection (idempotent); unacknowledged messages come back after ackWait."""
        self._held.drop_all()
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None and not nc.is_closed:
            await nc.close()


def _api_prefix(metadata: Mapping[str, str]) -> str:
    """Where JetStream's API lives: `apiPrefix`, a `domain`'s, or the default $JS.API."""
    if prefix := meta_get(metadata, "apiPrefix").strip().rstrip("."):
        return prefix
    domain = meta_get(metadata, "domain").strip()
    return f"$JS.{domain}.API" if domain else "$JS.API"


def _message(topic: str, msg: Msg) -> Message:
    meta = msg.metadata
    return Message(
        seq=meta.sequence.stream,
        topic=topic,
        data=msg.data,
        metadata=_metadata((msg.headers or {}).get(METADATA_HEADER)),
        attempts=meta.num_delivered,
    )


def _metadata(header: str | None) -> dict[str, str]:
    """The metadata header; messages from other clients (daprd) lack it or hold something else."""
    return message_metadata(header) or {}


DRIVER = Driver(
    kind="pubsub",
    versions=("v1",),
    required=("natsURL",),
    check=check_metadata,
    open=JetStreamPubSub.open,
)
