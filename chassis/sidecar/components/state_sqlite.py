"""Dapr `state.sqlite`: ETags, first-write, TTL and transactions in a SQLite file shared by sidecars.

The table layout is Dapr's (`state/sqlite`), so a file can be inspected with the same queries.
Timestamps are UTC text written by SQLite's own clock ('YYYY-MM-DD HH:MM:SS.SSS'), so every process
sharing the file agrees on what has expired.
"""

from __future__ import annotations

import base64
import re
import sqlite3
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from chassis.sidecar._errors import ComponentError, EtagMismatch, InvalidMetadata
from chassis.sidecar._sqlite import DEFAULT_BUSY_TIMEOUT, SqliteWorker, resolve_database, write_transaction
from chassis.sidecar.components import BatchWriteStore, Driver, StateItem, TxOp, meta_get, parse_duration
from chassis.sidecar.components._common import check_key_prefix, key_prefix, prefixed

__all__ = ["DRIVER", "SqliteStateStore"]

_NOW = "strftime('%Y-%m-%d %H:%M:%f', 'now')"
_LIVE = f"(expiration_time IS NULL OR expiration_time > {_NOW})"
_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_metadata(metadata: Mapping[str, str]) -> None:
    """Validate the metadata values this driver reads (raises InvalidMetadata)."""
    if not meta_get(metadata, "connectionString"):
        raise InvalidMetadata("connectionString", "must not be empty")
    check_key_prefix(metadata)
    table = meta_get(metadata, "tableName", "state")
    if not _TABLE_NAME.fullmatch(table):
        raise InvalidMetadata("tableName", f"{table!r} is not a plain SQL identifier")
    _busy_timeout(metadata)


def _busy_timeout(metadata: Mapping[str, str]) -> float:
    text = meta_get(metadata, "busyTimeout")
    if not text:
        return DEFAULT_BUSY_TIMEOUT
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise InvalidMetadata("busyTimeout", str(exc)) from None
    if seconds < 0:
        raise InvalidMetadata("busyTimeout", f"must not be negative, got {text!r}")
    return seconds


def _encode(value: bytes) -> tuple[str, bool]:
    """Store text as text (readable with sqlite3) and anything else as base64, as Dapr does."""
    try:
        return value.decode("utf-8"), False
    except UnicodeDecodeError:
        return base64.b64encode(value).decode("ascii"), True


def _decode(stored: str | bytes, is_binary: int) -> bytes:
    raw = stored.encode("utf-8") if isinstance(stored, str) else bytes(stored)
    return base64.b64decode(raw) if is_binary else raw


def _parse_time(text: str | None) -> datetime | None:
    if text is None:
        return None
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def _ttl_modifier(ttl_seconds: int | None) -> str | None:
    """SQLite date modifier for a TTL; None when the value persists (None, 0 or -1, like Dapr)."""
    if ttl_seconds is None or ttl_seconds in (0, -1):
        return None
    if ttl_seconds < -1:
        raise ComponentError(f"incorrect value for metadata 'ttlInSeconds': {ttl_seconds}")
    return f"+{int(ttl_seconds)} seconds"


