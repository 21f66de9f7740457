"""Typed state: protobuf messages or pydantic models stored as JSON through the Dapr state API, with ETags.

ETag conflicts surface as `ConcurrencyError`; `update` turns read-modify-write into a bounded retry
loop so callers never write a conflict loop by hand.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Generic, TypeVar

import grpc
from dapr.aio.clients import DaprClient
from dapr.clients.grpc._state import Concurrency, StateOptions
from dapr.proto import api_v1, common_v1
from google.protobuf import json_format
from google.protobuf.message import Message
from pydantic import BaseModel, ValidationError

from chassis._dapr import Dapr
from chassis._errors import ConcurrencyError, StateError
from chassis._events import message_from_json, message_to_json
from chassis._resilience import grpc_code_of

M = TypeVar("M", bound=Message | BaseModel)


@dataclass(frozen=True)
class Versioned(Generic[M]):
    """A stored value and the ETag to send back when writing it."""

    value: M
    etag: str


@dataclass(frozen=True)
class Upsert:
    """Write `value` under `key` in a transaction (etag: only if unchanged; first_write: only if absent)."""

    key: str
    value: Message | BaseModel
    etag: str | None = None
    first_write: bool = False
    ttl_seconds: int | None = None


@dataclass(frozen=True)
class Delete:
    """Remove `key` in a transaction (etag: only if unchanged)."""

    key: str
    etag: str | None = None


class StateRepository(Generic[M]):
    """The records of one message type in one state store."""

    def __init__(self, dapr: Dapr, model: type[M], store: str) -> None:
        self._dapr = dapr
        self._model = model
        self._store = store

    async def get(self, key: str) -> Versioned[M] | None:
        """The record and its ETag, or None when the key holds nothing."""
        with self._errors(key):
            response = await self._dapr.call(
                lambda c: c.get_state(store_name=self._store, key=key), component=self._store
            )
        return self._versioned(key, response.data, response.etag) if response.data else None

    async def get_many(self, keys: Sequence[str]) -> dict[str, Versioned[M]]:
        """The records of `keys` that exist, by key, read in one bulk call."""
        if not keys:
            return {}
        with self._errors(", ".join(keys)):
            response = await self._dapr.call(
                lambda c: c.get_bulk_state(store_name=self._store, keys=list(keys), parallelism=4),
                component=self._store,
            )
        found: dict[str, Versioned[M]] = {}
        for item in response.items:
            if item.error:
                raise StateError(f"state {item.key!r} in {self._store!r} could not be read: {item.error}")
            if item.data:
                found[item.key] = self._versioned(item.key, item.data, item.etag)
        return found

    def _versioned(self, key: str, data: bytes | str, etag: str) -> Versioned[M]:
        try:
            return Versioned(decode(data, self._model), etag)
        except (json_format.ParseError, ValidationError, UnicodeDecodeError) as err:
            raise StateError(
                f"state {key!r} in {self._store!r} is not a {self._model.__name__}: {err}"
            ) from err

    async def save(
        self,
        key: str,
        value: M,
        *,
        etag: str | None = None,
        first_write: bool = False,
        ttl_seconds: int | None = None,
    ) -> None:
        """Write `value`; with `etag` only if unchanged since read, with `first_write` only if absent;
        with `ttl_seconds` the store forgets it after that long."""

        async def save(client: DaprClient) -> object:
            return await client.save_state(
                store_name=self._store,
                key=key,
                value=encode(value),
                etag=etag,
                options=_options(first_write),
                state_metadata=_ttl(ttl_seconds),
            )

        with self._errors(key):
            await self._dapr.call(save, component=self._store)

    async def delete(self, key: str, *, etag: str | None = None) -> None:
        """Remove `key` (with `etag`: only if unchanged since read)."""
        with self._errors(key):
            await self._dapr.call(
                lambda c: c.delete_state(store_name=self._store, key=key, etag=etag), component=self._store
            )

    @property
    def store(self) -> str:
        """The state store component the records live in."""
        return self._store

    async def transact(self, ops: Sequence[Upsert | Delete]) -> None:
        """Apply all `ops` atomically, or none of them (any ETag mismatch -> ConcurrencyError)."""
        await execute_transaction(self._dapr, self._store, [operation(op) for op in ops])

    async def update(self, key: str, fn: Callable[[M | None], M], *, attempts: int = 5) -> M:
        """Read, apply `fn` (None when absent), write back with the ETag; retry on conflict.

        `fn` may run more than once, so it must not have side effects. Raises ConcurrencyError when
        every attempt lost the race.
        """
        for attempt in range(1, attempts + 1):
            current = await self.get(key)
            new_value = fn(current.value if current else None)
            try:
                if current is None:
                    await self.save(key, new_value, first_write=True)
                else:
                    await self.save(key, new_value, etag=current.etag)
                return new_value
            except ConcurrencyError:
                if attempt == attempts:
                    raise
        raise AssertionError("unreachable: attempts must be >= 1")

    def _errors(self, key: str) -> AbstractContextManager[None]:
        return _state_errors(self._store, key)


@contextmanager
def _state_errors(store: str, key: str) -> Iterator[None]:
    """Maps sidecar errors to the chassis tree: ABORTED -> ConcurrencyError, the rest -> StateError."""
    try:
        yield
    except StateError:
        raise
    except Exception as exc:
        code = grpc_code_of(exc)
        if code == grpc.StatusCode.ABORTED:
            raise ConcurrencyError(
                f"state {key!r} in {store!r} changed since it was read (ETag mismatch or already exists)"
            ) from exc
        raise StateError(f"state store {store!r} failed on {key!r}: {code}: {exc}") from exc


def encode(value: Message | BaseModel) -> str:
    """The stored JSON form: proto field names for messages, the model's own JSON for pydantic."""
    return value.model_dump_json() if isinstance(value, BaseModel) else message_to_json(value)


