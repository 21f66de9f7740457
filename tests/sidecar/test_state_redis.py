"""state.redis only: Dapr's hash layout, integer ETags, EXPIRE-based TTL and connection metadata.

The behaviour every state store shares is in test_state_drivers.py; these cases look at what Redis
itself holds, on the real server.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio
from redis_support import REDIS_HOST, client, delete_containing, require_redis, unique

from chassis.sidecar._errors import ComponentError, EtagInvalid, InvalidMetadata, ResourceError
from chassis.sidecar._resources import load_specs
from chassis.sidecar.components import TxOp
from chassis.sidecar.components.state_redis import RedisStateStore

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def app_id() -> Iterator[str]:
    """A unique app id (the key prefix); its keys are deleted afterwards, in both databases used."""
    require_redis()
    app = unique("app")
    yield app
    for db in (0, 1):
        delete_containing(app, db)


@pytest.fixture
async def raw() -> AsyncIterator[redis.asyncio.Redis]:
    raw = client()
    yield raw
    await raw.aclose()


async def open_store(app_id: str, **metadata: str) -> RedisStateStore:
    return await RedisStateStore.open(
        "statestore", {"redisHost": REDIS_HOST, **metadata}, app_id=app_id, base_dir=Path.cwd()
    )


@pytest.fixture
async def store(app_id: str) -> AsyncIterator[RedisStateStore]:
    store = await open_store(app_id)
    yield store
    await store.close()


async def test_value_is_a_hash_with_data_and_version(
    store: RedisStateStore, raw: redis.asyncio.Redis, app_id: str
) -> None:
    await store.set("k", b"\x00\xffbytes")
    assert await raw.hgetall(f"{app_id}||k") == {b"data": b"\x00\xffbytes", b"version": b"1"}


async def test_etags_are_integer_versions(store: RedisStateStore) -> None:
    assert [await store.set("k", b"v") for _ in range(3)] == ["1", "2", "3"]
    assert await store.set("k", b"v", etag="3") == "4"
    await store.delete("k", etag="4")
    assert await store.set("k", b"v") == "1"  # a new hash starts again, as in Dapr


@pytest.mark.parametrize("etag", ["abc", "1.5", "f" * 32])
async def test_non_integer_etag_is_invalid_and_writes_nothing(store: RedisStateStore, etag: str) -> None:
    await store.set("k", b"v")
    with pytest.raises(EtagInvalid, match="integer"):
        await store.set("k", b"new", etag=etag)
    with pytest.raises(EtagInvalid):
        await store.delete("k", etag=etag)
    with pytest.raises(EtagInvalid):
        await store.transact([TxOp("upsert", "other", b"x"), TxOp("upsert", "k", b"y", etag=etag)])
    assert (item := await store.get("k")) is not None and (item.value, item.etag) == (b"v", "1")
    assert await store.get("other") is None


async def test_ttl_is_a_redis_expire(store: RedisStateStore, raw: redis.asyncio.Redis, app_id: str) -> None:
    await store.set("k", b"v", ttl_seconds=100)
    assert 95 <= await raw.ttl(f"{app_id}||k") <= 100
    await store.set("k", b"v")
    assert await raw.ttl(f"{app_id}||k") == -1  # persisted


async def test_store_default_ttl_applies_unless_the_request_says_minus_one(
    app_id: str, raw: redis.asyncio.Redis
) -> None:
    store = await open_store(app_id, ttlInSeconds="300")
    try:
        await store.set("default", b"v")
        await store.set("forever", b"v", ttl_seconds=-1)
        await store.set("short", b"v", ttl_seconds=30)
    finally:
        await store.close()
    assert 290 <= await raw.ttl(f"{app_id}||default") <= 300
    assert await raw.ttl(f"{app_id}||forever") == -1
    assert 25 <= await raw.ttl(f"{app_id}||short") <= 30


async def test_a_key_of_another_type_is_replaced(
    store: RedisStateStore, raw: redis.asyncio.Redis, app_id: str
) -> None:
    await raw.set(f"{app_id}||k", b"plain string")
    assert await store.set("k", b"v", first_write=True) == "1"
    assert await raw.hgetall(f"{app_id}||k") == {b"data": b"v", b"version": b"1"}


async def test_redis_db_selects_the_database(app_id: str) -> None:
    store = await open_store(app_id, redisDB="1")
    db1, db0 = client(1), client(0)
    try:
        await store.set("k", b"v")
        assert await db1.exists(f"{app_id}||k") == 1
        assert await db0.exists(f"{app_id}||k") == 0
    finally:
        await store.close()
        await db1.aclose()
        await db0.aclose()


async def test_unreachable_server_is_a_component_error() -> None:
    with pytest.raises(ComponentError, match=re.escape("error connecting to redis at 127.0.0.1:1:")):
        await RedisStateStore.open("s", {"redisHost": "127.0.0.1:1"}, app_id="a", base_dir=Path.cwd())


@pytest.mark.parametrize(
    ("metadata", "field", "problem"),
    [
        ({"redisHost": ""}, "redisHost", "must not be empty"),
        ({"redisHost": "localhost"}, "redisHost", "host:port"),
        ({"redisHost": "localhost:http"}, "redisHost", "host:port"),
        ({"redisHost": "localhost:6379", "redisDB": "one"}, "redisDB", "database number"),
        ({"redisHost": "localhost:6379", "enableTLS": "true"}, "enableTLS", "not supported"),
        ({"redisHost": "localhost:6379", "redisType": "cluster"}, "redisType", "not supported"),
        ({"redisHost": "localhost:6379", "ttlInSeconds": "soon"}, "ttlInSeconds", "integer"),
        ({"redisHost": "localhost:6379", "keyPrefix": "a||b"}, "keyPrefix", "can't contain"),
    ],
)
async def test_invalid_metadata(metadata: dict[str, str], field: str, problem: str) -> None:
    with pytest.raises(InvalidMetadata) as caught:
        await RedisStateStore.open("s", metadata, app_id="a", base_dir=Path.cwd())
    assert caught.value.field == field and problem in caught.value.problem


def test_redis_profile_loads(tmp_path: Path) -> None:
    specs = {spec.name: spec for spec in load_specs([REPO / "dapr" / "components" / "redis"])}
    assert (specs["statestore"].type, specs["pubsub"].type) == ("state.redis", "pubsub.redis")
    assert specs["pubsub"].metadata["processingTimeout"] == "10s"
    missing = tmp_path / "statestore.yaml"
    missing.write_text(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: s}\n"
        "spec: {type: state.redis, version: v1, metadata: []}\n"
    )
    with pytest.raises(
        ResourceError, match=re.escape("spec.metadata.redisHost: required by state.redis but missing")
    ):
        load_specs([missing])
