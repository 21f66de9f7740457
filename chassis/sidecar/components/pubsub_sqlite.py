"""`pubsub.sqlite`: our durable embedded broker (Dapr has no such type) in a SQLite file.

Every sidecar on the machine that points at the same file shares one broker. A consumer group
(= subscribing app id) gets one `deliveries` row per message; `claim` leases rows atomically inside a
BEGIN IMMEDIATE transaction, so competing consumers of a group never hold the same message at once,
and a lease that runs out (consumer killed, handler hung) makes the message claimable again.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path

from chassis.sidecar._errors import InvalidMetadata
from chassis.sidecar._sqlite import DEFAULT_BUSY_TIMEOUT, SqliteWorker, resolve_database, write_transaction
from chassis.sidecar.components import Driver, Message, meta_get
from chassis.sidecar.components._common import positive_duration, positive_int

__all__ = ["DRIVER", "SqlitePubSub"]

DEFAULT_PROCESSING_TIMEOUT = 15.0
DEFAULT_REDELIVER_INTERVAL = 60.0
# How often `wait` looks for commits made by other processes; cheap (PRAGMA data_version).
POLL_INTERVAL = 0.01
# With maxLenApprox, trim the backlog once every this many publishes (approximate, like Redis).
TRIM_EVERY = 64

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS messages (seq INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL,"
    " data BLOB NOT NULL, metadata TEXT NOT NULL, published REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS subscriptions (grp TEXT NOT NULL, topic TEXT NOT NULL,"
    " PRIMARY KEY (grp, topic))",
    "CREATE TABLE IF NOT EXISTS deliveries (grp TEXT NOT NULL, seq INTEGER NOT NULL,"
    " attempts INTEGER NOT NULL, due REAL NOT NULL, lease_until REAL NOT NULL, PRIMARY KEY (grp, seq))",
    "CREATE INDEX IF NOT EXISTS deliveries_seq ON deliveries (seq)",
)


def check_metadata(metadata: Mapping[str, str]) -> None:
    """Validate the metadata values this driver reads (raises InvalidMetadata)."""
    if not meta_get(metadata, "connectionString"):
        raise InvalidMetadata("connectionString", "must not be empty")
    positive_duration(metadata, "processingTimeout", DEFAULT_PROCESSING_TIMEOUT)
    positive_duration(metadata, "redeliverInterval", DEFAULT_REDELIVER_INTERVAL)
    positive_duration(metadata, "busyTimeout", DEFAULT_BUSY_TIMEOUT)
    positive_int(metadata, "maxLenApprox")


class SqlitePubSub:
    """A broker in one SQLite file; all SQL runs on the broker's worker thread."""

    def __init__(self, name: str, metadata: Mapping[str, str], *, app_id: str, base_dir: Path) -> None:
        check_metadata(metadata)
        self.name = name
        self.app_id = app_id
        self.processing_timeout = positive_duration(metadata, "processingTimeout", DEFAULT_PROCESSING_TIMEOUT)
        # Not used here: the delivery loop reads it as the cap of its retry back-off.
        self.redeliver_interval = positive_duration(metadata, "redeliverInterval", DEFAULT_REDELIVER_INTERVAL)
        self._max_len = positive_int(metadata, "maxLenApprox")
        database, uri = resolve_database(meta_get(metadata, "connectionString"), base_dir)
        busy = positive_duration(metadata, "busyTimeout", DEFAULT_BUSY_TIMEOUT)
        self._worker = SqliteWorker(database, uri=uri, busy_timeout=busy, label=name)
        self._wakeup = asyncio.Event()
        self._data_version = 0

    @classmethod
    async def open(
        cls, name: str, metadata: Mapping[str, str], *, app_id: str, base_dir: Path
    ) -> SqlitePubSub:
        """Create the broker and its tables; raise ComponentError if the database cannot be used."""
        broker = cls(name, metadata, app_id=app_id, base_dir=base_dir)
        await broker._worker.started()
        try:
            await broker._worker.run(_create_schema)
            broker._data_version = await broker._worker.run(_data_version)
        except BaseException:
            await broker.close()
            raise
        return broker

    async def publish(self, topic: str, data: bytes, metadata: Mapping[str, str]) -> None:
        """Store the message for every group subscribed to `topic`; returns once committed."""
        await self._worker.run(self._insert, topic, data, json.dumps(dict(metadata)))
        self._notify()

    def _insert(self, conn: sqlite3.Connection, topic: str, data: bytes, metadata: str) -> None:
        now = time.time()
        with write_transaction(conn):
            groups = conn.execute("SELECT grp FROM subscriptions WHERE topic = ?", (topic,)).fetchall()
            if not groups:
                return  # nobody will ever need it: a new group starts from its subscription
            cursor = conn.execute(
                "INSERT INTO messages (topic, data, metadata, published) VALUES (?, ?, ?, ?)",
                (topic, data, metadata, now),
            )
            seq = cursor.lastrowid
            conn.executemany(
                "INSERT INTO deliveries (grp, seq, attempts, due, lease_until) VALUES (?, ?, 0, ?, 0)",
                [(grp, seq, now) for (grp,) in groups],
            )
            if self._max_len is not None and seq is not None and seq % TRIM_EVERY == 0:
                _trim(conn, seq - self._max_len)

    async def subscribe(self, group: str, topic: str) -> None:
        """Persist that `group` consumes `topic` (idempotent)."""
        await self._worker.run(_subscribe, group, topic)

    async def claim(self, group: str, limit: int) -> list[Message]:
        """Lease up to `limit` due messages of `group`, oldest first."""
        if limit <= 0:
            return []
        return await self._worker.run(self._claim, group, limit)

    def _claim(self, conn: sqlite3.Connection, group: str, limit: int) -> list[Message]:
        now = time.time()
        with write_transaction(conn):
            leased = conn.execute(
                "UPDATE deliveries SET attempts = attempts + 1, lease_until = ?"
                " WHERE grp = ? AND seq IN (SELECT seq FROM deliveries"
                "   WHERE grp = ? AND due <= ? AND lease_until <= ? ORDER BY seq LIMIT ?)"
                " RETURNING seq, attempts",
                (now + self.processing_timeout, group, group, now, now, limit),
            ).fetchall()
            attempts = dict(leased)
            if not attempts:
                return []
            marks = ",".join("?" * len(attempts))
            rows = conn.execute(
                f"SELECT seq, topic, data, metadata FROM messages WHERE seq IN ({marks}) ORDER BY seq",
                list(attempts),
            ).fetchall()
        return [
            Message(seq=seq, topic=topic, data=bytes(data), metadata=json.loads(meta), attempts=attempts[seq])
            for seq, topic, data, meta in rows
        ]

    async def ack(self, group: str, message: Message) -> None:
        """Mark the message done for `group`; the message row goes when no group needs it."""
        await self._worker.run(_ack, group, message.seq)

    async def retry(self, group: str, message: Message, delay: float) -> None:
        """Release the lease; the message is due again after `delay` seconds."""
        delay = max(delay, 0.0)
        await self._worker.run(_retry, group, message, delay)
        asyncio.get_running_loop().call_later(delay, self._notify)

    async def wait(self, timeout: float) -> None:  # noqa: ASYNC109 (the PubSub interface)
        """Sleep up to `timeout` seconds, returning early when something may have become due.

        Local publishes/retries wake waiters directly; commits by other processes show up as a
        change of PRAGMA data_version. Leases that expire in another process are only noticed at
        `timeout`, so delivery loops should pass a timeout of about a second.
        """
        event = self._wakeup
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                await asyncio.wait_for(event.wait(), min(POLL_INTERVAL, remaining))
                return
            except TimeoutError:
                if await self._changed_elsewhere():
                    return

    def _notify(self) -> None:
        """Wake every current waiter; later waiters get a fresh event (nothing to clear or miss)."""
        self._wakeup.set()
        self._wakeup = asyncio.Event()

    async def _changed_elsewhere(self) -> bool:
        version = await self._worker.run(_data_version)
        if version == self._data_version:
            return False
        self._data_version = version
        self._notify()  # other waiters share the version we just consumed
        return True

    async def close(self) -> None:
        """Close the connection and stop the worker thread."""
        await self._worker.close()


