"""A unit of work: state changes in one store and the events they cause, committed together or not at all.

It rides on Dapr's transactional outbox. The store's component enables it (`outboxPublishPubsub`,
`outboxPublishTopic`); the sidecar then publishes one event per saved record once the transaction
commits, and none if it fails. Each event here is the projection (`outbox.projection`) of the change
of one saved record, so subscribers get the declared event, not the stored record. Because Dapr
publishes every record a transaction saves in such a store, a unit of work that publishes must give
each record it saves its event.

Before its first commit a service checks, once per store, that the outbox is really enabled: a
transaction holding only a projection fails on an outbox store and is stored as plain state anywhere
else, which would silently drop every event.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from dapr.proto import api_v1, common_v1
from google.protobuf.message import Message
from pydantic import BaseModel

from chassis._dapr import Dapr
from chassis._errors import ConfigError, ContractError, StateError
from chassis._events import JSON_CONTENT_TYPE, event_to_json
from chassis._pubsub import Publisher
from chassis._state import Delete, StateRepository, Upsert, execute_transaction, operation
from chassis._telemetry import current_traceparent

M = TypeVar("M", bound=Message)
R = TypeVar("R", bound=Message | BaseModel)

PROJECTION = "outbox.projection"
_PROBE_PREFIX = "chassis-outbox-probe-"


class UnitOfWork:
    """Collects saves, deletes and events for one store; `commit` applies them in one transaction."""

    def __init__(
        self,
        dapr: Dapr,
        store: str,
        verified: set[str],
        *,
        event_ids: Callable[[str], str] | None = None,
    ) -> None:
        self.store = store
        self._dapr = dapr
        self._verified = verified  # stores already known to have the outbox enabled (per service)
        # The id of an event published without one, from the key it is for (default: a new uuid4).
        self._event_ids = event_ids or (lambda _key: str(uuid.uuid4()))
        self._changes: list[Upsert | Delete] = []
        self._events: dict[str, api_v1.TransactionalStateOperation] = {}  # saved key -> its projection
        self._committed = False

    def save(
        self,
        records: StateRepository[R],
        key: str,
        value: R,
        *,
        etag: str | None = None,
        first_write: bool = False,
        ttl_seconds: int | None = None,
    ) -> None:
        """Save `value` under `key` when the unit commits (same rules as `StateRepository.save`)."""
        self._check_store(records)
        self._changes.append(Upsert(key, value, etag, first_write, ttl_seconds))

    def delete(self, records: StateRepository[Any], key: str, *, etag: str | None = None) -> None:
        """Delete `key` when the unit commits."""
        self._check_store(records)
        self._changes.append(Delete(key, etag))

    def publish(
        self,
        publisher: Publisher[M],
        event: M,
        *,
        for_key: str,
        event_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> str:
        """Publish `event` as the consequence of saving `for_key` in this unit; returns the event id.

        It goes to the store's outbox topic, which must be the publisher's declared topic.
        """
        if not any(isinstance(c, Upsert) and c.key == for_key for c in self._changes):
            raise ContractError(f"publish(for_key={for_key!r}): save {for_key!r} in this unit of work first")
        if for_key in self._events:
            raise ContractError(f"the change of {for_key!r} already has an event: one event per saved record")
        event_id = event_id or self._event_ids(for_key)
        fields = {
            **(metadata or {}),
            PROJECTION: "true",
            "cloudevent.id": event_id,
            "cloudevent.type": publisher.event_type,
            "contentType": JSON_CONTENT_TYPE,
        }
        if traceparent := current_traceparent():
            fields["cloudevent.traceparent"] = traceparent
        item = common_v1.StateItem(key=for_key, value=event_to_json(event).encode(), metadata=fields)
        self._events[for_key] = api_v1.TransactionalStateOperation(operationType="upsert", request=item)
        return event_id

    @property
    def publishes(self) -> bool:
        """Whether committing publishes events (so the store must be an outbox store)."""
        return bool(self._events)

    @property
    def changes(self) -> tuple[Upsert | Delete, ...]:
        """The saves and deletes collected so far, in order."""
        return tuple(self._changes)

    async def on_outbox_store(self, plain: set[str]) -> bool:
        """Whether the store publishes every record a transaction saves (probed once; `plain` caches no)."""
        if self.store in self._verified:
            return True
        if self.store in plain:
            return False
        if await self._probe_outbox():
            return True
        plain.add(self.store)
        return False

    async def commit(self) -> None:
        """Apply every change and publish every event, or nothing (ETag conflicts: ConcurrencyError)."""
        if self._committed:
            raise ContractError("this unit of work was committed already: start a new one")
        self._committed = True
        if self._events:
            self._check_every_save_has_its_event()
            await self._verify_outbox()
        operations = [operation(change) for change in self._changes] + list(self._events.values())
        if operations:
            await execute_transaction(self._dapr, self.store, operations)

    def _check_store(self, records: StateRepository[Any]) -> None:
        if records.store != self.store:
            raise ContractError(
                f"a unit of work on {self.store!r} cannot change records in {records.store!r}: "
                "one transaction spans one state store"
            )

    def _check_every_save_has_its_event(self) -> None:
        silent = [c.key for c in self._changes if isinstance(c, Upsert) and c.key not in self._events]
        if silent:
            raise ContractError(
                f"{', '.join(map(repr, silent))} saved without an event: the outbox publishes every "
                "record a transaction saves, so give each its event (publish(..., for_key=...))"
            )

    async def _verify_outbox(self) -> None:
        if self.store in self._verified or await self._probe_outbox():
            return
        raise ConfigError(
            f"state store {self.store!r} does not enable Dapr's transactional outbox: set "
            "outboxPublishPubsub and outboxPublishTopic in its component, or events would be lost"
        )

    async def _probe_outbox(self) -> bool:
        """Send a lone projection: an outbox store refuses it, any other store keeps it (removed again)."""
        probe = f"{_PROBE_PREFIX}{uuid.uuid4()}"
        lone = common_v1.StateItem(key=probe, value=b"{}", metadata={PROJECTION: "true"})
        upsert = api_v1.TransactionalStateOperation(operationType="upsert", request=lone)
        try:
            await execute_transaction(self._dapr, self.store, [upsert])
        except StateError as err:
            if "outbox" not in str(err).lower():
                raise
            self._verified.add(self.store)  # refused as a projection without its record: outbox on
            return True
        await self._dapr.call(
            lambda c: c.delete_state(store_name=self.store, key=probe), component=self.store
        )
        return False
