"""Dapr `pubsub.kafka` on any Kafka-protocol broker: a consumer group per app, offsets committed in order.

`publish` waits for the broker's acknowledgement from every in-sync replica (acks=all). Each consumer
group (`consumerGroup`, else `consumerID`, else the app id) is one Kafka group member per sidecar, with
auto-commit off: instances of an app share the topic's partitions, as in Dapr. A partition's offset is
committed only up to its first message not yet acknowledged, so whatever a sidecar held when it died
is delivered again to the group; leases (`processingTimeout`) and retry delays are kept in this
process (_held), as Kafka has neither. Publish metadata travels in Kafka headers, one per entry as in
Dapr, plus a JSON copy this driver reads back; `partitionKey` becomes the record key.

Unlike Dapr's component, a missing topic is created (with `partitionCount` partitions, default 1)
instead of relying on the broker's auto-creation, and only `authType: none` (plaintext) is supported.
On first subscribe a group's position is pinned (committed) at `initialOffset`, so messages published
after `subscribe` returns are kept for the group even while no instance runs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiokafka.errors  # type: ignore[import-untyped]
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener  # type: ignore[import-untyped]
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]

from chassis.sidecar._errors import ComponentError, InvalidMetadata
from chassis.sidecar.components import Driver, Message, meta_get, parse_duration
from chassis.sidecar.components._common import message_metadata, positive_duration, positive_int
from chassis.sidecar.components._held import Held, SeqClock, Wakeup, boolean, client_errors

__all__ = ["DRIVER", "KafkaPubSub"]

log = logging.getLogger(__name__)

DEFAULT_PROCESSING_TIMEOUT = 15.0
DEFAULT_REDELIVER_INTERVAL = 60.0
DEFAULT_SESSION_TIMEOUT = 10.0  # Dapr's (and Kafka's) defaults
DEFAULT_HEARTBEAT_INTERVAL = 3.0
DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024
FETCH_MAX_WAIT_MS = 100  # a fetch long-polls this long: `wait` sees other processes' publishes soon
CATCH_UP_TIMEOUT = 2.0  # how long `claim` fetches to reach what the broker had when it was called
# Headers carrying what the PubSub interface needs besides the body (the CloudEvent, untouched).
SEQ_HEADER = "chassis-seq"
METADATA_HEADER = "chassis-metadata"
INITIAL_OFFSETS = {"newest": "latest", "oldest": "earliest"}
# Dapr's TLS and SASL settings: refused, since connections here are plaintext without authentication.
_TLS_FIELDS = ("caCert", "clientCert", "clientKey")
_ERRORS = (aiokafka.errors.KafkaError, OSError, asyncio.TimeoutError)


def check_metadata(metadata: Mapping[str, str]) -> None:
    """Validate the metadata values this driver reads (raises InvalidMetadata)."""
    brokers(metadata)
    auth = meta_get(metadata, "authType").strip().lower() or "none"
    if auth != "none":
        raise InvalidMetadata(
            "authType", f"{auth!r} is not supported: only 'none' (plaintext, no SASL) is implemented"
        )
    for name in _TLS_FIELDS:
        if meta_get(metadata, name).strip():
            raise InvalidMetadata(name, "TLS is not supported: connections are plaintext")
    initial_offset(metadata)
    positive_int(metadata, "maxMessageBytes")
    positive_int(metadata, "partitionCount")
    for name in ("disableTls", "consumeRetryEnabled", "escapeHeaders"):
        boolean(metadata, name, False)
    _milliseconds_or_duration(metadata, "consumeRetryInterval")
    _group_timeouts(metadata)
    positive_duration(metadata, "processingTimeout", DEFAULT_PROCESSING_TIMEOUT)
    positive_duration(metadata, "redeliverInterval", DEFAULT_REDELIVER_INTERVAL)


def brokers(metadata: Mapping[str, str]) -> list[str]:
    """Dapr's comma-separated `brokers` as host:port strings."""
    text = meta_get(metadata, "brokers").strip()
    if not text:
        raise InvalidMetadata("brokers", "must not be empty (e.g. localhost:9092)")
    found = [part.strip() for part in text.split(",") if part.strip()]
    for broker in found:
        host, _, port = broker.rpartition(":")
        if not host or not port.isdigit():
            raise InvalidMetadata("brokers", f"expected host:port[,host:port...], got {text!r}")
    return found


