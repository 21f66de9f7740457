"""Dapr `pubsub.rabbitmq`: an exchange per topic, a queue `<consumerID>-<topic>` per consumer group.

As in Dapr's component, each topic is an exchange (`exchangeKind`, fanout by default) and each
subscribing app binds its own queue to it, so every app gets every message and the instances of
one app compete for the queue. `publish` waits for the broker's publisher confirm, so a message is
the broker's once it returns. `claim` pulls with basic.get (competing instances take turns, nothing
is pushed to an instance that does not ask); a claimed message stays unacknowledged on this
connection until `ack`, so if the process dies RabbitMQ puts it back on the queue. Leases and retry
delays are kept in this process (_held): the broker has no notion of either.

Honoured metadata: connectionString (or protocol/hostname/username/password), consumerID, durable,
deletedWhenUnused, deliveryMode, exchangeKind, maxLen, maxLenBytes, ttlInSeconds, plus this sidecar's
processingTimeout and redeliverInterval. Publisher confirms are always on (publish must mean stored);
prefetchCount, requeueInFailure and concurrency are accepted but change nothing, since nothing is
pushed and retries are the sidecar's; autoAck and enableDeadLetter are refused (see _UNSUPPORTED).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import aio_pika
import aio_pika.abc
import aio_pika.exceptions
import aiormq.exceptions

from chassis.sidecar._errors import ComponentError, InvalidMetadata
from chassis.sidecar.components import Driver, Message, meta_get
from chassis.sidecar.components._common import message_metadata, positive_duration
from chassis.sidecar.components._held import Held, SeqClock, Wakeup, boolean, client_errors, whole_number

__all__ = ["DRIVER", "RabbitMQPubSub"]

DEFAULT_PROCESSING_TIMEOUT = 15.0
DEFAULT_REDELIVER_INTERVAL = 60.0
CONNECT_TIMEOUT = 5.0
# Headers carrying what the PubSub interface needs besides the body (the CloudEvent, untouched).
SEQ_HEADER = "chassis-seq"
METADATA_HEADER = "chassis-metadata"
EXCHANGE_KINDS = {"fanout": aio_pika.ExchangeType.FANOUT, "topic": aio_pika.ExchangeType.TOPIC}
_Incoming = aio_pika.abc.AbstractIncomingMessage
# What aio-pika/aiormq raise when the broker refuses or the connection is gone.
_AMQP_ERRORS = (
    aiormq.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,
    ConnectionError,
    TimeoutError,  # a basic.get or confirm the broker never answered
)
# Options that would change what a delivery means; rejected instead of silently ignored.
_UNSUPPORTED = {
    "autoAck": "acknowledging on delivery would lose messages whose handler fails; use the default false",
    "enableDeadLetter": "dead letters are routed by the sidecar (deadLetterTopic on the subscription)",
}


def check_metadata(metadata: Mapping[str, str]) -> None:
    """Validate the metadata values this driver reads (raises InvalidMetadata)."""
    connection_url(metadata)
    for name, why in _UNSUPPORTED.items():
        if boolean(metadata, name, False):
            raise InvalidMetadata(name, f"'true' is not supported: {why}")
    for name in ("durable", "deletedWhenUnused", "requeueInFailure", "publisherConfirm"):
        boolean(metadata, name, False)
    for name in ("prefetchCount", "maxLen", "maxLenBytes"):
        whole_number(metadata, name, None)
    _delivery_mode(metadata)
    _exchange_kind(metadata)
    positive_duration(metadata, "processingTimeout", DEFAULT_PROCESSING_TIMEOUT)
    positive_duration(metadata, "redeliverInterval", DEFAULT_REDELIVER_INTERVAL)
    positive_duration(metadata, "ttlInSeconds", 1.0)


def connection_url(metadata: Mapping[str, str]) -> str:
    """`connectionString`, or one built from protocol/hostname/username/password as Dapr does."""
    text = meta_get(metadata, "connectionString").strip()
    if not text:
        host = meta_get(metadata, "hostname").strip()
        if not host:
            raise InvalidMetadata("connectionString", "must not be empty (or give hostname)")
        user = quote(meta_get(metadata, "username"), safe="")
        password = quote(meta_get(metadata, "password"), safe="")
        credentials = f"{user}:{password}@" if user else ""
        text = f"{meta_get(metadata, 'protocol') or 'amqp'}://{credentials}{host}"
    scheme = urlsplit(text).scheme
    if scheme not in ("amqp", "amqps"):
        raise InvalidMetadata("connectionString", f"expected amqp://user:pass@host:port, got {text!r}")
    protocol = meta_get(metadata, "protocol").strip()
    if protocol and protocol != scheme:
        raise InvalidMetadata("protocol", f"{protocol!r} does not match the connection string's {scheme!r}")
    return text


def _delivery_mode(metadata: Mapping[str, str]) -> aio_pika.DeliveryMode:
    mode = whole_number(metadata, "deliveryMode", 0)
    if mode is None or mode > 2:
        raise InvalidMetadata(
            "deliveryMode", f"must be 0, 1 or 2, got {meta_get(metadata, 'deliveryMode')!r}"
        )
    # RabbitMQ treats 2 as persistent and anything else as transient.
    return aio_pika.DeliveryMode.PERSISTENT if mode == 2 else aio_pika.DeliveryMode.NOT_PERSISTENT


def _exchange_kind(metadata: Mapping[str, str]) -> aio_pika.ExchangeType:
    kind = meta_get(metadata, "exchangeKind", "fanout").strip() or "fanout"
    if kind not in EXCHANGE_KINDS:
        raise InvalidMetadata("exchangeKind", f"must be fanout or topic, got {kind!r}")
    return EXCHANGE_KINDS[kind]


def _queue_arguments(metadata: Mapping[str, str]) -> dict[str, Any]:
    """x-arguments of every queue: Dapr's maxLen, maxLenBytes and ttlInSeconds."""
    arguments: dict[str, Any] = {}
    if (max_len := whole_number(metadata, "maxLen", None)) is not None:
        arguments["x-max-length"] = max_len
    if (max_bytes := whole_number(metadata, "maxLenBytes", None)) is not None:
        arguments["x-max-length-bytes"] = max_bytes
    if meta_get(metadata, "ttlInSeconds"):
        ttl = positive_duration(metadata, "ttlInSeconds", 1.0)
        arguments["x-message-ttl"] = int(ttl * 1000)
    return arguments


