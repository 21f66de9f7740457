"""Dapr `pubsub.redis` on Redis Streams: a stream per topic, a consumer group per subscribing app.

`publish` is XADD (committed once it returns). A group reads new entries with XREADGROUP; an entry
left pending (handler hung, sidecar killed) is re-claimed with XAUTOCLAIM once idle for longer than
`processingTimeout`, and `retry` makes an entry due early by setting its idle time (XCLAIM IDLE), so
redelivery keeps no state outside Redis and survives any process. `claim` reads the topics this
instance subscribed the group to: the groups persist in Redis, the topic list is per process (the
delivery loop subscribes on every start). Acks made in the same event-loop turn (a settled bulk
delivery) go to Redis as one XACK.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from redis.exceptions import RedisError, ResponseError
from redis.typing import EncodableT

from chassis.sidecar._errors import ComponentError, InvalidMetadata
from chassis.sidecar.components import Driver, Message, meta_get
from chassis.sidecar.components._common import message_metadata, positive_duration, positive_int
from chassis.sidecar.components._redis import check_connection, connect, ping, redis_errors

__all__ = ["DRIVER", "RedisPubSub"]

DEFAULT_PROCESSING_TIMEOUT = 15.0
DEFAULT_REDELIVER_INTERVAL = 60.0
# Redis counts idle time in whole milliseconds: wake a little after a retry falls due, not before.
RETRY_SLACK = 0.01
# A blocking XREAD in `wait` returns this long before the wait's own timeout (see _next_entry).
XREAD_MARGIN = 0.05
_StreamsReply = list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]] | None
_SEQ_BITS = 64  # Message.seq = milliseconds << 64 | sequence: lossless and ordered like the entry id

# Claim idle entries and report each one's delivery count (XAUTOCLAIM just incremented it).
# KEYS[1] stream; ARGV: group, consumer, min idle ms, how many.
_RECLAIM = """
local claimed, cursor, wanted = {}, '0-0', tonumber(ARGV[4])
repeat
  local reply = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], cursor,
                           'COUNT', wanted - #claimed)
  cursor = reply[1]
  for _, entry in ipairs(reply[2]) do
    if entry[2] then
      local pending = redis.call('XPENDING', KEYS[1], ARGV[1], entry[1], entry[1], 1)
      claimed[#claimed + 1] = {entry[1], entry[2], pending[1][4]}
    end
  end
until cursor == '0-0' or #claimed >= wanted
return claimed
"""
# Make a pending entry due after a delay by setting its idle time, but only while the delivery count
# is still ours: a late answer must not shorten the lease of whoever re-claimed it since.
# KEYS[1] stream; ARGV: group, entry id, delivery count, consumer, idle ms.
_RELEASE = """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if pending[1] and pending[1][4] == tonumber(ARGV[3]) then
  redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[4], 0, ARGV[2], 'IDLE', ARGV[5], 'JUSTID')
  return 1
end
return 0
"""


def check_metadata(metadata: Mapping[str, str]) -> None:
    """Validate the metadata values this driver reads (raises InvalidMetadata)."""
    if not meta_get(metadata, "redisHost"):
        raise InvalidMetadata("redisHost", "must not be empty")
    check_connection(metadata)
    positive_duration(metadata, "processingTimeout", DEFAULT_PROCESSING_TIMEOUT)
    positive_duration(metadata, "redeliverInterval", DEFAULT_REDELIVER_INTERVAL)
    positive_int(metadata, "maxLenApprox")


def _seq(entry_id: bytes | str) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    millis, _, sequence = text.partition("-")
    return int(millis) << _SEQ_BITS | int(sequence or 0)


def _entry_id(seq: int) -> str:
    return f"{seq >> _SEQ_BITS}-{seq & ((1 << _SEQ_BITS) - 1)}"


def _message(topic: str, entry_id: bytes, fields: Mapping[bytes, bytes], attempts: int) -> Message:
    return Message(_seq(entry_id), topic, fields.get(b"data", b""), _metadata(fields), attempts)


def _metadata(fields: Mapping[bytes, bytes]) -> dict[str, str]:
    """The `metadata` field; entries written by other clients may lack it or hold something else."""
    return message_metadata(fields.get(b"metadata")) or {}


def _pairs(flat: Sequence[bytes]) -> dict[bytes, bytes]:
    """A Lua reply's flat [field, value, ...] list as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


