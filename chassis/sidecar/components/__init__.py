"""The component interfaces every sidecar driver implements (one module per Dapr type, same shape)."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol, runtime_checkable

__all__ = [
    "BatchWriteStore",
    "BindingCallback",
    "Driver",
    "InputBinding",
    "Message",
    "OutputBinding",
    "PubSub",
    "SecretStore",
    "StateItem",
    "StateStore",
    "TxOp",
    "meta_get",
    "parse_duration",
]


@dataclass(frozen=True)
class StateItem:
    """One stored state value; `key` is the caller's key (without the store's prefix)."""

    key: str
    value: bytes
    etag: str
    expire_time: datetime | None  # UTC


@dataclass(frozen=True)
class TxOp:
    """One operation of a state transaction (Dapr's TransactionalStateOperation)."""

    kind: Literal["upsert", "delete"]
    key: str
    value: bytes = b""
    etag: str | None = None
    first_write: bool = False
    ttl_seconds: int | None = None
    # The request's metadata (for the sidecar, e.g. the outbox's `outbox.projection`); drivers ignore it.
    metadata: tuple[tuple[str, str], ...] = ()


class StateStore(Protocol):
    """A transactional key/value store with ETags and TTL (Dapr state building block)."""

    name: str

    async def get(self, key: str) -> StateItem | None: ...

    async def set(
        self,
        key: str,
        value: bytes,
        *,
        etag: str | None = None,
        first_write: bool = False,
        ttl_seconds: int | None = None,
    ) -> str: ...

    async def delete(self, key: str, *, etag: str | None = None, first_write: bool = False) -> None: ...

    async def transact(self, ops: Sequence[TxOp]) -> None: ...

    async def close(self) -> None: ...


class BatchWriteStore(ABC):
    """`set`, `delete` and `transact` as one write path: a batch of operations applied all or nothing.

    A store implements `write` once (ETag rules, TTL, atomicity) and inherits the three entry points.
    """

    @abstractmethod
    async def write(self, ops: Sequence[TxOp]) -> list[str]:
        """Apply `ops` atomically; the new ETag of each operation (in order)."""

    async def set(
        self,
        key: str,
        value: bytes,
        *,
        etag: str | None = None,
        first_write: bool = False,
        ttl_seconds: int | None = None,
    ) -> str:
        """Upsert `key` under the ETag rules; returns the new ETag."""
        op = TxOp("upsert", key, value, etag=etag, first_write=first_write, ttl_seconds=ttl_seconds)
        return (await self.write([op]))[0]

    async def delete(self, key: str, *, etag: str | None = None, first_write: bool = False) -> None:
        """Delete `key` under the ETag rules; deleting a missing key without an ETag is a no-op."""
        await self.write([TxOp("delete", key, etag=etag, first_write=first_write)])

    async def transact(self, ops: Sequence[TxOp]) -> None:
        """Apply every operation or none; EtagMismatch if any ETag check fails."""
        await self.write(ops)


@dataclass(frozen=True)
class Message:
    """A message leased to one consumer group; `attempts` counts deliveries including this one."""

    seq: int
    topic: str
    data: bytes  # the CloudEvent JSON bytes, exactly as published
    metadata: dict[str, str]
    attempts: int


class PubSub(Protocol):
    """A durable broker with consumer groups, leases and delayed redelivery."""

    name: str

    async def publish(self, topic: str, data: bytes, metadata: Mapping[str, str]) -> None: ...

    async def subscribe(self, group: str, topic: str) -> None: ...

    async def claim(self, group: str, limit: int) -> list[Message]: ...

    async def ack(self, group: str, message: Message) -> None: ...

    async def retry(self, group: str, message: Message, delay: float) -> None: ...

    # A plain float (not asyncio.timeout) because "return early" is the point, not an error.
    async def wait(self, timeout: float) -> None: ...  # noqa: ASYNC109

    async def close(self) -> None: ...


# An input binding hands each event to this; True = the app took it (daprd's 200 / no error).
BindingCallback = Callable[[bytes, dict[str, str]], Awaitable[bool]]


@runtime_checkable
class OutputBinding(Protocol):
    """An output binding (Dapr's bindings.OutputBinding): `invoke` one of its operations."""

    name: str
    operations: tuple[str, ...]

    async def invoke(
        self, operation: str, data: bytes, metadata: Mapping[str, str]
    ) -> tuple[bytes, dict[str, str]]: ...

    async def close(self) -> None: ...


@runtime_checkable
class InputBinding(Protocol):
    """An input binding (Dapr's bindings.InputBinding): events flow to `callback` between start and stop."""

    name: str

    async def start(self, callback: BindingCallback) -> None: ...

    async def stop(self) -> None: ...

    async def close(self) -> None: ...


class SecretStore(Protocol):
    """A secret store: one secret is a small map of key -> value (Dapr's GetSecret/BulkGetSecret)."""

    name: str

    async def get(self, key: str, metadata: Mapping[str, str]) -> dict[str, str]: ...  # KeyError: none

    async def bulk(self, metadata: Mapping[str, str]) -> dict[str, dict[str, str]]: ...

    async def close(self) -> None: ...


Component = StateStore | PubSub | OutputBinding | InputBinding | SecretStore


@dataclass(frozen=True)
class Driver:
    """How the resource loader validates and opens one component type.

    `check(metadata)` raises InvalidMetadata for a bad value (called when the YAML is loaded, so
    errors show before anything opens). `open(name, metadata, app_id=..., base_dir=...)` returns the
    ready component.
    """

    kind: Literal["state", "pubsub", "bindings", "secretstores"]
    versions: tuple[str, ...]
    required: tuple[str, ...]
    check: Callable[[Mapping[str, str]], None]
    open: Callable[..., Awaitable[Component]]
    # What the Metadata API reports for components of this type (Dapr's feature names).
    capabilities: tuple[str, ...] = ()
    # False when the data lives in one sidecar process only (state.in-memory): two opened instances
    # never see each other's writes, so cross-process guarantees cannot be tested or relied on.
    shared_across_processes: bool = True


def meta_get(metadata: Mapping[str, str], field: str, default: str = "") -> str:
    """Look a metadata field up case-insensitively, as Dapr's metadata decoder does."""
    wanted = field.lower()
    for key, value in metadata.items():
        if key.lower() == wanted:
            return value
    return default


_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(text: str) -> float:
    """Parse a Go duration ("15s", "100ms", "1m30s", "-2h") into seconds.

    Like Dapr's metadata decoder, a bare integer means seconds. Raises ValueError saying why.
    """
    value = text.strip()
    if re.fullmatch(r"[-+]?\d+", value):
        return float(int(value))
    sign, body = (-1.0, value[1:]) if value[:1] == "-" else (1.0, value.removeprefix("+"))
    if body == "":
        raise ValueError(f"invalid duration {text!r}: empty (use e.g. 15s, 100ms, 1m30s)")
    total, pos = 0.0, 0
    for match in _DURATION_PART.finditer(body):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(body):
        raise ValueError(
            f"invalid duration {text!r}: expected numbers with units ns, us, ms, s, m, h"
            " (e.g. 15s, 100ms, 1m30s)"
        )
    return sign * total
