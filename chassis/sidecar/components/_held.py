"""In-process leases for brokers whose consumers hold unacknowledged messages themselves.

RabbitMQ, NATS JetStream and MQTT hand a message to one consumer and redeliver it when that
consumer's connection dies; none of them knows our `processingTimeout` lease or a retry delay. The
broker drivers keep what they hold here: a lease that runs out, or a retry that falls due, makes the
message claimable again in this process (attempts + 1), while the broker still guarantees redelivery
to someone else if this process dies first. Shared by every such driver so they cannot drift apart.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Awaitable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Generic, TypeVar

from chassis.sidecar._errors import ComponentError, InvalidMetadata
from chassis.sidecar.components import Message, meta_get

__all__ = ["Held", "SeqClock", "Wakeup", "boolean", "client_errors", "whole_number"]

H = TypeVar("H")  # the broker's handle of a delivery (what ack/nak needs)

# Go's strconv.ParseBool, which Dapr's metadata decoder uses.
_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


def boolean(metadata: Mapping[str, str], name: str, default: bool) -> bool:
    """A boolean metadata value as Dapr parses it (raises InvalidMetadata)."""
    text = meta_get(metadata, name).strip()
    if not text:
        return default
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise InvalidMetadata(name, f"must be true or false, got {text!r}")


def whole_number(metadata: Mapping[str, str], name: str, default: int | None) -> int | None:
    """A non-negative integer metadata value, `default` when absent (raises InvalidMetadata)."""
    text = meta_get(metadata, name).strip()
    if not text:
        return default
    if not text.isdigit():
        raise InvalidMetadata(name, f"must be a whole number (0, 1, ...), got {text!r}")
    return int(text)


@contextmanager
def client_errors(label: str, system: str, errors: tuple[type[BaseException], ...]) -> Iterator[None]:
    """Turn a client library's `errors` into ComponentError naming the component and the broker."""
    try:
        yield
    except errors as exc:
        raise ComponentError(f"{label}: {system}: {exc!r}") from exc


class SeqClock:
    """Message sequence numbers unique across processes and increasing within one publisher.

    Nanoseconds since the epoch (forced to increase) with a random per-instance suffix, so two
    publishers never produce the same number and one publisher's messages sort in publish order.
    """

    SUFFIX_BITS = 16

    def __init__(self) -> None:
        self._suffix = int.from_bytes(os.urandom(2), "big")
        self._last = 0

    def next(self) -> int:
        self._last = max(self._last + 1, time.time_ns())
        return self._last << self.SUFFIX_BITS | self._suffix


class Wakeup:
    """Wakes every current waiter at once; later waiters get a fresh event (nothing to clear or miss)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    def notify_later(self, delay: float) -> None:
        asyncio.get_running_loop().call_later(max(delay, 0.0), self.notify)

    async def wait(self, timeout: float, *also: Awaitable[Any]) -> None:  # noqa: ASYNC109
        """Return after `timeout` seconds, on notify(), or when one of `also` finishes."""
        if timeout <= 0:
            return
        waiters = [asyncio.ensure_future(self._event.wait()), *(asyncio.ensure_future(a) for a in also)]
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)


@dataclass
class _Entry(Generic[H]):
    message: Message  # as last handed out (its attempts identify the current lease)
    handle: H
    due: float  # monotonic time when it may be handed out again
    leased: bool = field(default=True)


class Held(Generic[H]):
    """The deliveries one process holds unacknowledged, per consumer group."""

    def __init__(self, processing_timeout: float, wakeup: Wakeup) -> None:
        self.processing_timeout = processing_timeout
        self._wakeup = wakeup
        self._groups: dict[str, dict[tuple[str, int], _Entry[H]]] = {}
        self._foreign = itertools.count(-1, -1)  # seqs for messages without one of ours

    def foreign_seq(self) -> int:
        """A seq for a message some other client published (negative: never one of ours)."""
        return next(self._foreign)

    def lease(self, group: str, message: Message, handle: H) -> Message:
        """Hold a fresh delivery; it comes back by itself once the lease runs out."""
        entries = self._groups.setdefault(group, {})
        entries[(message.topic, message.seq)] = _Entry(message, handle, self._lease_end())
        return message

    def _lease_end(self) -> float:
        self._wakeup.notify_later(self.processing_timeout)
        return time.monotonic() + self.processing_timeout

    def due(self, group: str, limit: int) -> list[Message]:
        """Up to `limit` held messages whose lease ran out or whose retry fell due, leased again."""
        now, found = time.monotonic(), list[Message]()
        for entry in self._groups.get(group, {}).values():
            if len(found) >= limit:
                break
            if entry.due <= now:
                entry.message = replace(entry.message, attempts=entry.message.attempts + 1)
                entry.due, entry.leased = self._lease_end(), True
                found.append(entry.message)
        return sorted(found, key=lambda m: m.seq)

    def take(self, group: str, message: Message) -> H | None:
        """Forget a delivery being acknowledged; None when `message` no longer holds the lease."""
        entries = self._groups.get(group, {})
        entry = entries.get((message.topic, message.seq))
        if entry is None or entry.message.attempts != message.attempts:
            return None  # answered late: whoever holds it now settles it
        del entries[(message.topic, message.seq)]
        return entry.handle

    def release(self, group: str, message: Message, delay: float) -> bool:
        """Make a held message due again after `delay`, if `message` still holds its lease."""
        entry = self._groups.get(group, {}).get((message.topic, message.seq))
        if entry is None or entry.message.attempts != message.attempts or not entry.leased:
            return False
        entry.due, entry.leased = time.monotonic() + max(delay, 0.0), False
        self._wakeup.notify_later(delay)
        return True

    def drop_all(self) -> list[H]:
        """Forget everything (the connection is gone: the broker redelivers it all)."""
        handles = [entry.handle for entries in self._groups.values() for entry in entries.values()]
        self._groups.clear()
        return handles

    def forget_expired(self, group: str) -> None:
        """Drop leases that ran out, for brokers that redeliver those themselves (JetStream's ackWait)."""
        entries = self._groups.get(group, {})
        now = time.monotonic()
        for key in [key for key, entry in entries.items() if entry.leased and entry.due <= now]:
            del entries[key]