class RedisPubSub:
    """A broker on one Redis database; the topics of each group are remembered per instance."""

    def __init__(self, name: str, metadata: Mapping[str, str], *, app_id: str, base_dir: Path) -> None:
        check_metadata(metadata)
        self.name = name
        self.app_id = app_id
        self.processing_timeout = positive_duration(metadata, "processingTimeout", DEFAULT_PROCESSING_TIMEOUT)
        # Not used here: the delivery loop reads it as the cap of its retry back-off.
        self.redeliver_interval = positive_duration(metadata, "redeliverInterval", DEFAULT_REDELIVER_INTERVAL)
        self.consumer = meta_get(metadata, "consumerID") or app_id
        self._metadata = dict(metadata)
        self._max_len = positive_int(metadata, "maxLenApprox")
        self._client = connect(metadata)
        self._reclaim = self._client.register_script(_RECLAIM)
        self._release = self._client.register_script(_RELEASE)
        self._topics: dict[str, dict[str, None]] = {}  # group -> its topics (an ordered set)
        self._turn = 0
        self._wakeup = asyncio.Event()
        self._closed = False
        # (topic, group) -> entry ids waiting for the next XACK, with their callers' futures
        self._acks: dict[tuple[str, str], list[tuple[str, asyncio.Future[None]]]] = {}
        self._sending: set[asyncio.Task[None]] = set()

    @classmethod
    async def open(
        cls, name: str, metadata: Mapping[str, str], *, app_id: str, base_dir: Path
    ) -> RedisPubSub:
        """Connect and check the server answers; raise ComponentError if it does not."""
        broker = cls(name, metadata, app_id=app_id, base_dir=base_dir)
        try:
            await ping(broker._client, name, broker._metadata)
        except BaseException:
            await broker.close()
            raise
        return broker

    def _check_open(self) -> None:
        if self._closed:
            # redis-py would silently reconnect; a closed broker must fail like the SQLite one.
            raise ComponentError(f"{self.name}: broker is closed")

    async def publish(self, topic: str, data: bytes, metadata: Mapping[str, str]) -> None:
        """XADD the message to the topic's stream; returns once Redis has it."""
        self._check_open()
        fields: dict[EncodableT, EncodableT] = {"data": data, "metadata": json.dumps(dict(metadata))}
        with redis_errors(self.name):
            await self._client.xadd(topic, fields, maxlen=self._max_len, approximate=True)
        self._notify()

    async def subscribe(self, group: str, topic: str) -> None:
        """Create the consumer group from the start of the stream, as Dapr's component does (idempotent)."""
        self._check_open()
        with redis_errors(self.name):
            try:
                await self._client.xgroup_create(topic, group, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        self._topics.setdefault(group, {})[topic] = None

    async def claim(self, group: str, limit: int) -> list[Message]:
        """Up to `limit` messages of `group`: idle pending entries first, then new ones."""
        self._check_open()
        topics = self._rotated(list(self._topics.get(group, ())))
        if limit <= 0 or not topics:
            return []
        messages: list[Message] = []
        with redis_errors(self.name):
            for topic in topics:
                messages += await self._claim_idle(group, topic, limit - len(messages))
            for topic in topics:
                messages += await self._read_new(group, topic, limit - len(messages))
        return messages

    def _rotated(self, topics: list[str]) -> list[str]:
        """Start each claim at the next topic, so one busy topic cannot starve the others."""
        if not topics:
            return topics
        self._turn = (self._turn + 1) % len(topics)
        return topics[self._turn :] + topics[: self._turn]

    async def _claim_idle(self, group: str, topic: str, count: int) -> list[Message]:
        if count <= 0:
            return []
        min_idle = int(self.processing_timeout * 1000)
        args: list[EncodableT] = [group, self.consumer, min_idle, count]
        claimed: list[tuple[bytes, list[bytes], int]] = await self._reclaim(keys=[topic], args=args)
        return [_message(topic, entry, _pairs(fields), int(times)) for entry, fields, times in claimed]

    async def _read_new(self, group: str, topic: str, count: int) -> list[Message]:
        if count <= 0:
            return []
        # redis-py types every RESP version's shape; the client speaks RESP2.
        reply = cast(
            "_StreamsReply", await self._client.xreadgroup(group, self.consumer, {topic: ">"}, count=count)
        )
        return [_message(topic, entry, fields, 1) for _, entries in reply or [] for entry, fields in entries]

    async def ack(self, group: str, message: Message) -> None:
        """XACK: the entry leaves the group's pending list (the stream keeps it, as in Dapr)."""
        self._check_open()
        key, done = (message.topic, group), asyncio.get_running_loop().create_future()
        waiting = self._acks.setdefault(key, [])
        waiting.append((_entry_id(message.seq), done))
        if len(waiting) == 1:  # the first of this turn: send them all once the turn's others are in
            asyncio.get_running_loop().call_soon(self._start_sending, key)
        await done

    def _start_sending(self, key: tuple[str, str]) -> None:
        task = asyncio.ensure_future(self._send_acks(key))
        self._sending.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._sending.discard)

    async def _send_acks(self, key: tuple[str, str]) -> None:
        waiting = self._acks.pop(key, [])
        try:
            with redis_errors(self.name):
                await self._client.xack(*key, *(entry for entry, _ in waiting))
        except ComponentError as err:
            for _, done in waiting:
                if not done.done():  # its caller may have been cancelled meanwhile
                    done.set_exception(err)
        else:
            for _, done in waiting:
                if not done.done():
                    done.set_result(None)

    async def retry(self, group: str, message: Message, delay: float) -> None:
        """Keep the entry pending and make it re-claimable after `delay` (at most processingTimeout)."""
        self._check_open()
        delay = min(max(delay, 0.0), self.processing_timeout)
        idle_ms = int((self.processing_timeout - delay) * 1000)
        args: list[EncodableT] = [group, _entry_id(message.seq), message.attempts, self.consumer, idle_ms]
        with redis_errors(self.name):
            await self._release(keys=[message.topic], args=args)
        asyncio.get_running_loop().call_later(delay + RETRY_SLACK, self._notify)

    async def wait(self, timeout: float) -> None:  # noqa: ASYNC109 (the PubSub interface)
        """Sleep up to `timeout` seconds, returning early when something may have become due.

        A new entry on any subscribed stream (from any process) ends the wait through a blocking
        XREAD; local publishes and retries falling due wake waiters directly. Entries whose lease
        runs out in another process are only noticed at `timeout`.
        """
        if timeout <= 0:
            return
        waiters: list[asyncio.Future[Any]] = [asyncio.ensure_future(self._wakeup.wait())]
        if not self._closed and (streams := self._streams()):
            waiters.append(asyncio.ensure_future(self._next_entry(streams, timeout)))
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)

    def _streams(self) -> dict[str, set[str]]:
        """Every subscribed stream with the groups of this instance that read it."""
        streams: dict[str, set[str]] = {}
        for group, topics in self._topics.items():
            for topic in topics:
                streams.setdefault(topic, set()).add(group)
        return streams

    async def _next_entry(self, streams: dict[str, set[str]], timeout: float) -> None:  # noqa: ASYNC109
        """Return when a stream has an entry after what its groups have read; else sleep `timeout`.

        The blocking XREAD ends a little before `timeout` on its own: cancelling a command in
        flight makes redis-py drop the connection, which an idle loop would do every second.
        """
        deadline = asyncio.get_running_loop().time() + timeout
        try:
            positions = await self._read_positions(streams)
            block_ms = int((deadline - asyncio.get_running_loop().time() - XREAD_MARGIN) * 1000)
            if block_ms > 0 and await self._client.xread(positions, count=1, block=block_ms):
                return
        except RedisError:
            pass  # `claim` reports the failure; waiting must not spin
        await asyncio.sleep(max(deadline - asyncio.get_running_loop().time(), 0.0))

    async def _read_positions(self, streams: dict[str, set[str]]) -> dict[Any, Any]:
        """Per stream, the oldest last-delivered id of our groups ('0-0' if unknown)."""
        async with self._client.pipeline(transaction=False) as pipe:
            for stream in streams:
                pipe.xinfo_groups(stream)
            replies = await pipe.execute(raise_on_error=False)
        positions: dict[Any, Any] = {}
        for (stream, groups), reply in zip(streams.items(), replies, strict=True):
            # A missing stream (an exception here) has nothing to read yet: wait for its first entry.
            infos = [] if isinstance(reply, Exception) else reply
            read = [info["last-delivered-id"] for info in infos if info["name"].decode() in groups]
            positions[stream] = min(read, key=_seq) if read else "0-0"
        return positions

    def _notify(self) -> None:
        """Wake every current waiter; later waiters get a fresh event (nothing to clear or miss)."""
        self._wakeup.set()
        self._wakeup = asyncio.Event()

    async def close(self) -> None:
        """Send the acks already made, then close the connection pool (idempotent)."""
        self._closed = True
        for key in list(self._acks):
            await self._send_acks(key)
        await asyncio.gather(*self._sending, return_exceptions=True)
        await self._client.aclose()


DRIVER = Driver(
    kind="pubsub",
    versions=("v1",),
    required=("redisHost",),
    check=check_metadata,
    open=RedisPubSub.open,
)