def initial_offset(metadata: Mapping[str, str]) -> str:
    """Dapr's `initialOffset` (newest by default) as aiokafka's auto_offset_reset."""
    name = meta_get(metadata, "initialOffset", "newest").strip().lower() or "newest"
    if name not in INITIAL_OFFSETS:
        raise InvalidMetadata("initialOffset", f"must be newest or oldest, got {name!r}")
    return INITIAL_OFFSETS[name]


def _milliseconds_or_duration(metadata: Mapping[str, str], name: str) -> float | None:
    """A duration where, as Dapr documents for this component, a bare number means milliseconds."""
    text = meta_get(metadata, name).strip()
    if not text:
        return None
    try:
        seconds = int(text) / 1000 if text.isdigit() else parse_duration(text)
    except ValueError as exc:
        raise InvalidMetadata(name, str(exc)) from None
    if seconds < 0:
        raise InvalidMetadata(name, f"must not be negative, got {text!r}")
    return seconds


def _group_timeouts(metadata: Mapping[str, str]) -> tuple[float, float]:
    """(sessionTimeout, heartbeatInterval); the broker drops a member that misses heartbeats that long."""
    session = positive_duration(metadata, "sessionTimeout", DEFAULT_SESSION_TIMEOUT)
    heartbeat = positive_duration(metadata, "heartbeatInterval", DEFAULT_HEARTBEAT_INTERVAL)
    if heartbeat >= session:
        raise InvalidMetadata(
            "heartbeatInterval", f"must be shorter than sessionTimeout ({session:g}s), got {heartbeat:g}s"
        )
    return session, heartbeat


@dataclass(frozen=True)
class _Handle:
    """Where a delivered record lives; `epoch` tells a record of an earlier assignment apart."""

    tp: Any  # TopicPartition
    offset: int
    epoch: int


@dataclass
class _Partition:
    """One assigned partition: what was handed out and not acknowledged yet."""

    epoch: int
    pending: set[int] = field(default_factory=set)
    taken: int | None = None  # one past the last offset handed out
    committed: int = -1
    buffer: deque[Any] = field(default_factory=deque)  # fetched, not handed out (ConsumerRecord)

    def commit_point(self) -> int | None:
        """Every offset below this was acknowledged (or never handed out yet: None)."""
        if self.pending:
            return min(self.pending)
        return self.taken


class _Group(ConsumerRebalanceListener):  # type: ignore[misc]
    """The Kafka group member of one consumer group, and its partitions' bookkeeping."""

    def __init__(self, consumer: Any, wakeup: Wakeup) -> None:
        self.consumer = consumer
        self.topics: set[str] = set()
        self.settled = asyncio.Event()  # the latest rebalance finished
        self.partitions: dict[Any, _Partition] = {}
        self.commit_lock = asyncio.Lock()
        self.pinned: set[Any] = set()
        self._wakeup = wakeup
        self._epochs = 0

    async def on_partitions_revoked(self, revoked: Iterable[Any]) -> None:
        self.settled.clear()
        # The next owner starts where our acknowledgements end. (When our own subscription changed,
        # aiokafka has already dropped the assignment: the next ack commits instead.)
        if self.consumer.assignment():
            await self.commit()

    async def on_partitions_assigned(self, assigned: Iterable[Any]) -> None:
        assigned = set(assigned)
        for tp in set(self.partitions) - assigned:
            del self.partitions[tp]  # its held messages turn stale: the new owner redelivers them
        for tp in assigned:
            state = self.partitions.get(tp)
            if state is None:
                self._epochs += 1
                self.partitions[tp] = _Partition(self._epochs)
            else:
                # Kept across the rebalance: go on after what we handed out instead of re-reading it.
                state.buffer.clear()
                if state.taken is not None:
                    self.consumer.seek(tp, state.taken)
        self.settled.set()
        self._wakeup.notify()

    def owns(self, handle: _Handle) -> _Partition | None:
        state = self.partitions.get(handle.tp)
        return state if state is not None and state.epoch == handle.epoch else None

    async def commit(self) -> None:
        """Commit each partition up to its first unacknowledged offset; failures wait for the next try."""
        async with self.commit_lock:
            offsets = {}
            assigned = self.consumer.assignment()
            for tp, state in self.partitions.items():
                if tp not in assigned:
                    continue  # between a revocation and the next assignment
                point = state.commit_point()
                if point is not None and point > state.committed:
                    offsets[tp] = point
            if not offsets:
                return
            try:
                await self.consumer.commit(offsets)
            except _ERRORS as exc:  # a rebalance or a lost connection: the messages may come again
                log.warning("kafka: cannot commit offsets yet: %r", exc)
                return
            for tp, point in offsets.items():
                if tp in self.partitions:
                    self.partitions[tp].committed = max(self.partitions[tp].committed, point)


