"""Helpers for tests against the real Redis on 127.0.0.1:6379: the server check, names, cleanup.

Several test runs may share the server at once, so every test names its keys and streams with a
fresh uuid and deletes exactly those keys at the end.
"""

from __future__ import annotations

import uuid

import redis
import redis.asyncio

from chassis.testing import requires_server

HOST, PORT = "127.0.0.1", 6379
REDIS_HOST = f"{HOST}:{PORT}"
START_REDIS = (
    'redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no'
    " --dir /var/lib/redis --logfile /var/log/redis/ci.log"
)


def require_redis() -> None:
    """Skip the test with one line when Redis is down (fail under CI=true)."""
    requires_server("Redis", HOST, PORT, START_REDIS)


def unique(label: str = "t") -> str:
    """A name no other test (or test run) uses."""
    return f"{label}-{uuid.uuid4().hex[:12]}"


def client(db: int = 0) -> redis.asyncio.Redis:
    """A raw client, for looking at what the drivers stored."""
    return redis.asyncio.Redis(host=HOST, port=PORT, db=db)


async def keys_containing(raw: redis.asyncio.Redis, marker: str) -> list[str]:
    """Every key whose name contains `marker`, sorted."""
    return sorted([key.decode() async for key in raw.scan_iter(match=f"*{marker}*", count=1000)])


def delete_containing(marker: str, db: int = 0) -> None:
    """Remove the keys (state hashes, streams) a test created; usable from any fixture."""
    with redis.Redis(host=HOST, port=PORT, db=db) as raw:
        if found := list(raw.scan_iter(match=f"*{marker}*", count=1000)):
            raw.delete(*found)
