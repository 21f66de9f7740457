"""State get/save p50 through the official async SDK: embedded (SQLite) and redis profiles, beside raw
baselines (the same SQLite pragmas and upsert in-process; redis-py HSET/HGET), all in one run.
"""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import redis
import redis.asyncio as aioredis
from dapr.aio.clients import DaprClient
from dapr.proto.common.v1 import common_pb2 as common_v1
from dapr.proto.runtime.v1 import dapr_pb2_grpc, state_pb2

from benchmarks._common import (
    REDIS_COMPONENTS,
    Figure,
    Sidecar,
    percentiles_ms,
    pointed_at,
    report,
    stopping,
    timed_calls,
)
from benchmarks._profile import profiling

N = 2000
WARMUP = 200
VALUE = b'{"learner": "ada", "score": 97, "comment": "a small JSON document"}'
TARGET_MS = 0.6
Call = Callable[[int], Awaitable[object]]


async def _stub(port: int) -> dict[str, list[int]]:
    """The same calls as raw grpc.aio DaprStub requests: the sidecar without the SDK's client cost."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = dapr_pb2_grpc.DaprStub(channel)

        def save(i: int) -> object:
            item = common_v1.StateItem(key=f"s{i}", value=VALUE)
            return stub.SaveState(state_pb2.SaveStateRequest(store_name="statestore", states=[item]))

        def get(i: int) -> object:
            return stub.GetState(state_pb2.GetStateRequest(store_name="statestore", key=f"s{i}"))

        return {"save": await timed_calls(save, N, WARMUP), "get": await timed_calls(get, N, WARMUP)}


async def _sdk() -> dict[str, list[int]]:
    """save then get N keys through the SDK (DaprClient.save_state / get_state)."""
    async with DaprClient() as client:
        save = await timed_calls(lambda i: client.save_state("statestore", f"k{i}", VALUE), N, WARMUP)
        get = await timed_calls(lambda i: client.get_state("statestore", f"k{i}"), N, WARMUP)
    return {"save": save, "get": get}


def _sqlite_raw(path: Path) -> dict[str, list[int]]:
    """The sidecar's SQL on a connection with its pragmas, without gRPC, SDK or worker thread."""
    conn = sqlite3.connect(path, isolation_level=None)
    for pragma in ("busy_timeout = 5000", "journal_mode = WAL", "synchronous = NORMAL"):
        conn.execute(f"PRAGMA {pragma}")
    conn.execute(
        "CREATE TABLE state (key TEXT NOT NULL PRIMARY KEY, value TEXT NOT NULL, is_binary BOOLEAN NOT NULL,"
        " etag TEXT NOT NULL, expiration_time TIMESTAMP DEFAULT NULL, update_time TIMESTAMP DEFAULT NULL)"
    )
    text = VALUE.decode()

    async def save(i: int) -> None:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "INSERT INTO state (key, value, is_binary, etag, update_time) VALUES (?, ?, 0, ?,"
            " CURRENT_TIMESTAMP) ON CONFLICT (key) DO UPDATE SET value = excluded.value,"
            " etag = excluded.etag, update_time = excluded.update_time",
            (f"k{i}", text, uuid.uuid4().hex),
        )
        conn.execute("COMMIT")

    async def get(i: int) -> None:
        conn.execute("SELECT value, is_binary, etag FROM state WHERE key = ?", (f"k{i}",)).fetchone()

    try:
        return asyncio.run(_both(save, get))
    finally:
        conn.close()


async def _both(save: Call, get: Call) -> dict[str, list[int]]:
    return {"save": await timed_calls(save, N, WARMUP), "get": await timed_calls(get, N, WARMUP)}


async def _redis_raw(prefix: str) -> dict[str, list[int]]:
    """redis-py (asyncio) HSET/HGET of the same hash layout as Dapr's state.redis."""
    client = aioredis.Redis(host="127.0.0.1", port=6379)
    try:
        save = await timed_calls(
            lambda i: client.hset(f"{prefix}{i}", mapping={"data": VALUE, "version": 1}), N, WARMUP
        )
        get = await timed_calls(lambda i: client.hget(f"{prefix}{i}", "data"), N, WARMUP)
        await client.delete(*[f"{prefix}{i}" for i in range(max(N, WARMUP))])
    finally:
        await client.aclose()
    return {"save": save, "get": get}


Series = dict[str, list[int]]


def _through_sidecar(app_id: str, workdir: Path, resources: list[Path]) -> tuple[Series, Series]:
    with stopping() as started:
        sidecar = Sidecar(app_id, workdir, resources=resources)
        started.append(sidecar)
        sidecar.start()
        with pointed_at(sidecar), profiling(sidecar.pid, f"state-{workdir.name}-sidecar"):
            return asyncio.run(_sdk()), asyncio.run(_stub(sidecar.grpc_port))


def _drop_redis_keys(pattern: str) -> None:
    """Leave the shared Redis as found: delete the keys this run wrote."""
    client = redis.Redis(host="127.0.0.1", port=6379)
    keys = list(client.scan_iter(match=pattern, count=1000))
    for first in range(0, len(keys), 500):
        client.delete(*keys[first : first + 500])
    client.close()


def run() -> list[Figure]:
    with tempfile.TemporaryDirectory(prefix="bench-state-") as tmp:
        workdir = Path(tmp)
        embedded, embedded_stub = _through_sidecar("bench-state", workdir / "embedded", [])
        raw_sqlite = _sqlite_raw(workdir / "raw.db")
        app_id = f"bench-state-{uuid.uuid4().hex[:8]}"  # fresh keys on the shared Redis
        try:
            on_redis, _ = _through_sidecar(app_id, workdir / "redis", [REDIS_COMPONENTS])
        finally:
            _drop_redis_keys(f"{app_id}||*")
        raw_redis = asyncio.run(_redis_raw(f"bench-raw-{uuid.uuid4().hex[:8]}-"))
    return _figures(embedded, raw_sqlite, on_redis, raw_redis, embedded_stub)


def _figures(*series: dict[str, list[int]]) -> list[Figure]:
    labels = (
        "embedded (SDK -> sidecar -> SQLite)",
        "raw SQLite",
        "redis (SDK -> sidecar -> Redis)",
        "raw redis-py",
        "embedded, raw grpc.aio DaprStub (no SDK)",
    )
    p50 = [{op: percentiles_ms(s[op])["p50"] for op in ("save", "get")} for s in series]
    figures = []
    for op in ("get", "save"):
        figures.append(
            Figure(f"{op} p50 {labels[0]}", p50[0][op], "ms", "<= 0.6 ms", p50[0][op] <= TARGET_MS)
        )
        figures.append(Figure(f"{op} p90 {labels[0]}", percentiles_ms(series[0][op])["p90"], "ms"))
        figures += [
            Figure(f"{op} p50 {label}", p[op], "ms") for label, p in zip(labels[1:], p50[1:], strict=True)
        ]
        figures.append(Figure(f"{op} overhead ratio embedded/raw SQLite", p50[0][op] / p50[1][op], "x"))
        figures.append(Figure(f"{op} SDK share: SDK/raw stub (embedded)", p50[0][op] / p50[4][op], "x"))
        figures.append(Figure(f"{op} overhead ratio redis/raw redis-py", p50[2][op] / p50[3][op], "x"))
    return figures


if __name__ == "__main__":
    report("state get/save", run())
