"""Dapr `state.in-memory`: the same ETag, first-write, TTL and transaction rules, in one sidecar's memory.

As in Dapr (`state/in-memory`), the data lives in the sidecar process only: other sidecars never see
it and a restart loses it. Useful for tests and demos that need no files and no server. Operations
never await while they touch the data, so each one (and each transaction) is atomic on the event loop.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from chassis.sidecar._errors import ComponentError, EtagMismatch
from chassis.sidecar.components import BatchWriteStore, Driver, StateItem, TxOp
from chassis.sidecar.components._common import check_key_prefix, key_prefix, prefixed

__all__ = ["DRIVER", "InMemoryStateStore"]


@dataclass(frozen=True)
class Entry:
    """One stored value under its full (prefixed) key."""

    value: bytes
    etag: str
    expire_time: datetime | None

    def live(self, now: datetime) -> bool:
        return self.expire_time is None or self.expire_time > now


def check_metadata(metadata: Mapping[str, str]) -> None:
    """Validate the metadata values this driver reads (raises InvalidMetadata)."""
    check_key_prefix(metadata)


class InMemoryStateStore(BatchWriteStore):
    """A dict of entries by full key; `entries` is public so tests can look underneath."""

    def __init__(
        self, name: str, metadata: Mapping[str, str], *, app_id: str, base_dir: Path, namespace: str = ""
    ) -> None:
        check_metadata(metadata)
        self.name = name
        self._prefix = key_prefix(metadata, store_name=name, app_id=app_id, namespace=namespace)
        self.entries: dict[str, Entry] = {}
        self._closed = False

    @classmethod
    async def open(
        cls, name: str, metadata: Mapping[str, str], *, app_id: str, base_dir: Path, namespace: str = ""
    ) -> InMemoryStateStore:
        """A new, empty store."""
        return cls(name, metadata, app_id=app_id, base_dir=base_dir, namespace=namespace)

    def _full_key(self, key: str) -> str:
        if self._closed:
            raise ComponentError(f"{self.name}: store is closed")
        return prefixed(self._prefix, key)

    async def get(self, key: str) -> StateItem | None:
        """The live value of `key`, or None when missing or expired."""
        entry = self.entries.get(self._full_key(key))
        if entry is None or not entry.live(datetime.now(UTC)):
            return None
        return StateItem(key=key, value=entry.value, etag=entry.etag, expire_time=entry.expire_time)

    async def write(self, ops: Sequence[TxOp]) -> list[str]:
        """Work on a copy and swap it in at the end, so a failing operation leaves nothing behind."""
        prepared = [(op, self._full_key(op.key), _expiry(op)) for op in ops]
        now = datetime.now(UTC)
        entries = dict(self.entries)
        etags: list[str] = []
        for op, full_key, expire_time in prepared:
            _check_etag(entries.get(full_key), op, full_key, now)
            if op.kind == "delete":
                entries.pop(full_key, None)
            else:
                etag = str(uuid.uuid4())
                entries[full_key] = Entry(op.value, etag, expire_time)
                etags.append(etag)
        # Expired entries are dropped here rather than by a timer: reads already hide them.
        self.entries = {key: entry for key, entry in entries.items() if entry.live(now)}
        return etags

    async def close(self) -> None:
        """Refuse further calls (the data stays with the object, as nothing else can reach it)."""
        self._closed = True


def _expiry(op: TxOp) -> datetime | None:
    """When an upsert expires; None to persist (no TTL, 0 and -1, as in Dapr)."""
    ttl = op.ttl_seconds
    if op.kind == "delete" or ttl is None or ttl in (0, -1):
        return None
    if ttl < -1:
        raise ComponentError(f"incorrect value for metadata 'ttlInSeconds': {ttl}")
    return datetime.now(UTC) + timedelta(seconds=ttl)


def _check_etag(entry: Entry | None, op: TxOp, full_key: str, now: datetime) -> None:
    """components-contrib's doValidateEtag: an expired entry counts as missing."""
    exists = entry is not None and entry.live(now)
    if not op.etag:
        if op.first_write and exists:
            raise EtagMismatch(f"possible etag mismatch: key {full_key!r} already exists (first-write)")
        return
    if entry is None or not exists:
        raise EtagMismatch(f"possible etag mismatch: key {full_key!r} does not exist")
    if entry.etag != op.etag:
        raise EtagMismatch(f"possible etag mismatch: key {full_key!r} has a different etag")


DRIVER = Driver(
    kind="state",
    versions=("v1",),
    required=(),
    check=check_metadata,
    open=InMemoryStateStore.open,
    capabilities=("ETAG", "TRANSACTIONAL", "TTL"),
    shared_across_processes=False,
)