def decode(data: bytes | str, model: type[M]) -> M:
    """Parse a stored record (raises ParseError / ValidationError when it is not one)."""
    if issubclass(model, BaseModel):
        return model.model_validate_json(data)
    return message_from_json(data, model)


def _ttl(ttl_seconds: int | None) -> dict[str, str]:
    if ttl_seconds is None:
        return {}
    if ttl_seconds <= 0:
        raise StateError(f"ttl_seconds must be positive, got {ttl_seconds}")
    return {"ttlInSeconds": str(ttl_seconds)}


def _options(first_write: bool) -> StateOptions | None:
    return StateOptions(concurrency=Concurrency.first_write) if first_write else None


async def execute_transaction(
    dapr: Dapr, store: str, operations: Sequence[api_v1.TransactionalStateOperation]
) -> None:
    """One ExecuteStateTransaction: all operations or none (ETag mismatch -> ConcurrencyError)."""
    request = api_v1.ExecuteStateTransactionRequest(storeName=store, operations=operations)

    async def execute(client: DaprClient) -> object:
        # The SDK's execute_state_transaction cannot carry per-operation options (first-write),
        # so the request is built here and sent on the SDK client's own stub and channel.
        return await client._stub.ExecuteStateTransaction(request)

    with _state_errors(store, ", ".join(op.request.key for op in operations)):
        await dapr.call(execute, component=store)


def operation(op: Upsert | Delete) -> api_v1.TransactionalStateOperation:
    """The transaction operation of one Upsert or Delete."""
    if isinstance(op, Delete):
        item = common_v1.StateItem(key=op.key, etag=_etag(op.etag))
        return api_v1.TransactionalStateOperation(operationType="delete", request=item)
    item = common_v1.StateItem(
        key=op.key, value=encode(op.value).encode(), etag=_etag(op.etag), metadata=_ttl(op.ttl_seconds)
    )
    if op.first_write:
        item.options.concurrency = common_v1.StateOptions.CONCURRENCY_FIRST_WRITE
    return api_v1.TransactionalStateOperation(operationType="upsert", request=item)


def _etag(value: str | None) -> common_v1.Etag | None:
    return common_v1.Etag(value=value) if value is not None else None
