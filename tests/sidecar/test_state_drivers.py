"""Every state driver against the same cases: Dapr's ETag, first-write, TTL, transaction and key rules.

A new `state.*` driver is added to the `backend` fixture and must pass this file unchanged; what only one
driver has (SQLite's file layout, Redis' hash layout and integer ETags) is tested in its own file.
"""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
import redis.asyncio
from postgres_support import CONNECTION_STRING, connect, drop_tables, require_postgres, unique_table
from psycopg import sql
from redis_support import REDIS_HOST, client, delete_containing, keys_containing, require_redis, unique

from chassis.sidecar._errors import ComponentError, EtagMismatch, IllegalKey, InvalidMetadata
from chassis.sidecar._resources import DRIVERS
from chassis.sidecar.components import StateStore, TxOp
from chassis.sidecar.components.state_in_memory import Entry, InMemoryStateStore


@dataclass
class Backend(ABC):
    """How the shared cases open one driver and look underneath it."""

    kind: str
    metadata: dict[str, str]
    base_dir: Path
    marker: str  # in every app id and key a case uses, so a shared server can be cleaned up
    stale_etag: str  # well-formed for the store, never the current ETag

    @property
    def app_id(self) -> str:
        return f"app-{self.marker}"

    async def open(
        self, name: str = "statestore", *, app_id: str = "", namespace: str = "", **meta: str
    ) -> StateStore:
        store = await DRIVERS[self.kind].open(
            name,
            self.metadata | meta,
            app_id=app_id or self.app_id,
            base_dir=self.base_dir,
            namespace=namespace,
        )
        return cast(StateStore, store)

    def require_shared(self) -> None:
        """Skip a case that needs two opened stores to share data, for drivers that keep it in-process."""
        if not DRIVERS[self.kind].shared_across_processes:
            pytest.skip(f"{self.kind} keeps its data in one process: separate instances share nothing")

    @abstractmethod
    async def expire_now(self, stored_key: str) -> None:
        """Make a stored value expire now, as if its TTL had run out."""

    @abstractmethod
    async def stored(self) -> dict[str, Any]:
        """Everything this case stored, by stored key, read without the driver."""


class SqliteBackend(Backend):
    def _db(self) -> Path:
        return self.base_dir / "state.db"

    async def expire_now(self, stored_key: str) -> None:
        with sqlite3.connect(self._db()) as conn:
            conn.execute(
                "UPDATE state SET expiration_time = '2000-01-01 00:00:00.000' WHERE key = ?", (stored_key,)
            )

    async def stored(self) -> dict[str, Any]:
        with sqlite3.connect(self._db()) as conn:
            return {k: (v, e) for k, v, e in conn.execute("SELECT key, value, etag FROM state")}


class RedisBackend(Backend):
    raw: redis.asyncio.Redis

    async def expire_now(self, stored_key: str) -> None:
        await self.raw.expireat(stored_key, 1)  # a time in the past: Redis drops the key at once

    async def stored(self) -> dict[str, Any]:
        return {key: await self.raw.hgetall(key) for key in await keys_containing(self.raw, self.marker)}


class PostgresBackend(Backend):
    def _table(self) -> sql.Identifier:
        return sql.Identifier(self.metadata["tableName"])

    async def expire_now(self, stored_key: str) -> None:
        with connect() as conn:
            conn.execute(
                sql.SQL("UPDATE {} SET expires_at = now() - interval '1 hour' WHERE key = %s").format(
                    self._table()
                ),
                (stored_key,),
            )

    async def stored(self) -> dict[str, Any]:
        with connect() as conn:
            rows = conn.execute(sql.SQL("SELECT key, value, etag FROM {}").format(self._table())).fetchall()
        return {k: (bytes(v), str(e)) for k, v, e in rows}  # type: ignore[call-overload]


