"""state.sqlite: Dapr's ETag, first-write, TTL, transaction and key-prefix rules on a real SQLite file."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from chassis.sidecar._errors import ComponentError, EtagMismatch, IllegalKey, InvalidMetadata
from chassis.sidecar.components import TxOp
from chassis.sidecar.components.state_sqlite import SqliteStateStore

APP = "app"


async def open_store(
    base_dir: Path, name: str = "statestore", app_id: str = APP, **metadata: str
) -> SqliteStateStore:
    return await SqliteStateStore.open(
        name, {"connectionString": "state.db", **metadata}, app_id=app_id, base_dir=base_dir
    )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStateStore]:
    store = await open_store(tmp_path)
    yield store
    await store.close()


def rows(db: Path, table: str = "state") -> dict[str, tuple[str, int]]:
    """Raw (value, is_binary) by stored key, read with a separate connection."""
    with sqlite3.connect(db) as conn:
        return {k: (v, b) for k, v, b in conn.execute(f"SELECT key, value, is_binary FROM {table}")}


def expire_now(db: Path, stored_key: str) -> None:
    """Move a row's expiration into the past, as if its TTL had run out."""
    with sqlite3.connect(db) as conn:
        conn.execute(
            "UPDATE state SET expiration_time = '2000-01-01 00:00:00.000' WHERE key = ?", (stored_key,)
        )


# existing row state, ETag sent ("current" = the row's own ETag), first-write, expected outcome.
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


async def arrange(store: SqliteStateStore, db: Path, existing: str, etag_kind: str | None) -> str | None:
    """Put key 'k' into the `existing` state; return the ETag to send."""
    current = "0" * 32
    if existing != "missing":
        current = await store.set("k", b"old")
    if existing == "expired":
        expire_now(db, f"{APP}||k")
    return {None: None, "current": current, "stale": "f" * 32}[etag_kind]


@pytest.mark.parametrize(("existing", "etag_kind", "first_write", "expected"), ETAG_RULES)
async def test_set_follows_dapr_etag_rules(
    store: SqliteStateStore,
    tmp_path: Path,
    existing: str,
    etag_kind: str | None,
    first_write: bool,
    expected: str,
) -> None:
    etag = await arrange(store, tmp_path / "state.db", existing, etag_kind)
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
    store: SqliteStateStore,
    tmp_path: Path,
    existing: str,
    etag_kind: str | None,
    first_write: bool,
    expected: str,
) -> None:
    etag = await arrange(store, tmp_path / "state.db", existing, etag_kind)
    if expected == "mismatch":
        with pytest.raises(EtagMismatch):
            await store.delete("k", etag=etag, first_write=first_write)
        return
    await store.delete("k", etag=etag, first_write=first_write)
    assert await store.get("k") is None


async def test_empty_etag_means_no_etag(store: SqliteStateStore) -> None:
    # gRPC sends "" for an unset etag; that must not be compared against the stored one.
    await store.set("k", b"1")
    await store.set("k", b"2", etag="")
    assert (item := await store.get("k")) is not None
    assert item.value == b"2"


async def test_concurrent_first_writes_create_once(tmp_path: Path) -> None:
    stores = [await open_store(tmp_path) for _ in range(4)]
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


async def test_every_write_gets_a_new_uuid_etag(store: SqliteStateStore) -> None:
    etags = [await store.set("k", b"v") for _ in range(3)]
    assert len(set(etags)) == 3
    assert all(len(e) == 32 and int(e, 16) >= 0 for e in etags)


async def test_get_missing_key_is_none(store: SqliteStateStore) -> None:
    assert await store.get("nope") is None


async def test_ttl_expires_the_value(store: SqliteStateStore) -> None:
    before = datetime.now(UTC)
    await store.set("k", b"v", ttl_seconds=1)
    item = await store.get("k")
    assert item is not None and item.expire_time is not None
    assert before + timedelta(seconds=0.5) < item.expire_time < before + timedelta(seconds=2)
    for _ in range(60):  # poll: expiry is a property of the row, nothing signals it
        if await store.get("k") is None:
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("value did not expire within 3 s")


@pytest.mark.parametrize("ttl", [None, -1, 0])
async def test_ttl_none_or_minus_one_persists(store: SqliteStateStore, ttl: int | None) -> None:
    await store.set("k", b"v", ttl_seconds=60)
    await store.set("k", b"v", ttl_seconds=ttl)  # a later write without TTL clears the old one
    assert (item := await store.get("k")) is not None
    assert item.expire_time is None


async def test_ttl_below_minus_one_is_rejected(store: SqliteStateStore) -> None:
    with pytest.raises(ComponentError, match="ttlInSeconds"):
        await store.set("k", b"v", ttl_seconds=-2)


