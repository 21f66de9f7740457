"""The Redis connection both Redis drivers open, from Dapr's common Redis metadata.

Reads `redisHost` (host:port), `redisUsername`, `redisPassword`, `redisDB`, `maxRetries` and
`maxRetryBackoff`; options this sidecar
cannot honour (TLS, Sentinel failover, cluster mode) are rejected instead of silently ignored.
Every redis-py error becomes a ComponentError, so the API servers map it like any driver failure.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError
from redis.maint_notifications import MaintNotificationsConfig

from chassis.sidecar._errors import ComponentError, InvalidMetadata
from chassis.sidecar.components import meta_get
from chassis.sidecar.components._common import positive_duration

__all__ = ["check_connection", "connect", "ping", "redis_errors"]

# daprd's dialTimeout default: fail the start quickly when nothing listens.
CONNECT_TIMEOUT = 5.0
# Dapr's Redis defaults (maxRetries, maxRetryBackoff) and go-redis' first back-off step.
DEFAULT_MAX_RETRIES = 3
DEFAULT_MAX_RETRY_BACKOFF = 2.0
MIN_RETRY_BACKOFF = 0.008
# metadata value that would change what the connection means -> why we cannot honour it.
_UNSUPPORTED = {
    ("enableTLS", "true"): "TLS connections to Redis are not supported by the embedded sidecar",
    ("failover", "true"): "Redis Sentinel failover is not supported by the embedded sidecar",
    ("redisType", "cluster"): "Redis cluster mode is not supported by the embedded sidecar",
}


def _address(metadata: Mapping[str, str]) -> tuple[str, int]:
    text = meta_get(metadata, "redisHost").strip()
    host, _, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")  # [::1]:6379
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidMetadata("redisHost", f"expected host:port (e.g. localhost:6379), got {text!r}")
    return host, int(port)


def _database(metadata: Mapping[str, str]) -> int:
    text = meta_get(metadata, "redisDB", "0").strip() or "0"
    if not text.isdigit():
        raise InvalidMetadata("redisDB", f"must be a database number (0, 1, ...), got {text!r}")
    return int(text)


def _retry(metadata: Mapping[str, str]) -> Retry:
    """Reconnect attempts on connection errors; `maxRetries: -1` disables them, as in go-redis."""
    text = meta_get(metadata, "maxRetries").strip()
    if text and not (text.isdigit() or text == "-1"):
        raise InvalidMetadata("maxRetries", f"must be a whole number or -1, got {text!r}")
    retries = max(int(text), 0) if text else DEFAULT_MAX_RETRIES
    cap = positive_duration(metadata, "maxRetryBackoff", DEFAULT_MAX_RETRY_BACKOFF)
    return Retry(ExponentialBackoff(cap=cap, base=MIN_RETRY_BACKOFF), retries)


def check_connection(metadata: Mapping[str, str]) -> None:
    """Validate the connection metadata (raises InvalidMetadata)."""
    for (field, value), why in _UNSUPPORTED.items():
        if meta_get(metadata, field).strip().lower() == value.lower():
            raise InvalidMetadata(field, f"{value!r} is not supported: {why}")
    _address(metadata)
    _database(metadata)
    _retry(metadata)


def connect(metadata: Mapping[str, str]) -> redis.asyncio.Redis:
    """A client for the metadata's server; nothing is sent until the first command."""
    check_connection(metadata)
    host, port = _address(metadata)
    return redis.asyncio.Redis(
        host=host,
        port=port,
        db=_database(metadata),
        username=meta_get(metadata, "redisUsername") or None,
        password=meta_get(metadata, "redisPassword") or None,
        socket_connect_timeout=CONNECT_TIMEOUT,
        retry=_retry(metadata),
        # A plain Redis server has no maintenance push notifications: skip the probe per connection.
        maint_notifications_config=MaintNotificationsConfig(enabled=False),
    )


async def ping(client: redis.asyncio.Redis, label: str, metadata: Mapping[str, str]) -> None:
    """Fail the component's start with one line when the server cannot be used (as daprd's Init)."""
    try:
        await client.ping()
    except RedisError as exc:
        where = meta_get(metadata, "redisHost")
        raise ComponentError(f"{label}: error connecting to redis at {where}: {exc}") from None


@contextmanager
def redis_errors(label: str) -> Iterator[None]:
    """Turn redis-py errors into ComponentError naming the component."""
    try:
        yield
    except RedisError as exc:
        raise ComponentError(f"{label}: redis: {exc}") from exc