class InMemoryBackend(Backend):
    opened: list[InMemoryStateStore]

    async def open(
        self, name: str = "statestore", *, app_id: str = "", namespace: str = "", **meta: str
    ) -> StateStore:
        store = await super().open(name, app_id=app_id, namespace=namespace, **meta)
        self.opened.append(cast(InMemoryStateStore, store))
        return store

    async def expire_now(self, stored_key: str) -> None:
        past = datetime.now(UTC) - timedelta(hours=1)
        for store in self.opened:
            if (entry := store.entries.get(stored_key)) is not None:
                store.entries[stored_key] = Entry(entry.value, entry.etag, past)

    async def stored(self) -> dict[str, Any]:
        return {k: (e.value, e.etag) for store in self.opened for k, e in store.entries.items()}


@pytest.fixture(params=["state.sqlite", "state.redis", "state.postgresql", "state.in-memory"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    marker = unique("state")
    if request.param == "state.sqlite":
        yield SqliteBackend("state.sqlite", {"connectionString": "state.db"}, tmp_path, marker, "f" * 32)
        return
    if request.param == "state.in-memory":
        memory = InMemoryBackend("state.in-memory", {}, tmp_path, marker, "f" * 32)
        memory.opened = []
        yield memory
        return
    if request.param == "state.postgresql":
        require_postgres()
        table, meta_table = unique_table("state"), unique_table("meta")
        metadata = {
            "connectionString": CONNECTION_STRING,
            "tableName": table,
            "metadataTableName": meta_table,
        }
        try:
            yield PostgresBackend("state.postgresql", metadata, tmp_path, marker, str(uuid.uuid4()))
        finally:
            drop_tables([table, meta_table])
        return
    require_redis()
    backend = RedisBackend("state.redis", {"redisHost": REDIS_HOST}, tmp_path, marker, "999999")
    backend.raw = client()
    try:
        yield backend
    finally:
        delete_containing(marker)
        await backend.raw.aclose()


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[StateStore]:
    store = await backend.open()
    yield store
    await store.close()


# existing value, ETag sent ("current" = the value's own ETag), first-write, expected outcome.
ETAG_RULES = [
    ("missing", None, False, "ok"),
    ("missing", None, True, "ok"),
    ("missing", "current", False, "mismatch"),
    ("missing", "current", True, "mismatch"),
    ("missing", "stale", False, "mismatch"),
    ("present", None, False, "ok"),
    ("present", None, True, "mismatch"),
    ("present", "current", False, "ok"),
    ("present", "current", True, "ok"),
    ("present", "stale", False, "mismatch"),
    ("present", "stale", True, "mismatch"),
    ("expired", None, False, "ok"),
    ("expired", None, True, "ok"),
    ("expired", "current", False, "mismatch"),
    ("expired", "current", True, "mismatch"),
    ("expired", "stale", False, "mismatch"),
]


async def arrange(store: StateStore, backend: Backend, existing: str, etag_kind: str | None) -> str | None:
    """Put key 'k' into the `existing` state; return the ETag to send."""
    current = "1"  # what a missing key's ETag would look like
    if existing != "missing":
        current = await store.set("k", b"old")
    if existing == "expired":
        await backend.expire_now(f"{backend.app_id}||k")
    return {None: None, "current": current, "stale": backend.stale_etag}[etag_kind]


@pytest.mark.parametrize(("existing", "etag_kind", "first_write", "expected"), ETAG_RULES)
async def test_set_follows_dapr_etag_rules(
    store: StateStore,
    backend: Backend,
    existing: str,
    etag_kind: str | None,
    first_write: bool,
    expected: str,
) -> None:
    etag = await arrange(store, backend, existing, etag_kind)
    if expected == "mismatch":
        with pytest.raises(EtagMismatch):
            await store.set("k", b"new", etag=etag, first_write=first_write)
        return
    new_etag = await store.set("k", b"new", etag=etag, first_write=first_write)
    item = await store.get("k")
    assert item is not None
    assert (item.value, item.etag) == (b"new", new_etag)
    assert new_etag != etag


@pytest.mark.parametrize(("existing", "etag_kind", "first_write", "expected"), ETAG_RULES)
async def test_delete_follows_dapr_etag_rules(
    store: StateStore,
    backend: Backend,
    existing: str,
    etag_kind: str | None,
    first_write: bool,
    expected: str,
) -> None:
    etag = await arrange(store, backend, existing, etag_kind)
    if expected == "mismatch":
        with pytest.raises(EtagMismatch):
            await store.delete("k", etag=etag, first_write=first_write)
        return
    await store.delete("k", etag=etag, first_write=first_write)
    assert await store.get("k") is None


async def test_empty_etag_means_no_etag(store: StateStore) -> None:
    # gRPC sends "" for an unset etag; that must not be compared against the stored one.
    await store.set("k", b"1")
    await store.set("k", b"2", etag="")
    assert (item := await store.get("k")) is not None
    assert item.value == b"2"


async def test_concurrent_first_writes_create_once(backend: Backend) -> None:
    backend.require_shared()
    stores = [await backend.open() for _ in range(4)]
    try:
        results = await asyncio.gather(
            *(s.set("k", str(i).encode(), first_write=True) for i, s in enumerate(stores)),
            return_exceptions=True,
        )
    finally:
        for s in stores:
            await s.close()
    assert sum(isinstance(r, str) for r in results) == 1
    assert sum(isinstance(r, EtagMismatch) for r in results) == 3


async def test_every_write_gets_a_new_etag(store: StateStore) -> None:
    etags = [await store.set("k", b"v") for _ in range(3)]
    assert len(set(etags)) == 3
    assert (item := await store.get("k")) is not None and item.etag == etags[-1]


async def test_get_missing_key_is_none(store: StateStore) -> None:
    assert await store.get("nope") is None


async def test_ttl_expires_the_value(store: StateStore) -> None:
    before = datetime.now(UTC)
    await store.set("k", b"v", ttl_seconds=1)
    item = await store.get("k")
    assert item is not None and item.expire_time is not None
    assert before + timedelta(seconds=0.5) < item.expire_time < before + timedelta(seconds=2)
    for _ in range(60):  # poll: expiry is a property of the value, nothing signals it
        if await store.get("k") is None:
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("value did not expire within 3 s")


@pytest.mark.parametrize("ttl", [None, -1, 0])
async def test_ttl_none_or_minus_one_persists(store: StateStore, ttl: int | None) -> None:
    await store.set("k", b"v", ttl_seconds=60)
    await store.set("k", b"v", ttl_seconds=ttl)  # a later write without TTL clears the old one
    assert (item := await store.get("k")) is not None
    assert item.expire_time is None


async def test_ttl_below_minus_one_is_rejected(store: StateStore) -> None:
    with pytest.raises(ComponentError, match="ttlInSeconds"):
        await store.set("k", b"v", ttl_seconds=-2)
    assert await store.get("k") is None


async def test_transaction_applies_all_operations(store: StateStore) -> None:
    await store.set("gone", b"x")
    etag = await store.set("kept", b"1")
    await store.transact(
        [
            TxOp("upsert", "kept", b"2", etag=etag),
            TxOp("upsert", "new", b"3", first_write=True, ttl_seconds=60),
            TxOp("delete", "gone"),
        ]
    )
    assert (kept := await store.get("kept")) is not None and kept.value == b"2"
    assert (new := await store.get("new")) is not None and new.expire_time is not None
    assert await store.get("gone") is None


async def test_transaction_operations_see_the_earlier_ones(store: StateStore) -> None:
    await store.set("k", b"1")
    await store.transact([TxOp("delete", "k"), TxOp("upsert", "k", b"2", first_write=True)])
    item = await store.get("k")
    assert item is not None and item.value == b"2"
    with pytest.raises(EtagMismatch):  # the first upsert changed the ETag the second one names
        await store.transact([TxOp("upsert", "k", b"3"), TxOp("upsert", "k", b"4", etag=item.etag)])
    assert (after := await store.get("k")) is not None and (after.value, after.etag) == (b"2", item.etag)


async def test_transaction_with_one_failing_etag_writes_nothing(store: StateStore, backend: Backend) -> None:
    await store.set("a", b"old-a")
    await store.set("b", b"old-b")
    before = await backend.stored()
    with pytest.raises(EtagMismatch):
        await store.transact(
            [
                TxOp("upsert", "a", b"new-a"),
                TxOp("delete", "b"),
                TxOp("upsert", "c", b"new-c"),
                TxOp("upsert", "b", b"new-b", etag=backend.stale_etag),
            ]
        )
    assert await backend.stored() == before
    # The store is still usable after the rollback.
    await store.set("a", b"after")


@pytest.mark.parametrize(
    ("key_prefix", "namespace", "stored"),
    [
        (None, "", "{app}||{key}"),
        ("appid", "", "{app}||{key}"),
        ("AppID", "", "{app}||{key}"),
        ("name", "", "statestore||{key}"),
        ("none", "", "{key}"),
        ("namespace", "prod", "prod.{app}||{key}"),
        ("namespace", "", "{app}||{key}"),
        ("shared", "", "shared||{key}"),
    ],
)
async def test_key_prefix_strategies(
    backend: Backend, key_prefix: str | None, namespace: str, stored: str
) -> None:
    key = f"k-{backend.marker}"  # unique even without a prefix
    store = await backend.open(namespace=namespace, **({"keyPrefix": key_prefix} if key_prefix else {}))
    try:
        await store.set(key, b"v")
        assert (item := await store.get(key)) is not None and item.key == key
    finally:
        await store.close()
    assert list(await backend.stored()) == [stored.format(app=backend.app_id, key=key)]


async def test_name_prefix_shares_state_between_apps_appid_does_not(backend: Backend) -> None:
    backend.require_shared()
    key = f"k-{backend.marker}"
    writer = await backend.open(app_id="a", keyPrefix="name")
    shared_reader = await backend.open(app_id="b", keyPrefix="name")
    private_reader = await backend.open(app_id="b")
    try:
        await writer.set(key, b"v")
        assert (item := await shared_reader.get(key)) is not None and item.value == b"v"
        assert await private_reader.get(key) is None
    finally:
        for s in (writer, shared_reader, private_reader):
            await s.close()


async def test_illegal_key_has_daprs_message(store: StateStore) -> None:
    with pytest.raises(IllegalKey) as caught:
        await store.set("a||b", b"v")
    assert str(caught.value) == "input key/keyPrefix 'a||b' can't contain '||'"
    with pytest.raises(IllegalKey):
        await store.get("a||b")
    with pytest.raises(IllegalKey):
        await store.transact([TxOp("upsert", "ok", b"v"), TxOp("delete", "x||")])
    assert await store.get("ok") is None


async def test_key_prefix_metadata_with_separator_is_invalid(backend: Backend) -> None:
    with pytest.raises(InvalidMetadata, match="can't contain"):
        await backend.open(keyPrefix="a||b")


@pytest.mark.parametrize(
    "value", [b"hello", b'{"json": "\xc3\xa9"}', b"", b"\xff\xfe\x00\x01", bytes(range(256))]
)
async def test_text_and_binary_values_round_trip(store: StateStore, value: bytes) -> None:
    await store.set("k", value)
    assert (item := await store.get("k")) is not None and item.value == value


async def test_closed_store_raises_component_error(backend: Backend) -> None:
    store = await backend.open()
    await store.close()
    await store.close()  # idempotent
    with pytest.raises(ComponentError, match="closed"):
        await store.get("k")