class KafkaPubSub:
    """A producer shared by all topics, and one consumer (group member) per consumer group."""

    def __init__(self, name: str, metadata: Mapping[str, str], *, app_id: str, base_dir: Path) -> None:
        check_metadata(metadata)
        self.name = name
        self.app_id = app_id
        self.processing_timeout = positive_duration(metadata, "processingTimeout", DEFAULT_PROCESSING_TIMEOUT)
        # Not used here: the delivery loop reads it as the cap of its retry back-off.
        self.redeliver_interval = positive_duration(metadata, "redeliverInterval", DEFAULT_REDELIVER_INTERVAL)
        self._brokers = brokers(metadata)
        self._group_name = meta_get(metadata, "consumerGroup").strip() or meta_get(metadata, "consumerID")
        self._client_id = meta_get(metadata, "clientID").strip() or app_id or "chassis"
        self._offset_reset = initial_offset(metadata)
        self._session, self._heartbeat = _group_timeouts(metadata)
        self._max_bytes = positive_int(metadata, "maxMessageBytes") or DEFAULT_MAX_MESSAGE_BYTES
        self._partition_count = positive_int(metadata, "partitionCount") or 1
        self._wakeup = Wakeup()
        self._held: Held[_Handle] = Held(self.processing_timeout, self._wakeup)
        self._seqs = SeqClock()
        self._producer: Any = None
        self._admin: Any = None
        self._groups: dict[str, _Group] = {}  # Kafka group id -> its member
        self._topics: set[str] = set()  # known to exist
        self._closed = False

    @classmethod
    async def open(
        cls, name: str, metadata: Mapping[str, str], *, app_id: str, base_dir: Path
    ) -> KafkaPubSub:
        """Connect the producer; raise ComponentError if no broker answers."""
        broker = cls(name, metadata, app_id=app_id, base_dir=base_dir)
        try:
            broker._producer = AIOKafkaProducer(
                bootstrap_servers=broker._brokers,
                client_id=broker._client_id,
                acks="all",
                max_request_size=broker._max_bytes,
            )
            await broker._producer.start()
            broker._admin = AIOKafkaAdminClient(
                bootstrap_servers=broker._brokers, client_id=broker._client_id
            )
            await broker._admin.start()
        except _ERRORS as exc:
            await broker.close()
            where = ",".join(broker._brokers)
            raise ComponentError(f"{name}: error connecting to kafka at {where}: {exc!r}") from None
        return broker

    def _check_open(self) -> None:
        if self._closed or self._producer is None:
            raise ComponentError(f"{self.name}: broker is closed")

    async def publish(self, topic: str, data: bytes, metadata: Mapping[str, str]) -> None:
        """Produce to the topic; returns once the broker acknowledged the record (acks=all)."""
        self._check_open()
        headers = [(key, value.encode()) for key, value in metadata.items()]
        headers += [
            (SEQ_HEADER, str(self._seqs.next()).encode()),
            (METADATA_HEADER, json.dumps(dict(metadata)).encode()),
        ]
        key = meta_get(metadata, "partitionKey").encode() or None
        with client_errors(self.name, "kafka", _ERRORS):
            await self._ensure_topic(topic)
            await self._producer.send_and_wait(topic, data, key=key, headers=headers)
        self._wakeup.notify()

    async def _ensure_topic(self, topic: str) -> None:
        """Create a missing topic (brokers may not auto-create, and never for consumers)."""
        if topic in self._topics:
            return
        response = await self._admin.create_topics([NewTopic(topic, self._partition_count, 1)])
        for _, code, *_ in response.topic_errors:
            if code not in (0, aiokafka.errors.TopicAlreadyExistsError.errno):
                raise aiokafka.errors.for_code(code)(f"creating topic {topic!r}")
        self._topics.add(topic)

    def group_id(self, group: str) -> str:
        """Dapr's consumer group: `consumerGroup`, else `consumerID`, else the caller's (the app id).

        `{appID}` in the value stands for the caller's group, as Dapr's templated metadata does.
        """
        return self._group_name.replace("{appID}", group) if self._group_name else group

    async def _member(self, group: str) -> _Group:
        """The group's member, started on first use (it joins once it has topics)."""
        group_id = self.group_id(group)
        if (member := self._groups.get(group_id)) is None:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self._brokers,
                client_id=self._client_id,
                group_id=group_id,
                enable_auto_commit=False,
                auto_offset_reset=self._offset_reset,
                session_timeout_ms=int(self._session * 1000),
                heartbeat_interval_ms=int(self._heartbeat * 1000),
                fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
            )
            await consumer.start()
            member = self._groups[group_id] = _Group(consumer, self._wakeup)
        return member

    async def subscribe(self, group: str, topic: str) -> None:
        """Add the topic to the group member's subscription and wait for the rebalance (idempotent)."""
        self._check_open()
        with client_errors(self.name, "kafka", _ERRORS):
            member = await self._member(group)
            if topic in member.topics:
                return
            await self._ensure_topic(topic)
            member.topics.add(topic)
            member.settled.clear()
            member.consumer.subscribe(topics=sorted(member.topics), listener=member)
            if not await self._settle(member, self._join_timeout()):
                log.warning("pubsub %s: group %s has not joined yet; it goes on in the background",
                            self.name, self.group_id(group))  # fmt: skip
                return
            await self._pin(member)

    def _join_timeout(self) -> float:
        # A broker waits for members to (re)join for up to a session, more when an old one lingers.
        return 3 * self._session

    async def _settle(self, member: _Group, seconds: float) -> bool:
        try:
            await asyncio.wait_for(member.settled.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def _pin(self, member: _Group) -> None:
        """Commit `initialOffset` for partitions the group never committed, so it keeps what comes next."""
        for tp in [tp for tp in member.partitions if tp not in member.pinned]:
            if await member.consumer.committed(tp) is None:
                position = await member.consumer.position(tp)
                await member.consumer.commit({tp: position})
            member.pinned.add(tp)

    async def claim(self, group: str, limit: int) -> list[Message]:
        """Up to `limit` messages of `group`: held ones that fell due first, then new ones in seq order."""
        self._check_open()
        if limit <= 0:
            return []
        member = self._groups.get(self.group_id(group))
        messages = self._due(group, member, limit)
        if member is None or not member.topics or len(messages) >= limit:
            return messages
        if messages and not member.settled.is_set():
            return messages  # a rebalance is running: hand out what is due without waiting for it
        with client_errors(self.name, "kafka", _ERRORS):
            if not await self._settle(member, self._session):
                return messages  # the rebalance goes on: nothing new is ours to hand out yet
            await self._pin(member)
            await self._catch_up(member, limit - len(messages))
        for record, state in _oldest(member, limit - len(messages)):
            state.pending.add(record.offset)
            state.taken = record.offset + 1
            handle = _Handle(TopicPartition(record.topic, record.partition), record.offset, state.epoch)
            messages.append(self._held.lease(group, self._message(record), handle))
        return messages

    def _due(self, group: str, member: _Group | None, limit: int) -> list[Message]:
        """Held messages due again, except those of partitions another member owns now."""
        messages = []
        for message in self._held.due(group, limit):
            handle = self._held.take(group, message)
            if handle is not None and member is not None and member.owns(handle) is not None:
                messages.append(self._held.lease(group, message, handle))
        return messages

    async def _catch_up(self, member: _Group, wanted: int) -> None:
        """Fetch until `wanted` records are buffered or everything stored when called is."""
        assigned = list(member.consumer.assignment())
        if not assigned or _buffered(member) >= wanted:
            return
        ends = await member.consumer.end_offsets(assigned)
        deadline = time.monotonic() + CATCH_UP_TIMEOUT
        while _buffered(member) < wanted and (left := deadline - time.monotonic()) > 0:
            behind = [tp for tp in assigned if await _behind(member, tp, ends[tp])]
            if not behind:
                return
            _buffer(member, await member.consumer.getmany(*behind, timeout_ms=int(left * 1000)))

    def _message(self, record: Any) -> Message:
        headers = {key: value for key, value in record.headers or ()}
        seq = _seq(headers.get(SEQ_HEADER))
        return Message(
            seq=seq if seq is not None else self._held.foreign_seq(),
            topic=record.topic,
            data=record.value or b"",
            metadata=_metadata(headers),
            attempts=1,
        )

    async def ack(self, group: str, message: Message) -> None:
        """Mark the message done and commit its partition as far as acknowledgements reach."""
        self._check_open()
        handle = self._held.take(group, message)
        member = self._groups.get(self.group_id(group))
        if handle is None or member is None or (state := member.owns(handle)) is None:
            return  # answered late, or the partition moved: its new owner delivers it again
        state.pending.discard(handle.offset)
        await member.commit()

    async def retry(self, group: str, message: Message, delay: float) -> None:
        """Keep holding the message (its offset stays uncommitted) and hand it out again after `delay`."""
        self._check_open()
        self._held.release(group, message, delay)

    async def wait(self, timeout: float) -> None:  # noqa: ASYNC109 (the PubSub interface)
        """Sleep up to `timeout` seconds, returning early when a message may be claimable.

        Each group member long-polls its partitions (what arrives is buffered for `claim`); local
        publishes, retries falling due and leases running out wake waiters directly.
        """
        if timeout <= 0:
            return
        fetches = [self._fetch(m, timeout) for m in self._groups.values() if m.consumer.assignment()]
        await self._wakeup.wait(timeout, *fetches)

    async def _fetch(self, member: _Group, seconds: float) -> None:
        try:
            records = await member.consumer.getmany(timeout_ms=int(seconds * 1000))
        except _ERRORS as exc:
            log.warning("pubsub %s: kafka: %r", self.name, exc)
            await asyncio.sleep(seconds)
            return
        _buffer(member, records)
        if not any(records.values()):
            await asyncio.sleep(seconds)  # nothing came: let the caller's timeout end the wait

    async def close(self) -> None:
        """Commit what was acknowledged, leave the groups, close the connections (idempotent)."""
        self._closed = True
        self._held.drop_all()
        groups, self._groups = list(self._groups.values()), {}
        producer, admin, self._producer, self._admin = self._producer, self._admin, None, None
        try:
            for member in groups:
                await member.commit()
                await member.consumer.stop()
            if producer is not None:
                await producer.stop()
            if admin is not None:
                await admin.close()
        except _ERRORS as exc:  # the broker is gone: what was not committed comes again
            log.warning("pubsub %s: kafka: error closing: %r", self.name, exc)


async def _behind(member: _Group, tp: Any, end: int) -> bool:
    """The member still owns `tp` and has not fetched up to `end` yet."""
    return tp in member.partitions and bool(await member.consumer.position(tp) < end)


def _buffered(member: _Group) -> int:
    return sum(len(state.buffer) for state in member.partitions.values())


def _buffer(member: _Group, records: Mapping[Any, list[Any]]) -> None:
    for tp, batch in records.items():
        if (state := member.partitions.get(tp)) is not None:
            state.buffer.extend(batch)


def _oldest(member: _Group, limit: int) -> list[tuple[Any, _Partition]]:
    """Up to `limit` buffered records, earliest published first (partition order is kept)."""
    taken: list[tuple[Any, _Partition]] = []
    while len(taken) < limit:
        heads = [state for state in member.partitions.values() if state.buffer]
        if not heads:
            break
        state = min(heads, key=lambda s: _seq(_header(s.buffer[0], SEQ_HEADER)) or 0)
        taken.append((state.buffer.popleft(), state))
    return taken


def _header(record: Any, name: str) -> bytes | None:
    return next((value for key, value in record.headers or () if key == name), None)


def _seq(header: bytes | None) -> int | None:
    text = header.decode(errors="replace") if header is not None else ""
    return int(text) if text.isdigit() else None


def _metadata(headers: Mapping[str, bytes]) -> dict[str, str]:
    """Our JSON copy of the publish metadata; else, as Dapr does, every header (daprd, other clients)."""
    if (metadata := message_metadata(headers.get(METADATA_HEADER))) is not None:
        return metadata
    return {
        key: (value or b"").decode(errors="replace") for key, value in headers.items() if key != SEQ_HEADER
    }


DRIVER = Driver(
    kind="pubsub",
    versions=("v1",),
    required=("brokers",),
    check=check_metadata,
    open=KafkaPubSub.open,
)
