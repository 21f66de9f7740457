"""state.postgresql only: Dapr's v2 table layout, UUID ETags, connection strings, metadata and cleanup.

The behaviour every state store shares is in test_state_drivers.py; these cases look at what
PostgreSQL itself holds, on the real server.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from postgres_support import CONNECTION_STRING, URL, connect, drop_tables, require_postgres, unique_table
from psycopg import sql

from chassis.sidecar._errors import ComponentError, EtagMismatch, ResourceError
from chassis.sidecar._resources import load_specs
from chassis.sidecar.components import TxOp
from chassis.sidecar.components.state_postgresql import PostgresStateStore, connection_info


@pytest.fixture
def tables() -> Iterator[dict[str, str]]:
    """Unique state and metadata table names, dropped afterwards."""
    require_postgres()
    names = {"tableName": unique_table("state"), "metadataTableName": unique_table("meta")}
    yield names
    drop_tables(names.values())


async def open_store(tables: dict[str, str], **metadata: str) -> PostgresStateStore:
    return await PostgresStateStore.open(
        "statestore",
        {"connectionString": CONNECTION_STRING, **tables, **metadata},
        app_id="app",
        base_dir=Path(),
    )


@pytest.fixture
async def store(tables: dict[str, str]) -> AsyncIterator[PostgresStateStore]:
    store = await open_store(tables)
    yield store
    await store.close()


def rows(
    table: str, query: str = "SELECT key, value, etag, expires_at IS NOT NULL FROM {}"
) -> list[tuple[object, ...]]:
    with connect() as conn:
        return list(conn.execute(sql.SQL(query).format(sql.Identifier(table))).fetchall())  # type: ignore[call-overload]


def columns(table: str) -> list[tuple[str, str]]:
    with connect() as conn:
        found = conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = %s"
            " ORDER BY ordinal_position",
            (table,),
        ).fetchall()
    return [(str(name), str(kind)) for name, kind in found]


async def test_table_has_daprs_v2_layout(store: PostgresStateStore, tables: dict[str, str]) -> None:
    assert columns(tables["tableName"]) == [
        ("key", "text"),
        ("value", "bytea"),
        ("etag", "uuid"),
        ("created_at", "timestamp with time zone"),
        ("updated_at", "timestamp with time zone"),
        ("expires_at", "timestamp with time zone"),
    ]
    # daprd's migrator reads this row and skips migration 1 on a table we created.
    meta = rows(tables["metadataTableName"], "SELECT key, value FROM {}")
    assert meta == [(f"migrations-state-v2-{tables['tableName'].removesuffix('state')}", "1")]


async def test_values_are_raw_bytes_and_etags_uuids(
    store: PostgresStateStore, tables: dict[str, str]
) -> None:
    etag = await store.set("k", b"\x00\xffbytes", ttl_seconds=60)
    assert uuid.UUID(etag)
    assert rows(tables["tableName"]) == [("app||k", b"\x00\xffbytes", uuid.UUID(etag), True)]


@pytest.mark.parametrize("etag", ["999999", "not-a-uuid", ""])
async def test_non_uuid_etag_never_matches(store: PostgresStateStore, etag: str) -> None:
    await store.set("k", b"v")
    if etag == "":  # gRPC's unset ETag: last-write-wins
        await store.set("k", b"new", etag=etag)
        return
    with pytest.raises(EtagMismatch):
        await store.set("k", b"new", etag=etag)
    with pytest.raises(EtagMismatch):
        await store.transact([TxOp("upsert", "other", b"x"), TxOp("delete", "k", etag=etag)])
    assert (item := await store.get("k")) is not None and item.value == b"v"
    assert await store.get("other") is None


@pytest.mark.parametrize(
    "connection",
    [CONNECTION_STRING, URL, "host='127.0.0.1' user=postgres dbname=test connect_timeout=5"],
)
async def test_keyword_and_url_connection_strings(tables: dict[str, str], connection: str) -> None:
    store = await open_store(tables, connectionString=connection)
    try:
        await store.set("k", b"v")
        assert (item := await store.get("k")) is not None and item.value == b"v"
    finally:
        await store.close()


def test_pgx_database_keyword_becomes_dbname() -> None:
    assert connection_info("host=h user='a b' database=test") == "host=h user='a b' dbname=test"


async def test_table_prefix_names_the_table_as_dapr_v2(tables: dict[str, str]) -> None:
    prefix = unique_table("p") + "_"
    store = await PostgresStateStore.open(
        "statestore",
        {
            "connectionString": CONNECTION_STRING,
            "tablePrefix": prefix,
            "metadataTableName": tables["metadataTableName"],
        },
        app_id="app",
        base_dir=Path(),
    )
    try:
        await store.set("k", b"v")
        assert rows(prefix + "state", "SELECT key FROM {}") == [("app||k",)]
    finally:
        await store.close()
        drop_tables([prefix + "state"])


async def test_cleanup_interval_deletes_expired_rows(tables: dict[str, str]) -> None:
    store = await open_store(tables, cleanupInterval="100ms")
    try:
        await store.set("short", b"v", ttl_seconds=1)
        await store.set("kept", b"v")
        for _ in range(60):  # poll: the cleanup runs on its own timer
            if rows(tables["tableName"], "SELECT key FROM {}") == [("app||kept",)]:
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("expired row was not removed within 6 s")
    finally:
        await store.close()


async def test_sidecars_opening_together_create_the_table_once(tables: dict[str, str]) -> None:
    stores = await asyncio.gather(*(open_store(tables) for _ in range(4)))
    for opened in stores:
        await opened.close()
    assert len(rows(tables["metadataTableName"], "SELECT key FROM {}")) == 1


async def test_unreachable_server_is_a_component_error(tables: dict[str, str]) -> None:
    with pytest.raises(ComponentError, match="cannot use the database"):
        await open_store(
            tables, connectionString="host=127.0.0.1 port=1 user=postgres dbname=test", timeout="1s"
        )


STATE_V = """\
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {{name: statestore}}
spec:
  type: state.postgresql
  version: {version}
  metadata:
  - {{name: connectionString, value: "{conn}"}}
{extra}"""


@pytest.mark.parametrize(
    ("version", "extra", "field", "problem"),
    [
        ("v1", "", "spec.version", "state.postgresql has no version 'v1' (supported: v2)"),
        ("v2", "  - {name: timeout, value: 500ms}\n", "spec.metadata.timeout", "at least 1s"),
        ("v2", "  - {name: tableName, value: 'x; drop'}\n", "spec.metadata.tableName", "plain SQL name"),
        ("v2", "  - {name: maxConns, value: many}\n", "spec.metadata.maxConns", "integer"),
        (
            "v2",
            "  - {name: cleanupInterval, value: often}\n",
            "spec.metadata.cleanupInterval",
            "invalid duration",
        ),
    ],
)
def test_bad_metadata_is_one_line_naming_the_field(
    tmp_path: Path, version: str, extra: str, field: str, problem: str
) -> None:
    path = tmp_path / "state.yaml"
    path.write_text(STATE_V.format(version=version, conn=CONNECTION_STRING, extra=extra))
    with pytest.raises(ResourceError) as caught:
        load_specs([path])
    assert str(caught.value).startswith(f"{path}: {field}: ")
    assert problem in str(caught.value)