class SqliteStateStore(BatchWriteStore):
    """A state store in one SQLite table; all SQL runs on the store's worker thread."""

    def __init__(
        self, name: str, metadata: Mapping[str, str], *, app_id: str, base_dir: Path, namespace: str = ""
    ) -> None:
        check_metadata(metadata)
        self.name = name
        self._prefix = key_prefix(metadata, store_name=name, app_id=app_id, namespace=namespace)
        self._table = meta_get(metadata, "tableName", "state")
        database, uri = resolve_database(meta_get(metadata, "connectionString"), base_dir)
        self._worker = SqliteWorker(database, uri=uri, busy_timeout=_busy_timeout(metadata), label=name)

    @classmethod
    async def open(
        cls, name: str, metadata: Mapping[str, str], *, app_id: str, base_dir: Path, namespace: str = ""
    ) -> SqliteStateStore:
        """Create the store and its table; raise ComponentError if the database cannot be used."""
        store = cls(name, metadata, app_id=app_id, base_dir=base_dir, namespace=namespace)
        await store._worker.started()
        try:
            await store._worker.run(store._create_table)
        except BaseException:
            await store.close()
            raise
        return store

    def _create_table(self, conn: sqlite3.Connection) -> None:
        with write_transaction(conn):
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {self._table} (key TEXT NOT NULL PRIMARY KEY,"
                " value TEXT NOT NULL, is_binary BOOLEAN NOT NULL, etag TEXT NOT NULL,"
                " expiration_time TIMESTAMP DEFAULT NULL, update_time TIMESTAMP DEFAULT NULL)"
            )
            conn.execute(
                f"CREATE INDEX IF NOT EXISTS {self._table}_expiration_time ON {self._table} (expiration_time)"
            )

    def _full_key(self, key: str) -> str:
        return prefixed(self._prefix, key)

    async def get(self, key: str) -> StateItem | None:
        """The live value of `key`, or None when missing or expired."""
        full_key = self._full_key(key)
        row = await self._worker.run(self._select, full_key)
        if row is None:
            return None
        value, is_binary, etag, expiration = row
        return StateItem(
            key=key, value=_decode(value, is_binary), etag=etag, expire_time=_parse_time(expiration)
        )

    def _select(self, conn: sqlite3.Connection, full_key: str) -> tuple[str, int, str, str | None] | None:
        cursor = conn.execute(
            f"SELECT value, is_binary, etag, expiration_time FROM {self._table} WHERE key = ? AND {_LIVE}",
            (full_key,),
        )
        row: tuple[str, int, str, str | None] | None = cursor.fetchone()
        return row

    async def write(self, ops: Sequence[TxOp]) -> list[str]:
        """All operations in one SQLite transaction on the worker thread."""
        prepared = [self._prepared(op) for op in ops]
        return await self._worker.run(self._apply, prepared)

    def _prepared(self, op: TxOp) -> TxOp:
        """Validate on the event loop (cheap) and swap in the prefixed key."""
        _ttl_modifier(op.ttl_seconds)
        return TxOp(
            op.kind, self._full_key(op.key), op.value, op.etag or None, op.first_write, op.ttl_seconds
        )

    def _apply(self, conn: sqlite3.Connection, ops: Sequence[TxOp]) -> list[str]:
        etags: list[str] = []
        with write_transaction(conn):
            for op in ops:
                self._check_etag(conn, op)
                if op.kind == "delete":
                    conn.execute(f"DELETE FROM {self._table} WHERE key = ?", (op.key,))
                else:
                    etags.append(self._upsert(conn, op))
        return etags

    def _check_etag(self, conn: sqlite3.Connection, op: TxOp) -> None:
        """components-contrib's doValidateEtag: an expired row counts as missing."""
        row = conn.execute(f"SELECT etag FROM {self._table} WHERE key = ? AND {_LIVE}", (op.key,)).fetchone()
        if op.etag is None:
            if op.first_write and row is not None:
                raise EtagMismatch(f"possible etag mismatch: key {op.key!r} already exists (first-write)")
            return
        if row is None:
            raise EtagMismatch(f"possible etag mismatch: key {op.key!r} does not exist")
        if row[0] != op.etag:
            raise EtagMismatch(f"possible etag mismatch: key {op.key!r} has a different etag")

    def _upsert(self, conn: sqlite3.Connection, op: TxOp) -> str:
        text, is_binary = _encode(op.value)
        etag = uuid.uuid4().hex
        modifier = _ttl_modifier(op.ttl_seconds)
        conn.execute(
            f"INSERT INTO {self._table} (key, value, is_binary, etag, expiration_time, update_time)"
            f" VALUES (?, ?, ?, ?, strftime('%Y-%m-%d %H:%M:%f', 'now', ?), {_NOW})"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value, is_binary = excluded.is_binary,"
            " etag = excluded.etag, expiration_time = excluded.expiration_time,"
            " update_time = excluded.update_time",
            (op.key, text, is_binary, etag, modifier),
        )
        return etag

    async def close(self) -> None:
        """Close the connection and stop the worker thread."""
        await self._worker.close()


DRIVER = Driver(
    kind="state",
    versions=("v1",),
    required=("connectionString",),
    check=check_metadata,
    open=SqliteStateStore.open,
    capabilities=("ETAG", "TRANSACTIONAL", "TTL"),
)
