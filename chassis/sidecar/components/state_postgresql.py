"""Dapr `state.postgresql` v2: ETags, first-write, TTL and atomic transactions on a real PostgreSQL.

The table layout is Dapr's v2 (`state/postgresql/v2`): `key text, value bytea, etag uuid, created_at,
updated_at, expires_at`, so daprd and this sidecar can share a database. Every write of a
transaction runs in one database transaction; the ETag checks are part of the writes themselves
(`UPDATE ... WHERE etag = ...`), so concurrent writers cannot slip between a check and a write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg_pool import AsyncConnectionPool

from chassis.sidecar._errors import ComponentError, EtagMismatch, InvalidMetadata
from chassis.sidecar.components import BatchWriteStore, Driver, StateItem, TxOp, meta_get, parse_duration
from chassis.sidecar.components._common import check_key_prefix, key_prefix, prefixed

__all__ = ["DRIVER", "PostgresStateStore", "connection_info"]

log = logging.getLogger("chassis.sidecar.state.postgresql")

DEFAULT_TIMEOUT = 20.0  # Dapr's default for every database operation
DEFAULT_CLEANUP = 3600.0  # Dapr's default cleanupInterval (1h)
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?")
# libpq keyword/value pairs; values may be single-quoted with backslash escapes.
_KEYWORD = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*('(?:[^'\\]|\\.)*'|\S*)")
# pgx (daprd's driver) accepts these spellings; libpq does not.
_PGX_ALIASES = {"database": "dbname"}
_LIVE = sql.SQL("(expires_at IS NULL OR expires_at >= now())")


def connection_info(text: str) -> str:
    """A libpq conninfo for psycopg from a Dapr connection string (URL or pgx keyword form)."""
    if "://" in text:
        return text
    params: dict[str, Any] = {}
    pos = 0
    for match in _KEYWORD.finditer(text):
        if text[pos : match.start()].strip():
            break
        key, value = match.group(1), match.group(2)
        if value.startswith("'"):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        params[_PGX_ALIASES.get(key, key)] = value
        pos = match.end()
    if text[pos:].strip():
        raise ValueError(f"cannot parse the connection string near {text[pos:].strip()[:20]!r}")
    return make_conninfo("", **params)


def _seconds(metadata: Mapping[str, str], field: str, default: float) -> float:
    """A Go duration or a bare number of seconds (Dapr's `timeout`, `cleanupInterval`)."""
    text = meta_get(metadata, field)
    if not text:
        return default
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise InvalidMetadata(field, str(exc)) from None


def _table(metadata: Mapping[str, str]) -> str:
    """Dapr v2 names the table `<tablePrefix>state`; `tableName` (v1's field) names it outright."""
    table = meta_get(metadata, "tableName") or meta_get(metadata, "tablePrefix") + "state"
    if not _IDENTIFIER.fullmatch(table):
        raise InvalidMetadata("tableName", f"{table!r} is not a plain SQL name (table or schema.table)")
    return table


def _metadata_table(metadata: Mapping[str, str]) -> str:
    table = meta_get(metadata, "metadataTableName", "dapr_metadata")
    if not _IDENTIFIER.fullmatch(table):
        raise InvalidMetadata("metadataTableName", f"{table!r} is not a plain SQL name")
    return table


def _max_conns(metadata: Mapping[str, str]) -> int:
    """Dapr: 0 or less means max(4, CPUs)."""
    text = meta_get(metadata, "maxConns", "0")
    try:
        value = int(text)
    except ValueError:
        raise InvalidMetadata("maxConns", f"must be an integer, got {text!r}") from None
    return value if value > 0 else max(4, os.cpu_count() or 1)


def check_metadata(metadata: Mapping[str, str]) -> None:
    """Validate the metadata values this driver reads (raises InvalidMetadata)."""
    text = meta_get(metadata, "connectionString")
    if not text:
        raise InvalidMetadata("connectionString", "must not be empty")
    try:
        connection_info(text)
    except (ValueError, psycopg.ProgrammingError) as exc:
        raise InvalidMetadata("connectionString", str(exc)) from None
    check_key_prefix(metadata)
    _table(metadata)
    _metadata_table(metadata)
    _max_conns(metadata)
    if _seconds(metadata, "timeout", DEFAULT_TIMEOUT) < 1:
        raise InvalidMetadata("timeout", "invalid value: must be at least 1s")
    _seconds(metadata, "cleanupInterval", DEFAULT_CLEANUP)


def _name(dotted: str) -> sql.Composable:
    return sql.Identifier(*dotted.split("."))


def _ttl(op: TxOp) -> int | None:
    """Seconds until expiry, None to persist (no TTL, 0 and -1 all persist, as in Dapr)."""
    ttl = op.ttl_seconds
    if ttl is not None and ttl < -1:
        raise ComponentError(f"incorrect value for metadata 'ttlInSeconds': {ttl}")
    return ttl if ttl is not None and ttl > 0 else None


def _etag_uuid(etag: str) -> uuid.UUID | None:
    """Stored ETags are UUIDs; any other text can never match, so it counts as a mismatch."""
    try:
        return uuid.UUID(etag)
    except ValueError:
        return None


class PostgresStateStore(BatchWriteStore):
    """A state store in one PostgreSQL table, reached through a small connection pool."""

    def __init__(
        self, name: str, metadata: Mapping[str, str], *, app_id: str, base_dir: Path, namespace: str = ""
    ) -> None:
        check_metadata(metadata)
        self.name = name
        self._prefix = key_prefix(metadata, store_name=name, app_id=app_id, namespace=namespace)
        self._table_name = _table(metadata)
        self._table = _name(self._table_name)
        self._meta_table_name = _metadata_table(metadata)
        self._timeout = _seconds(metadata, "timeout", DEFAULT_TIMEOUT)
        self._cleanup = _seconds(metadata, "cleanupInterval", DEFAULT_CLEANUP)
        self._pool = AsyncConnectionPool(
            connection_info(meta_get(metadata, "connectionString")),
            min_size=1,
            max_size=_max_conns(metadata),
            open=False,
            timeout=self._timeout,
            kwargs={"autocommit": True},
            name=f"state-{name}",
        )
        self._closed = False
        self._gc: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls, name: str, metadata: Mapping[str, str], *, app_id: str, base_dir: Path, namespace: str = ""
    ) -> PostgresStateStore:
        """Connect, create the tables (Dapr's v2 migration) and start the expired-row cleanup."""
        store = cls(name, metadata, app_id=app_id, base_dir=base_dir, namespace=namespace)
        try:
            await store._pool.open(wait=True, timeout=store._timeout)
            await store._migrate()
        except BaseException as exc:
            await store.close()
            if isinstance(exc, psycopg.Error):
                raise ComponentError(f"{name}: cannot use the database: {exc}") from None
            raise
        if store._cleanup > 0:
            store._gc = asyncio.create_task(store._collect_garbage(), name=f"{name}-cleanup")
        return store

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection, with driver errors and timeouts turned into ComponentError."""
        if self._closed:
            raise ComponentError(f"{self.name}: store is closed")
        try:
            async with asyncio.timeout(self._timeout), self._pool.connection() as conn:
                yield conn
        except psycopg.Error as exc:
            raise ComponentError(f"{self.name}: {exc}") from None
        except TimeoutError:
            raise ComponentError(f"{self.name}: no answer from the database in {self._timeout:g}s") from None

    async def _migrate(self) -> None:
        """Dapr's migration 1 for v2, serialised by an advisory lock so sidecars starting together agree."""
        meta = _name(self._meta_table_name)
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('dapr-state-postgresql-migrations'))")
            await conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} (key text NOT NULL PRIMARY KEY, value text NOT NULL)"
                ).format(meta)
            )
            await conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} (key text NOT NULL PRIMARY KEY, value bytea NOT NULL,"
                    " etag uuid NOT NULL DEFAULT gen_random_uuid(),"
                    " created_at timestamp with time zone NOT NULL DEFAULT now(),"
                    " updated_at timestamp with time zone, expires_at timestamp with time zone)"
                ).format(self._table)
            )
            index = sql.Identifier(self._table_name.rsplit(".", 1)[-1] + "_expires_at_idx")
            await conn.execute(
                sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (expires_at)").format(index, self._table)
            )
            # The key daprd's migrator reads, so a daprd on the same database skips its own migration.
            await conn.execute(
                sql.SQL("INSERT INTO {} (key, value) VALUES (%s, '1') ON CONFLICT (key) DO NOTHING").format(
                    meta
                ),
                (f"migrations-state-v2-{self._table_name.removesuffix('state')}",),
            )

    async def _collect_garbage(self) -> None:
        """Delete expired rows every cleanupInterval; the metadata row stops sidecars doing it twice."""
        meta = _name(self._meta_table_name)
        claim = sql.SQL(
            "INSERT INTO {meta} (key, value) VALUES (%(key)s, now()::text) ON CONFLICT (key)"
            " DO UPDATE SET value = now()::text"
            " WHERE (EXTRACT('epoch' FROM now() - {meta}.value::timestamp with time zone) * 1000)::bigint"
            " > %(ms)s"
        ).format(meta=meta)
        delete = sql.SQL("DELETE FROM {} WHERE expires_at IS NOT NULL AND expires_at < now()").format(
            self._table
        )
        params = {"key": f"last-cleanup-state-v2-{self._table_name}", "ms": int(self._cleanup * 1000) - 100}
        while True:
            await asyncio.sleep(self._cleanup)
            try:
                async with self._connection() as conn, conn.transaction():
                    if (await conn.execute(claim, params)).rowcount:
                        deleted = (await conn.execute(delete)).rowcount
                        log.debug("%s: removed %d expired rows", self.name, deleted)
            except ComponentError as exc:
                log.warning("%s: expired-row cleanup failed: %s", self.name, exc)

    async def get(self, key: str) -> StateItem | None:
        """The live value of `key`, or None when missing or expired."""
        query = sql.SQL("SELECT value, etag, expires_at FROM {} WHERE key = %s AND {}").format(
            self._table, _LIVE
        )
        full_key = prefixed(self._prefix, key)
        async with self._connection() as conn:
            row = await (await conn.execute(query, (full_key,))).fetchone()
        if row is None:
            return None
        value, etag, expires = row
        expire_time = expires.astimezone(UTC) if expires is not None else None
        return StateItem(key=key, value=bytes(value), etag=str(etag), expire_time=expire_time)

    async def write(self, ops: Sequence[TxOp]) -> list[str]:
        # Validate everything first (keys, TTLs), so a bad operation never opens a transaction.
        prepared = [
            (op, prefixed(self._prefix, op.key), _ttl(op) if op.kind == "upsert" else None) for op in ops
        ]
        etags: list[str] = []
        async with self._connection() as conn, conn.transaction():
            for op, full_key, ttl in prepared:
                if op.kind == "delete":
                    await self._delete(conn, op, full_key)
                else:
                    etags.append(await self._upsert(conn, op, full_key, ttl))
        return etags

    async def _upsert(self, conn: psycopg.AsyncConnection[Any], op: TxOp, key: str, ttl: int | None) -> str:
        etag = uuid.uuid4()
        params = {"key": key, "value": op.value, "etag": etag, "ttl": ttl}
        expires = sql.SQL("now() + %(ttl)s::integer * interval '1 second'")
        if op.etag:
            params["old"] = _etag_uuid(op.etag)
            query = sql.SQL(
                "UPDATE {t} SET value = %(value)s, updated_at = now(), etag = %(etag)s, expires_at = {exp}"
                " WHERE key = %(key)s AND etag = %(old)s AND {live}"
            ).format(t=self._table, exp=expires, live=_LIVE)
        else:
            # First-write may still replace an expired row that the cleanup has not removed yet.
            only_expired = sql.SQL(" WHERE t.expires_at IS NOT NULL AND t.expires_at < now()")
            query = sql.SQL(
                "INSERT INTO {t} AS t (key, value, etag, expires_at)"
                " VALUES (%(key)s, %(value)s, %(etag)s, {exp})"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = now(),"
                " etag = excluded.etag, expires_at = excluded.expires_at{where}"
            ).format(t=self._table, exp=expires, where=only_expired if op.first_write else sql.SQL(""))
        if (await conn.execute(query, params)).rowcount != 1:
            raise EtagMismatch(f"possible etag mismatch: key {key!r} {_why(op)}")
        return str(etag)

    async def _delete(self, conn: psycopg.AsyncConnection[Any], op: TxOp, key: str) -> None:
        table = self._table
        if op.etag:
            query = sql.SQL("DELETE FROM {} WHERE key = %s AND etag = %s AND {}").format(table, _LIVE)
            if (await conn.execute(query, (key, _etag_uuid(op.etag)))).rowcount != 1:
                raise EtagMismatch(f"possible etag mismatch: key {key!r} {_why(op)}")
            return
        if op.first_write:
            # components-contrib's rule: first-write without an ETag only deletes what is not there.
            query = sql.SQL("SELECT 1 FROM {} WHERE key = %s AND {} FOR UPDATE").format(table, _LIVE)
            if await (await conn.execute(query, (key,))).fetchone():
                raise EtagMismatch(f"possible etag mismatch: key {key!r} {_why(op)}")
        await conn.execute(sql.SQL("DELETE FROM {} WHERE key = %s").format(table), (key,))

    async def close(self) -> None:
        """Stop the cleanup task and close the pool (idempotent)."""
        self._closed = True
        if self._gc is not None:
            self._gc.cancel()
            await asyncio.gather(self._gc, return_exceptions=True)
            self._gc = None
        await self._pool.close()


def _why(op: TxOp) -> str:
    if op.etag:
        return "does not exist or has a different etag"
    return "already exists (first-write)"


DRIVER = Driver(
    kind="state",
    versions=("v2",),
    required=("connectionString",),
    check=check_metadata,
    open=PostgresStateStore.open,
    capabilities=("ETAG", "TRANSACTIONAL", "TTL"),
)
