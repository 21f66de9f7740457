"""state.sqlite only: Dapr's table layout in a real SQLite file (shared cases: test_state_drivers.py)."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chassis.sidecar._errors import ComponentError
from chassis.sidecar.components.state_sqlite import SqliteStateStore

APP = "app"


async def open_store(base_dir: Path, **metadata: str) -> SqliteStateStore:
    return await SqliteStateStore.open(
        "statestore", {"connectionString": "state.db", **metadata}, app_id=APP, base_dir=base_dir
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


async def test_every_write_gets_a_new_uuid_etag(store: SqliteStateStore) -> None:
    etags = [await store.set("k", b"v") for _ in range(3)]
    assert len(set(etags)) == 3
    assert all(len(e) == 32 and int(e, 16) >= 0 for e in etags)


@pytest.mark.parametrize(
    ("value", "is_binary"),
    [(b"hello", 0), (b'{"json": "\xc3\xa9"}', 0), (b"", 0), (b"\xff\xfe\x00\x01", 1), (bytes(range(256)), 1)],
)
async def test_text_is_stored_as_text_and_binary_as_base64(
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


async def test_unopenable_database_is_a_component_error(tmp_path: Path) -> None:
    (tmp_path / "adir").mkdir()
    with pytest.raises(ComponentError, match="cannot open database"):
        await SqliteStateStore.open("s", {"connectionString": "adir"}, app_id=APP, base_dir=tmp_path)
