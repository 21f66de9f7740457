"""pubsub.sqlite only: rows per group and subscription, and commits seen across connections.

The behaviour every broker shares is in test_pubsub_drivers.py.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chassis.sidecar._errors import InvalidMetadata
from chassis.sidecar.components.pubsub_sqlite import SqlitePubSub


async def open_broker(base_dir: Path, **metadata: str) -> SqlitePubSub:
    return await SqlitePubSub.open(
        "pubsub", {"connectionString": "pubsub.db", **metadata}, app_id="test", base_dir=base_dir
    )


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[SqlitePubSub]:
    broker = await open_broker(tmp_path, processingTimeout="300ms")
    yield broker
    await broker.close()


def count_rows(db: Path, table: str) -> int:
    with sqlite3.connect(db) as conn:
        count: int = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        return count


async def test_message_row_goes_once_every_group_acked(broker: SqlitePubSub, tmp_path: Path) -> None:
    await broker.subscribe("g1", "t")
    await broker.subscribe("g2", "t")
    await broker.publish("t", b"x", {})
    [m1], [m2] = await broker.claim("g1", 10), await broker.claim("g2", 10)
    await broker.ack("g1", m1)
    assert count_rows(tmp_path / "pubsub.db", "messages") == 1  # g2 still needs it
    await broker.ack("g2", m2)
    assert count_rows(tmp_path / "pubsub.db", "messages") == 0
    assert count_rows(tmp_path / "pubsub.db", "deliveries") == 0


async def test_new_group_gets_messages_from_now_on(broker: SqlitePubSub, tmp_path: Path) -> None:
    await broker.publish("t", b"before", {})
    assert count_rows(tmp_path / "pubsub.db", "messages") == 0  # nobody needed it
    await broker.subscribe("g", "t")
    await broker.publish("t", b"after", {})
    assert [m.data for m in await broker.claim("g", 10)] == [b"after"]


async def test_subscriptions_persist_in_the_file(tmp_path: Path) -> None:
    first = await open_broker(tmp_path)
    await first.subscribe("g", "t")
    await first.close()
    second = await open_broker(tmp_path)
    try:
        await second.publish("t", b"x", {})
        assert [m.data for m in await second.claim("g", 10)] == [b"x"]  # no subscribe in this process
    finally:
        await second.close()


async def test_wait_returns_early_on_commit_by_another_connection(
    broker: SqlitePubSub, tmp_path: Path
) -> None:
    other = await open_broker(tmp_path)
    try:
        waiter = asyncio.create_task(broker.wait(5))
        await asyncio.sleep(0.05)
        await other.subscribe("g", "t")
        await asyncio.wait_for(waiter, 1)
    finally:
        await other.close()


async def test_empty_connection_string_is_invalid(tmp_path: Path) -> None:
    with pytest.raises(InvalidMetadata) as caught:
        await SqlitePubSub.open("p", {"connectionString": ""}, app_id="a", base_dir=tmp_path)
    assert caught.value.field == "connectionString"