async def test_transaction_applies_all_operations(store: SqliteStateStore) -> None:
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


async def test_transaction_with_one_failing_etag_writes_nothing(
    store: SqliteStateStore, tmp_path: Path
) -> None:
    await store.set("a", b"old-a")
    await store.set("b", b"old-b")
    before = rows(tmp_path / "state.db")
    with pytest.raises(EtagMismatch):
        await store.transact(
            [
                TxOp("upsert", "a", b"new-a"),
                TxOp("delete", "b"),
                TxOp("upsert", "c", b"new-c"),
                TxOp("upsert", "b", b"new-b", etag="f" * 32),
            ]
        )
    assert rows(tmp_path / "state.db") == before
    # The store is still usable after the rollback.
    await store.set("a", b"after")


@pytest.mark.parametrize(
    ("key_prefix", "namespace", "stored"),
    [
        (None, "", "app||k"),
        ("appid", "", "app||k"),
        ("AppID", "", "app||k"),
        ("name", "", "statestore||k"),
        ("none", "", "k"),
        ("namespace", "prod", "prod.app||k"),
        ("namespace", "", "app||k"),
        ("shared", "", "shared||k"),
    ],
)
async def test_key_prefix_strategies(
    tmp_path: Path, key_prefix: str | None, namespace: str, stored: str
) -> None:
    metadata = {"connectionString": "state.db"} | ({"keyPrefix": key_prefix} if key_prefix else {})
    store = await SqliteStateStore.open(
        "statestore", metadata, app_id=APP, base_dir=tmp_path, namespace=namespace
    )
    try:
        await store.set("k", b"v")
        assert (item := await store.get("k")) is not None and item.key == "k"
    finally:
        await store.close()
    assert list(rows(tmp_path / "state.db")) == [stored]


async def test_name_prefix_shares_state_between_apps_appid_does_not(tmp_path: Path) -> None:
    writer = await open_store(tmp_path, app_id="a", keyPrefix="name")
    shared_reader = await open_store(tmp_path, app_id="b", keyPrefix="name")
    private_reader = await open_store(tmp_path, app_id="b")
    try:
        await writer.set("k", b"v")
        assert (item := await shared_reader.get("k")) is not None and item.value == b"v"
        assert await private_reader.get("k") is None
    finally:
        for s in (writer, shared_reader, private_reader):
            await s.close()


async def test_illegal_key_has_daprs_message(store: SqliteStateStore) -> None:
    with pytest.raises(IllegalKey) as caught:
        await store.set("a||b", b"v")
    assert str(caught.value) == "input key/keyPrefix 'a||b' can't contain '||'"
    with pytest.raises(IllegalKey):
        await store.get("a||b")
    with pytest.raises(IllegalKey):
        await store.transact([TxOp("upsert", "ok", b"v"), TxOp("delete", "x||")])
    assert await store.get("ok") is None


async def test_key_prefix_metadata_with_separator_is_invalid(tmp_path: Path) -> None:
    with pytest.raises(InvalidMetadata, match="can't contain"):
        await open_store(tmp_path, keyPrefix="a||b")


@pytest.mark.parametrize(
    ("value", "is_binary"),
    [(b"hello", 0), (b'{"json": "\xc3\xa9"}', 0), (b"", 0), (b"\xff\xfe\x00\x01", 1), (bytes(range(256)), 1)],
)
async def test_text_and_binary_values_round_trip(
    store: SqliteStateStore, tmp_path: Path, value: bytes, is_binary: int
) -> None:
    await store.set("k", value)
    assert (item := await store.get("k")) is not None and item.value == value
    assert rows(tmp_path / "state.db")[f"{APP}||k"][1] == is_binary


async def test_table_name_and_file_uri(tmp_path: Path) -> None:
    store = await SqliteStateStore.open(
        "s",
        {"connectionString": "file:sub/dir/my.db?cache=private", "tableName": "dapr_state"},
        app_id=APP,
        base_dir=tmp_path,
    )
    try:
        await store.set("k", b"v")
    finally:
        await store.close()
    assert list(rows(tmp_path / "sub/dir/my.db", "dapr_state")) == [f"{APP}||k"]


async def test_file_is_in_wal_mode(store: SqliteStateStore, tmp_path: Path) -> None:
    await store.set("k", b"v")
    with sqlite3.connect(tmp_path / "state.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_closed_store_raises_component_error(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    await store.close()
    await store.close()  # idempotent
    with pytest.raises(ComponentError, match="closed"):
        await store.get("k")


async def test_unopenable_database_is_a_component_error(tmp_path: Path) -> None:
    (tmp_path / "adir").mkdir()
    with pytest.raises(ComponentError, match="cannot open database"):
        await SqliteStateStore.open("s", {"connectionString": "adir"}, app_id=APP, base_dir=tmp_path)