def _create_schema(conn: sqlite3.Connection) -> None:
    with write_transaction(conn):
        for statement in _SCHEMA:
            conn.execute(statement)


def _data_version(conn: sqlite3.Connection) -> int:
    version: int = conn.execute("PRAGMA data_version").fetchone()[0]
    return version


def _subscribe(conn: sqlite3.Connection, group: str, topic: str) -> None:
    with write_transaction(conn):
        conn.execute("INSERT OR IGNORE INTO subscriptions (grp, topic) VALUES (?, ?)", (group, topic))


def _ack(conn: sqlite3.Connection, group: str, seq: int) -> None:
    with write_transaction(conn):
        conn.execute("DELETE FROM deliveries WHERE grp = ? AND seq = ?", (group, seq))
        conn.execute(
            "DELETE FROM messages WHERE seq = ? AND NOT EXISTS (SELECT 1 FROM deliveries WHERE seq = ?)",
            (seq, seq),
        )


def _retry(conn: sqlite3.Connection, group: str, message: Message, delay: float) -> None:
    # Matching `attempts` means we still hold this lease: a consumer whose lease already expired
    # and was re-claimed elsewhere must not reset the new holder's lease.
    with write_transaction(conn):
        conn.execute(
            "UPDATE deliveries SET due = ?, lease_until = 0 WHERE grp = ? AND seq = ? AND attempts = ?",
            (time.time() + delay, group, message.seq, message.attempts),
        )


def _trim(conn: sqlite3.Connection, last_dropped: int) -> None:
    """maxLenApprox: forget the oldest messages, delivered or not (as Redis' MAXLEN ~ does)."""
    if last_dropped <= 0:
        return
    conn.execute("DELETE FROM deliveries WHERE seq <= ?", (last_dropped,))
    conn.execute("DELETE FROM messages WHERE seq <= ?", (last_dropped,))


DRIVER = Driver(
    kind="pubsub",
    versions=("v1",),
    required=("connectionString",),
    check=check_metadata,
    open=SqlitePubSub.open,
)
