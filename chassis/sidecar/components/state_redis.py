"""Dapr `state.redis`: ETags, first-write, TTL and atomic transactions on a real Redis server.

The layout is Dapr's: one hash per key with fields `data` (the value's bytes) and `version`, and the
ETag is that version as text ("1" on the first save, then "2", ...). Every write runs as one Lua
script that checks all ETags before it writes anything, so a transaction is all or nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from chassis.sidecar._errors import ComponentError, EtagInvalid, EtagMismatch, InvalidMetadata
from chassis.sidecar.components import BatchWriteStore, Driver, StateItem, TxOp, meta_get
from chassis.sidecar.components._common import check_key_prefix, key_prefix, prefixed
from chassis.sidecar.components._redis import check_connection, connect, ping, redis_errors

__all__ = ["DRIVER", "RedisStateStore"]

# KEYS: one per operation; ARGV: five per operation: kind, etag ('' = none), first-write
# ('1'/'0'), value, ttl (seconds, '0' = persist). Pass 1 replays the operations on the versions
# they would leave behind (so a later operation on the same key sees the earlier one, as in a SQL
# transaction) and fails before any write; pass 2 writes. A key holding another type (not a hash)
# counts as missing and is replaced, as Dapr's script does.
_APPLY = """
local versions = {}
local function current(key)
  if versions[key] == nil then
    versions[key] = false
    if redis.call('TYPE', key).ok == 'hash' then
      versions[key] = tonumber(redis.call('HGET', key, 'version')) or false
    end
  end
  return versions[key]
end
for i, key in ipairs(KEYS) do
  local at = (i - 1) * 5
  local version = current(key)
  if ARGV[at + 2] ~= '' then
    if not version then return {'missing', i} end
    if tostring(version) ~= ARGV[at + 2] then return {'stale', i} end
  elseif ARGV[at + 3] == '1' and version then
    return {'exists', i}
  end
  if ARGV[at + 1] == 'upsert' then versions[key] = (version or 0) + 1 else versions[key] = false end
end
local etags = {}
for i, key in ipairs(KEYS) do
  local at = (i - 1) * 5
  if ARGV[at + 1] == 'delete' then
    redis.call('DEL', key)
  else
    if redis.call('TYPE', key).ok ~= 'hash' then redis.call('DEL', key) end
    redis.call('HSET', key, 'data', ARGV[at + 4])
    etags[#etags + 1] = tostring(redis.call('HINCRBY', key, 'version', 1))
    local ttl = tonumber(ARGV[at + 5])
    if ttl > 0 then redis.call('EXPIRE', key, ttl) else redis.call('PERSIST', key) end
  end
end
return {'ok', etags}
"""
_MISMATCH = {
    b"missing": "does not exist",
    b"stale": "has a different etag",
    b"exists": "already exists (first-write)",
}


def _ttl_setting(text: str) -> int | None:
    """The store-wide default TTL from `ttlInSeconds` metadata; None when unset."""
    if not text:
        return None
    try:
        ttl = int(text)
    except ValueError:
        raise InvalidMetadata("ttlInSeconds", f"must be an integer number of seconds, got {text!r}") from None
    if ttl < -1:
        raise InvalidMetadata("ttlInSeconds", f"must be -1 or more, got {text!r}")
    return ttl


def check_metadata(metadata: Mapping[str, str]) -> None:
    """Validate the metadata values this driver reads (raises InvalidMetadata)."""
    if not meta_get(metadata, "redisHost"):
        raise InvalidMetadata("redisHost", "must not be empty")
    check_connection(metadata)
    check_key_prefix(metadata)
    _ttl_setting(meta_get(metadata, "ttlInSeconds"))


def _etag_arg(etag: str | None) -> str:
    """Redis ETags are integers; anything else is malformed (Dapr's ETagInvalid), not a mismatch."""
    if not etag:
        return ""
    try:
        return str(int(etag))
    except ValueError:
        raise EtagInvalid(f"invalid etag value {etag!r}: the redis store uses integer etags") from None


class RedisStateStore(BatchWriteStore):
    """A state store in one Redis database; keys are `<prefix><key>` hashes."""

    def __init__(
        self, name: str, metadata: Mapping[str, str], *, app_id: str, base_dir: Path, namespace: str = ""
    ) -> None:
        check_metadata(metadata)
        self.name = name
        self._metadata = dict(metadata)
        self._prefix = key_prefix(metadata, store_name=name, app_id=app_id, namespace=namespace)
        self._default_ttl = _ttl_setting(meta_get(metadata, "ttlInSeconds"))
        self._client = connect(metadata)
        self._apply_script = self._client.register_script(_APPLY)
        self._closed = False

    @classmethod
    async def open(
        cls, name: str, metadata: Mapping[str, str], *, app_id: str, base_dir: Path, namespace: str = ""
    ) -> RedisStateStore:
        """Connect and check the server answers; raise ComponentError if it does not."""
        store = cls(name, metadata, app_id=app_id, base_dir=base_dir, namespace=namespace)
        try:
            await ping(store._client, name, store._metadata)
        except BaseException:
            await store.close()
            raise
        return store

    def _full_key(self, key: str) -> str:
        if self._closed:
            # redis-py would silently reconnect; a closed store must fail like the SQLite one.
            raise ComponentError(f"{self.name}: store is closed")
        return prefixed(self._prefix, key)

    async def get(self, key: str) -> StateItem | None:
        """The live value of `key` (Redis drops expired keys itself), or None."""
        full_key = self._full_key(key)
        with redis_errors(self.name):
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hgetall(full_key)
                pipe.pttl(full_key)
                fields, ttl_ms = await pipe.execute()
        if not fields:
            return None
        if b"data" not in fields or b"version" not in fields:
            raise ComponentError(f"{self.name}: required hash field 'data' or 'version' was not found")
        expire = datetime.now(UTC) + timedelta(milliseconds=ttl_ms) if ttl_ms > 0 else None
        return StateItem(key=key, value=fields[b"data"], etag=fields[b"version"].decode(), expire_time=expire)

    async def write(self, ops: Sequence[TxOp]) -> list[str]:
        """Run the write script; everything is validated first, so a bad operation writes nothing."""
        keys = [self._full_key(op.key) for op in ops]
        args: list[str | bytes] = []
        for op in ops:
            args += [op.kind, _etag_arg(op.etag), "1" if op.first_write else "0", op.value, self._ttl(op)]
        if not keys:
            return []
        with redis_errors(self.name):
            status, detail = await self._apply_script(keys=keys, args=args)
        if status != b"ok":
            key = keys[int(detail) - 1]
            raise EtagMismatch(f"possible etag mismatch: key {key!r} {_MISMATCH[status]}")
        return [etag.decode() for etag in detail]

    def _ttl(self, op: TxOp) -> str:
        """Seconds for EXPIRE, or '0' to PERSIST (no TTL, 0 and -1 all persist, as in Dapr)."""
        if op.kind == "delete":
            return "0"
        ttl = op.ttl_seconds if op.ttl_seconds is not None else self._default_ttl
        if ttl is not None and ttl < -1:
            raise ComponentError(f"incorrect value for metadata 'ttlInSeconds': {ttl}")
        return str(max(ttl or 0, 0))

    async def close(self) -> None:
        """Close the connection pool (idempotent)."""
        self._closed = True
        await self._client.aclose()


DRIVER = Driver(
    kind="state",
    versions=("v1",),
    required=("redisHost",),
    check=check_metadata,
    open=RedisStateStore.open,
    capabilities=("ETAG", "TRANSACTIONAL", "TTL"),
)