class RabbitMQPubSub:
    """A broker on one RabbitMQ connection: one channel publishes (with confirms), one claims."""

    def __init__(self, name: str, metadata: Mapping[str, str], *, app_id: str, base_dir: Path) -> None:
        check_metadata(metadata)
        self.name = name
        self.app_id = app_id
        self.processing_timeout = positive_duration(metadata, "processingTimeout", DEFAULT_PROCESSING_TIMEOUT)
        # Not used here: the delivery loop reads it as the cap of its retry back-off.
        self.redeliver_interval = positive_duration(metadata, "redeliverInterval", DEFAULT_REDELIVER_INTERVAL)
        self.consumer_id = meta_get(metadata, "consumerID")
        self._url = connection_url(metadata)
        self._durable = boolean(metadata, "durable", False)
        self._auto_delete = boolean(metadata, "deletedWhenUnused", True)
        self._delivery_mode = _delivery_mode(metadata)
        self._exchange_kind = _exchange_kind(metadata)
        self._arguments = _queue_arguments(metadata)
        self._wakeup = Wakeup()
        self._held: Held[_Incoming] = Held(self.processing_timeout, self._wakeup)
        self._seqs = SeqClock()
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None
        self._publisher: aio_pika.abc.AbstractChannel | None = None
        self._consumer: aio_pika.abc.AbstractChannel | None = None
        self._exchanges: dict[str, aio_pika.abc.AbstractExchange] = {}
        self._queues: dict[str, dict[str, aio_pika.abc.AbstractQueue]] = {}  # group -> topic -> queue
        self._signal: aio_pika.abc.AbstractQueue | None = None
        self._turn = 0
        self._closed = False

    @classmethod
    async def open(
        cls, name: str, metadata: Mapping[str, str], *, app_id: str, base_dir: Path
    ) -> RabbitMQPubSub:
        """Connect and open the channels; raise ComponentError if the broker cannot be used."""
        broker = cls(name, metadata, app_id=app_id, base_dir=base_dir)
        try:
            await broker._connect()
        except BaseException:
            await broker.close()
            raise
        return broker

    async def _connect(self) -> None:
        try:
            # A robust connection reconnects (and redeclares what we declared) after a broker restart.
            self._connection = await aio_pika.connect_robust(self._url, timeout=CONNECT_TIMEOUT)
            self._publisher = await self._connection.channel(publisher_confirms=True)
            self._consumer = await self._connection.channel(publisher_confirms=False)
        except (*_AMQP_ERRORS, OSError) as exc:
            url = urlsplit(self._url)  # no credentials in the message
            where = f"{url.hostname}:{url.port or 5672}"
            raise ComponentError(f"{self.name}: error connecting to rabbitmq at {where}: {exc!r}") from None
        self._connection.reconnect_callbacks.add(self._on_reconnect)

    def _on_reconnect(self, *_: Any) -> None:
        # Deliveries of the old connection went back to their queues: forget them, as their acks would fail.
        self._held.drop_all()
        self._wakeup.notify()

    def _check_open(self) -> tuple[aio_pika.abc.AbstractChannel, aio_pika.abc.AbstractChannel]:
        if self._closed or self._publisher is None or self._consumer is None:
            raise ComponentError(f"{self.name}: broker is closed")
        return self._publisher, self._consumer

    async def _exchange(self, topic: str) -> aio_pika.abc.AbstractExchange:
        """The topic's exchange, declared once per instance (durable, as Dapr declares it)."""
        publisher, _ = self._check_open()
        if (exchange := self._exchanges.get(topic)) is None:
            exchange = await publisher.declare_exchange(topic, self._exchange_kind, durable=True)
            self._exchanges[topic] = exchange
        return exchange

    async def publish(self, topic: str, data: bytes, metadata: Mapping[str, str]) -> None:
        """Publish to the topic's exchange; returns once the broker confirmed the message."""
        headers: dict[str, aio_pika.abc.FieldValue] = {
            SEQ_HEADER: str(self._seqs.next()),  # wider than AMQP's 64-bit integers
            METADATA_HEADER: json.dumps(dict(metadata)),
        }
        message = aio_pika.Message(data, headers=headers, delivery_mode=self._delivery_mode)
        with client_errors(self.name, "rabbitmq", _AMQP_ERRORS):
            exchange = await self._exchange(topic)
            # Not mandatory: a topic nobody subscribes to drops the message, as in Dapr.
            await exchange.publish(message, routing_key=topic, mandatory=False)
        self._wakeup.notify()

    def queue_name(self, group: str, topic: str) -> str:
        """Dapr's queue name: `<consumerID>-<topic>`; the group (app id) is the consumer id by default."""
        return f"{self.consumer_id or group}-{topic}"

    async def subscribe(self, group: str, topic: str) -> None:
        """Declare the group's queue and bind it to the topic's exchange (idempotent)."""
        _, consumer = self._check_open()
        with client_errors(self.name, "rabbitmq", _AMQP_ERRORS):
            exchange = await self._exchange(topic)
            queue = await consumer.declare_queue(
                self.queue_name(group, topic),
                durable=self._durable,
                auto_delete=self._auto_delete,
                arguments=self._arguments,
            )
            await queue.bind(exchange, routing_key=topic)
            await self._bind_signal(exchange)
        self._queues.setdefault(group, {})[topic] = queue

    async def _bind_signal(self, exchange: aio_pika.abc.AbstractExchange) -> None:
        """Bind this instance's signal queue, which wakes `wait` when anyone publishes to the topic.

        It keeps at most one message (x-max-length 1, oldest dropped) and is consumed without acks:
        a doorbell, not a copy of the traffic.
        """
        _, consumer = self._check_open()
        if self._signal is None:
            self._signal = await consumer.declare_queue(
                exclusive=True, auto_delete=True, arguments={"x-max-length": 1}
            )
            await self._signal.consume(self._on_signal, no_ack=True)
        await self._signal.bind(exchange, routing_key="#")

    async def _on_signal(self, _: _Incoming) -> None:
        self._wakeup.notify()

    async def claim(self, group: str, limit: int) -> list[Message]:
        """Up to `limit` messages of `group`: held ones that fell due first, then new ones."""
        self._check_open()
        if limit <= 0:
            return []
        messages = self._held.due(group, limit)
        queues = self._rotated(list(self._queues.get(group, {}).items()))
        with client_errors(self.name, "rabbitmq", _AMQP_ERRORS):
            for topic, queue in queues:
                while len(messages) < limit and (incoming := await queue.get(no_ack=False, fail=False)):
                    messages.append(self._held.lease(group, self._message(topic, incoming), incoming))
        return messages

    def _rotated(self, queues: list[Any]) -> list[Any]:
        """Start each claim at the next queue, so one busy topic cannot starve the others."""
        if not queues:
            return queues
        self._turn = (self._turn + 1) % len(queues)
        return queues[self._turn :] + queues[: self._turn]

    def _message(self, topic: str, incoming: _Incoming) -> Message:
        headers = incoming.headers or {}
        seq = _seq(headers.get(SEQ_HEADER))
        return Message(
            seq=seq if seq is not None else self._held.foreign_seq(),
            topic=topic,
            data=incoming.body,
            metadata=_metadata(headers.get(METADATA_HEADER)),
            attempts=_attempts(incoming),
        )

    async def ack(self, group: str, message: Message) -> None:
        """basic.ack: the message leaves the group's queue."""
        self._check_open()
        incoming = self._held.take(group, message)
        if incoming is not None:
            with client_errors(self.name, "rabbitmq", _AMQP_ERRORS):
                await incoming.ack()

    async def retry(self, group: str, message: Message, delay: float) -> None:
        """Keep holding the message and hand it out again after `delay` seconds."""
        self._check_open()
        self._held.release(group, message, delay)

    async def wait(self, timeout: float) -> None:  # noqa: ASYNC109 (the PubSub interface)
        """Sleep up to `timeout` seconds, returning early when a message may be claimable.

        A publish by anyone to a subscribed topic rings this instance's signal queue; local
        publishes, retries falling due and leases running out wake waiters directly.
        """
        await self._wakeup.wait(timeout)

    async def close(self) -> None:
        """Close the connection (idempotent); what we held unacknowledged goes back to its queues."""
        self._closed = True
        self._held.drop_all()
        connection, self._connection = self._connection, None
        self._publisher = self._consumer = self._signal = None
        if connection is not None:
            await connection.close()


def _metadata(header: object) -> dict[str, str]:
    """The metadata header; messages from other clients (daprd) may lack it or hold something else."""
    return message_metadata(header if isinstance(header, str | bytes) else None) or {}


def _seq(header: object) -> int | None:
    text = header.decode(errors="replace") if isinstance(header, bytes) else header
    return int(text) if isinstance(text, str) and text.isdigit() else None


def _attempts(incoming: _Incoming) -> int:
    """Quorum queues count deliveries (x-delivery-count); classic queues only flag a redelivery."""
    count = (incoming.headers or {}).get("x-delivery-count")
    if isinstance(count, int):
        return count + 1
    return 2 if incoming.redelivered else 1


DRIVER = Driver(
    kind="pubsub",
    versions=("v1",),
    required=(),  # connectionString, or hostname: check_metadata says which is missing
    check=check_metadata,
    open=RabbitMQPubSub.open,
)
