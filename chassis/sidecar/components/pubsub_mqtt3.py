"""Dapr `pubsub.mqtt3` on an MQTT broker: a persistent session per consumer group, acked after the app.

As in Dapr's component, a consumer group is one MQTT session whose client id is `consumerID` (the
app id by default), with a plain subscription per topic, so every app gets every message. The
session is persistent (`cleanSession` false, Dapr's default): the broker keeps QoS 1 messages
published while the sidecar is down and, when the same client id connects again, redelivers (DUP)
what it had handed out unacknowledged, so a SIGKILLed sidecar loses nothing. Acks are manual: a
message is PUBACKed only once the app answered SUCCESS (or DROP). Leases and retry delays are kept
in this process (_held), since MQTT knows neither; a broker redelivery counts as attempt 2.
Groups other than the app's own (the outbox's) get the session `<consumerID>-<group>`; publishing
uses one more, non-persistent connection and returns once the broker's PUBACK arrived.

Sharing a topic among instances mirrors Dapr: nothing is shared automatically. A client id is one
session, so instances with the same consumerID take it from each other in turn (each connection
closes the previous one; what it held is redelivered). To spread a topic over instances, give each
its own, stable consumerID and subscribe to `$share/<group>/<topic>`, delivered to the app under
that name as daprd does (Mosquitto also queues such messages for members that are offline).
Wildcard subscriptions (`+`, `#`) work the same way. Messages for topics the app no longer
subscribes to (a persistent session keeps old subscriptions) stay unacknowledged, as in Dapr.

Deviations from Dapr, each for a reason:
- The protocol is MQTT 5 (Dapr's is 3.1.1), for two things 3.1.1 lacks: a Receive Maximum, so a
  session may hold more than the broker's default (Mosquitto: 20) unacknowledged messages, and user
  properties, which carry the publish metadata and a sequence number beside the untouched CloudEvent.
  Messages from MQTT 3 publishers (daprd) are delivered too, with empty metadata.
- `qos` 2 publishes with QoS 2 but subscribes with QoS 1: a QoS 2 delivery belongs to the client once
  it sent PUBREC, so a killed sidecar would lose it. `qos` 0 is accepted, and lossy as MQTT defines.
- ws:// and wss:// urls are refused; caCert, clientCert and clientKey need an ssl:// url.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import ssl
import tempfile
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from chassis.sidecar._errors import ComponentError, InvalidMetadata
from chassis.sidecar.components import Driver, Message, meta_get
from chassis.sidecar.components._common import message_metadata, positive_duration
from chassis.sidecar.components._held import Held, SeqClock, Wakeup, boolean, client_errors, whole_number

__all__ = ["DRIVER", "MQTTPubSub"]

log = logging.getLogger(__name__)

DEFAULT_PROCESSING_TIMEOUT = 15.0
DEFAULT_REDELIVER_INTERVAL = 60.0
REPLY_TIMEOUT = 20.0  # a CONNACK, PUBACK or SUBACK (Dapr's defaultWait)
SYNC_TIMEOUT = 5.0
KEEPALIVE = 30
RECONNECT_DELAYS = (1, 30)  # seconds, doubling from the first to the second
RECEIVE_MAXIMUM = 1000  # unacknowledged messages one session may hold (the MQTT 5 maximum is 65535)
SESSION_FOREVER = 0xFFFFFFFF  # Session Expiry Interval: kept until a clean session replaces it
# User properties carrying what the PubSub interface needs besides the payload (the CloudEvent, untouched).
SEQ_PROPERTY = "chassis-seq"
METADATA_PROPERTY = "chassis-metadata"
# Never subscribed: unsubscribing from it is a round trip that ends behind every message the broker
# had already routed to the session, so a claim sees whatever was published before it.
SYNC_TOPIC = "chassis/sync/never-subscribed"
SCHEMES = {"tcp": False, "mqtt": False, "ssl": True, "mqtts": True, "tcps": True, "tls": True}
DEFAULT_PORTS = {False: 1883, True: 8883}
TLS_FIELDS = ("caCert", "clientCert", "clientKey")
_ERRORS = (OSError, ValueError, TimeoutError)  # paho raises ValueError for a topic it cannot publish


@dataclass(frozen=True)
class Endpoint:
    """Where and how to connect, from `url` (tcp://user:password@host:port, ssl://...)."""

    host: str
    port: int
    tls: bool
    username: str | None
    password: str | None


def check_metadata(metadata: Mapping[str, str]) -> None:
    """Validate the metadata values this driver reads (raises InvalidMetadata)."""
    tls_context(metadata, endpoint(metadata))
    qos(metadata)
    for name in ("retain", "cleanSession"):
        boolean(metadata, name, False)
    positive_duration(metadata, "processingTimeout", DEFAULT_PROCESSING_TIMEOUT)
    positive_duration(metadata, "redeliverInterval", DEFAULT_REDELIVER_INTERVAL)


def endpoint(metadata: Mapping[str, str]) -> Endpoint:
    """The broker of `url`; errors never repeat the url, which may hold a password."""
    text = meta_get(metadata, "url").strip()
    if not text:
        raise InvalidMetadata("url", "must not be empty (e.g. tcp://localhost:1883)")
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise InvalidMetadata(
            "url", f"scheme {scheme!r} is not supported: use tcp://host:port, or ssl://host:port for TLS"
        )
    try:
        port = parts.port
    except ValueError:
        raise InvalidMetadata("url", "the port must be a number from 1 to 65535") from None
    if not parts.hostname:
        raise InvalidMetadata("url", "no host (e.g. tcp://localhost:1883)")
    tls = SCHEMES[scheme]
    return Endpoint(
        host=parts.hostname,
        port=port or DEFAULT_PORTS[tls],
        tls=tls,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )


def qos(metadata: Mapping[str, str]) -> int:
    """Dapr's `qos` (default 1)."""
    level = whole_number(metadata, "qos", 1)
    if level is None or level > 2:
        raise InvalidMetadata("qos", f"must be 0, 1 or 2, got {meta_get(metadata, 'qos')!r}")
    return level


def tls_context(metadata: Mapping[str, str], where: Endpoint) -> ssl.SSLContext | None:
    """The TLS settings of an ssl:// url: caCert, clientCert and clientKey are PEM text, as in Dapr."""
    ca, cert, key = (meta_get(metadata, name).strip() for name in TLS_FIELDS)
    if not where.tls:
        for name, value in zip(TLS_FIELDS, (ca, cert, key), strict=True):
            if value:
                raise InvalidMetadata(name, "needs an ssl:// url: a tcp:// connection is not encrypted")
        return None
    if bool(cert) != bool(key):
        raise InvalidMetadata("clientKey" if cert else "clientCert", "clientCert and clientKey go together")
    try:
        context = ssl.create_default_context(cadata=ca or None)
    except (ssl.SSLError, ValueError) as exc:
        raise InvalidMetadata("caCert", f"not a PEM certificate: {exc}") from None
    if cert:
        _load_client_certificate(context, cert, key)
    return context


def _load_client_certificate(context: ssl.SSLContext, cert: str, key: str) -> None:
    # The ssl module loads a certificate chain from files only.
    with tempfile.TemporaryDirectory() as folder:
        cert_file, key_file = Path(folder) / "cert.pem", Path(folder) / "key.pem"
        cert_file.write_text(cert)
        key_file.write_text(key)
        key_file.chmod(0o600)
        try:
            context.load_cert_chain(cert_file, key_file)
        except (ssl.SSLError, ValueError) as exc:
            raise InvalidMetadata("clientCert", f"not a PEM certificate with its key: {exc}") from None


class Handle(NamedTuple):
    """What acknowledging one delivery needs: the connection it came on, its packet id and QoS."""

    epoch: int
    mid: int
    qos: int


class Link:
    """One MQTT connection: paho's network thread, its callbacks handed over to the event loop."""

    def __init__(
        self,
        label: str,
        client_id: str,
        *,
        persistent: bool,
        on_message: Callable[[mqtt.MQTTMessage, int], None] | None = None,
        on_lost: Callable[[], None] | None = None,
        on_reconnect: Callable[[bool], None] | None = None,
    ) -> None:
        self.label = label
        self.client_id = client_id
        self.persistent = persistent
        # Bumped (in paho's thread) whenever the connection is lost: older handles are stale.
        self.epoch = 0
        self._loop = asyncio.get_running_loop()
        self._replies: dict[int, asyncio.Future[list[ReasonCode]]] = {}
        self._connected: asyncio.Future[ReasonCode] = self._loop.create_future()
        self._on_lost = on_lost
        self._on_reconnect = on_reconnect
        self._closing = False
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, manual_ack=True
        )
        self.client.on_connect = self._connect_callback
        self.client.on_disconnect = self._disconnect_callback
        self.client.on_socket_open = self._socket_callback
        self.client.on_publish = self._publish_callback
        self.client.on_subscribe = self._subscribe_callback
        self.client.on_unsubscribe = self._subscribe_callback
        if on_message is not None:
            self.client.on_message = lambda _c, _u, msg: self._soon(on_message, msg, self.epoch)

    async def start(self, where: Endpoint, tls: ssl.SSLContext | None) -> None:
        """Connect and start the network thread; ComponentError when the broker cannot be used."""
        client = self.client
        if where.username is not None:
            client.username_pw_set(where.username, where.password)
        if tls is not None:
            client.tls_set_context(tls)
        client.reconnect_delay_set(*RECONNECT_DELAYS)
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = SESSION_FOREVER if self.persistent else 0
        properties.ReceiveMaximum = RECEIVE_MAXIMUM
        failed = f"{self.label}: error connecting to mqtt at {where.host}:{where.port}"
        try:
            await asyncio.to_thread(
                client.connect,
                where.host,
                where.port,
                KEEPALIVE,
                clean_start=not self.persistent,
                properties=properties,
            )
        except OSError as exc:
            raise ComponentError(f"{failed}: {exc!r}") from None
        client.loop_start()
        try:
            reason = await asyncio.wait_for(asyncio.shield(self._connected), REPLY_TIMEOUT)
        except TimeoutError:
            reason = None
        if reason is None or reason.is_failure:
            await self.close()
            raise ComponentError(f"{failed}: refused ({reason or 'no CONNACK'})")

    def _soon(self, callback: Callable[..., None], *args: Any) -> None:
        """Run `callback` on the event loop (paho calls back from its own thread)."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is left to tell
            self._loop.call_soon_threadsafe(callback, *args)

    def _connect_callback(self, _c: Any, _u: Any, flags: Any, reason: ReasonCode, _p: Any) -> None:
        self._soon(self._connected_now, reason, bool(flags.session_present))

    def _connected_now(self, reason: ReasonCode, session_present: bool) -> None:
        if not self._connected.done():
            self._connected.set_result(reason)
        elif not reason.is_failure and self._on_reconnect is not None:
            log.info("%s: mqtt connection %s is back", self.label, self.client_id)
            self._on_reconnect(session_present)

    def _socket_callback(self, _c: Any, _u: Any, sock: Any) -> None:
        # Acks and the sync round trip are tiny packets: without this, Nagle holds them ~40 ms.
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _disconnect_callback(self, _c: Any, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        self.epoch += 1
        self._soon(self._lost, reason)

    def _lost(self, reason: ReasonCode) -> None:
        if not self._connected.done():  # refused before the CONNACK (a client certificate missing...)
            self._connected.set_result(reason)
            return
        if self._closing:
            return
        # Also what another client connecting with the same client id looks like (Mosquitto just
        # closes the connection): the two then take the session from each other in turn, as in Dapr.
        log.warning("%s: mqtt connection %s lost (%s); reconnecting", self.label, self.client_id, reason)
        if self._on_lost is not None:
            self._on_lost()

    def _publish_callback(self, _c: Any, _u: Any, mid: int, reason: ReasonCode, _p: Any) -> None:
        self._soon(self._replied, mid, [reason])

    def _subscribe_callback(self, _c: Any, _u: Any, mid: int, reasons: list[ReasonCode], _p: Any) -> None:
        self._soon(self._replied, mid, list(reasons))

    def _replied(self, mid: int, reasons: list[ReasonCode]) -> None:
        waiter = self._replies.pop(mid, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(reasons)

    def _expect(self, mid: int) -> asyncio.Future[list[ReasonCode]]:
        # Called right after paho took the packet, before any await: the reply cannot be handled first.
        waiter = self._loop.create_future()
        self._replies[mid] = waiter
        return waiter

    async def _reply(self, waiter: asyncio.Future[list[ReasonCode]], what: str) -> list[ReasonCode]:
        try:
            return await asyncio.wait_for(waiter, REPLY_TIMEOUT)
        except TimeoutError:
            raise ComponentError(
                f"{self.label}: no {what} from the mqtt broker within {REPLY_TIMEOUT:g}s"
            ) from None

    async def publish(
        self, topic: str, payload: bytes, level: int, retain: bool, properties: Properties
    ) -> None:
        """Publish; returns once the broker acknowledged it (for QoS 0: once it was sent)."""
        info = self.client.publish(topic, payload, level, retain, properties)
        queued = info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN and level > 0  # sent once reconnected
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS and not queued:
            raise ComponentError(f"{self.label}: mqtt publish failed: {mqtt.error_string(info.rc)}")
        # The reply timeout bounds how long a publish waits for a reconnect.
        reasons = await self._reply(self._expect(info.mid), "PUBACK")
        if reasons[0].is_failure:
            raise ComponentError(
                f"{self.label}: the mqtt broker refused the message on {topic!r}: {reasons[0]}"
            )

    async def subscribe(self, filters: list[str], level: int) -> None:
        """Subscribe to every filter; ComponentError naming the first one the broker refuses."""
        options = SubscribeOptions(qos=level)
        rc, mid = self.client.subscribe([(topic, options) for topic in filters])
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise ComponentError(f"{self.label}: mqtt subscribe failed: {mqtt.error_string(rc)}")
        reasons = await self._reply(self._expect(mid), "SUBACK")
        for topic, reason in zip(filters, reasons, strict=False):
            if reason.is_failure:
                raise ComponentError(
                    f"{self.label}: the mqtt broker refused a subscription to {topic!r}: {reason}"
                )

    def resubscribe(self, filters: list[str], level: int) -> None:
        """Subscribe again after a reconnect that found no session (nothing to wait for here)."""
        if filters:
            options = SubscribeOptions(qos=level)
            self.client.subscribe([(topic, options) for topic in filters])

    async def sync(self) -> None:
        """Wait until every message the broker routed to this session so far has been received."""
        rc, mid = self.client.unsubscribe(SYNC_TOPIC)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            return  # not connected: nothing more is arriving
        with contextlib.suppress(TimeoutError):  # a slow broker: claim what has arrived
            await asyncio.wait_for(self._expect(mid), SYNC_TIMEOUT)

    def ack(self, handle: Handle) -> None:
        """PUBACK one delivery, unless it came on a connection since lost (the broker resends it)."""
        if handle.qos and handle.epoch == self.epoch:
            self.client.ack(handle.mid, handle.qos)

    async def close(self) -> None:
        """Disconnect (a persistent session stays at the broker) and stop the network thread."""
        self._closing = True
        for waiter in self._replies.values():
            if not waiter.done():
                waiter.set_exception(ComponentError(f"{self.label}: broker is closed"))
        self._replies.clear()
        self.client.disconnect()
        await asyncio.to_thread(self.client.loop_stop)


@dataclass
class Group:
    """One consumer group: its session, the topics it subscribed and what arrived but is not claimed."""

    link: Link
    held: Held[Handle]
    topics: dict[str, None] = field(default_factory=dict)  # in subscription order
    inbox: deque[tuple[Message, Handle]] = field(default_factory=deque)


class MQTTPubSub:
    """A broker on an MQTT server: a connection per consumer group, plus one for publishing."""

    def __init__(self, name: str, metadata: Mapping[str, str], *, app_id: str, base_dir: Path) -> None:
        check_metadata(metadata)
        self.name = name
        self.app_id = app_id
        self.processing_timeout = positive_duration(metadata, "processingTimeout", DEFAULT_PROCESSING_TIMEOUT)
        # Not used here: the delivery loop reads it as the cap of its retry back-off.
        self.redeliver_interval = positive_duration(metadata, "redeliverInterval", DEFAULT_REDELIVER_INTERVAL)
        self.consumer_id = meta_get(metadata, "consumerID").strip() or app_id
        self._endpoint = endpoint(metadata)
        self._tls = tls_context(metadata, self._endpoint)
        self._qos = qos(metadata)
        self._retain = boolean(metadata, "retain", False)
        self._persistent = not boolean(metadata, "cleanSession", False)
        self._wakeup = Wakeup()
        self._seqs = SeqClock()
        self._publisher: Link | None = None
        self._groups: dict[str, Group] = {}
        self._joining = asyncio.Lock()
        self._closed = False

    @classmethod
    async def open(cls, name: str, metadata: Mapping[str, str], *, app_id: str, base_dir: Path) -> MQTTPubSub:
        """Connect the publishing connection; raise ComponentError if the broker cannot be used."""
        broker = cls(name, metadata, app_id=app_id, base_dir=base_dir)
        # Its own client id: sessions are the groups'; two publishers must not take each other over.
        publisher = Link(name, f"{broker.consumer_id}-publisher-{uuid.uuid4().hex[:8]}", persistent=False)
        await publisher.start(broker._endpoint, broker._tls)
        broker._publisher = publisher
        return broker

    def client_id(self, group: str) -> str:
        """A group's session: consumerID for the app's own group (as Dapr), else `<consumerID>-<group>`."""
        return self.consumer_id if group == self.app_id else f"{self.consumer_id}-{group}"

    def _check_open(self) -> Link:
        if self._closed or self._publisher is None:
            raise ComponentError(f"{self.name}: broker is closed")
        return self._publisher

    async def publish(self, topic: str, data: bytes, metadata: Mapping[str, str]) -> None:
        """Publish to the topic; returns once the broker acknowledged the message (QoS 1 and 2)."""
        publisher = self._check_open()
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.UserProperty = [
            (SEQ_PROPERTY, str(self._seqs.next())),
            (METADATA_PROPERTY, json.dumps(dict(metadata))),
        ]
        with client_errors(self.name, "mqtt", _ERRORS):
            await publisher.publish(topic, data, self._qos, self._retained(metadata), properties)
        self._wakeup.notify()

    def _retained(self, metadata: Mapping[str, str]) -> bool:
        """The component's `retain`, or the request's, as Dapr lets a publish override it."""
        try:
            return boolean(metadata, "retain", self._retain)
        except InvalidMetadata as exc:
            raise ComponentError(f"{self.name}: {exc}") from None

    async def subscribe(self, group: str, topic: str) -> None:
        """Subscribe the group's session to `topic` (idempotent); the session connects on first use."""
        self._check_open()
        state = await self._group(group)
        if topic in state.topics:
            return
        with client_errors(self.name, "mqtt", _ERRORS):
            await state.link.subscribe([topic], self._subscribe_qos)
        state.topics[topic] = None

    @property
    def _subscribe_qos(self) -> int:
        return min(self._qos, 1)  # see the module docstring: QoS 2 deliveries cannot wait for the app

    async def _group(self, group: str) -> Group:
        async with self._joining:
            if (state := self._groups.get(group)) is not None:
                return state
            link = Link(
                self.name,
                self.client_id(group),
                persistent=self._persistent,
                on_message=lambda msg, epoch: self._arrived(group, msg, epoch),
                on_lost=lambda: self._lost(group),
                on_reconnect=lambda session_present: self._reconnected(group, session_present),
            )
            # Registered first: a resumed session's messages arrive right after the CONNACK.
            state = self._groups[group] = Group(link, Held(self.processing_timeout, self._wakeup))
            try:
                await link.start(self._endpoint, self._tls)
            except BaseException:
                self._groups.pop(group, None)
                raise
            return state

    def _arrived(self, group: str, msg: mqtt.MQTTMessage, epoch: int) -> None:
        state = self._groups.get(group)
        if self._closed or state is None or epoch != state.link.epoch:
            return  # came on a connection since lost: the broker sends it again
        properties = dict(getattr(msg.properties, "UserProperty", None) or [])
        seq = _seq(properties.get(SEQ_PROPERTY))
        message = Message(
            seq=seq if seq is not None else state.held.foreign_seq(),
            topic=msg.topic,  # the subscription it came through is looked up when it is claimed
            data=bytes(msg.payload),
            metadata=_metadata(properties.get(METADATA_PROPERTY)),
            attempts=2 if msg.dup else 1,  # the broker flags a redelivery, it does not count them
        )
        state.inbox.append((message, Handle(epoch, msg.mid, msg.qos)))
        self._wakeup.notify()

    def _lost(self, group: str) -> None:
        # Whatever the lost connection held unacknowledged comes again (DUP) on the next one.
        if (state := self._groups.get(group)) is not None:
            state.inbox.clear()
            state.held.drop_all()
        self._wakeup.notify()

    def _reconnected(self, group: str, session_present: bool) -> None:
        state = self._groups.get(group)
        if state is not None and not session_present:  # a clean (or expired) session lost the subscriptions
            state.link.resubscribe(list(state.topics), self._subscribe_qos)

    async def claim(self, group: str, limit: int) -> list[Message]:
        """Up to `limit` messages of `group`: held ones that fell due first, then newly arrived ones."""
        self._check_open()
        state = self._groups.get(group)
        if limit <= 0 or state is None:
            return []
        messages = state.held.due(group, limit)
        if len(messages) + len(state.inbox) < limit:
            await state.link.sync()
        waiting: list[tuple[Message, Handle]] = []
        while state.inbox and len(messages) < limit:
            message, handle = state.inbox.popleft()
            if (topic := _subscribed_as(state.topics, message.topic)) is None:
                waiting.append((message, handle))  # its subscription is not (yet) this process's
                continue
            messages.append(state.held.lease(group, replace(message, topic=topic), handle))
        state.inbox.extendleft(reversed(waiting))
        return messages

    async def ack(self, group: str, message: Message) -> None:
        """PUBACK the delivery: the broker forgets it."""
        self._check_open()
        state = self._groups.get(group)
        if state is not None and (handle := state.held.take(group, message)) is not None:
            state.link.ack(handle)

    async def retry(self, group: str, message: Message, delay: float) -> None:
        """Keep holding the message (unacknowledged) and hand it out again after `delay` seconds."""
        self._check_open()
        if (state := self._groups.get(group)) is not None:
            state.held.release(group, message, delay)

    async def wait(self, timeout: float) -> None:  # noqa: ASYNC109 (the PubSub interface)
        """Sleep up to `timeout` seconds, returning early when a message may be claimable.

        A message arriving on any group's session, a local publish, a retry falling due or a lease
        running out wake waiters.
        """
        await self._wakeup.wait(timeout)

    async def close(self) -> None:
        """Disconnect (idempotent); what was held unacknowledged is redelivered to the next session."""
        if self._closed:
            return
        self._closed = True
        links = [state.link for state in self._groups.values()]
        if self._publisher is not None:
            links.append(self._publisher)
        for state in self._groups.values():
            state.held.drop_all()
        self._groups.clear()
        self._publisher = None
        await asyncio.gather(*(link.close() for link in links))


def _subscribed_as(topics: Mapping[str, None], topic: str) -> str | None:
    """The subscription a message came through, which is the topic the app subscribed under.

    Shared subscriptions (`$share/<group>/<filter>`) and wildcard filters deliver messages under
    their real topic; daprd hands them to the subscription's handler, and so does this. None when
    the app did not subscribe (yet): a persistent session keeps subscriptions from earlier runs.
    """
    if topic in topics:
        return topic
    for subscribed in topics:
        pattern = subscribed
        if pattern.startswith("$share/"):
            pattern = pattern.split("/", 2)[2] if pattern.count("/") >= 2 else pattern
        if mqtt.topic_matches_sub(pattern, topic):
            return subscribed
    return None


def _seq(text: str | None) -> int | None:
    return int(text) if text is not None and text.isdigit() else None


def _metadata(text: str | None) -> dict[str, str]:
    """The metadata property; messages from other clients (daprd) lack it or hold something else."""
    return message_metadata(text) or {}


DRIVER = Driver(
    kind="pubsub",
    versions=("v1",),
    required=("url",),
    check=check_metadata,
    open=MQTTPubSub.open,
    capabilities=("SUBSCRIBE_WILDCARDS",),
)
