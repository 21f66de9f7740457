"""The inbox: a delivered event's effects take place once, however often the broker delivers it.

Brokers deliver at least once. Before a handler runs, the chassis looks for the event's marker
(key: app id, pubsub, topic, CloudEvent id) in the subscription's state store; a marker means the
event was handled, so it is acknowledged without running the handler again. The handler puts its
state changes in `ctx.work`, a unit of work the chassis commits after the handler returns:

- on a plain store the marker is a first-write insert in the SAME transaction as the changes, so
  effects and marker commit together or not at all; a conflict on the marker means another delivery
  committed first, and this one ends as SUCCESS with no effects;
- on an outbox store (the unit of work publishes events) the marker cannot join the transaction,
  because Dapr's outbox publishes every record a transaction saves. It is written right after the
  commit. A crash between the two repeats the handler: its events carry ids derived from the
  incoming event's id, so the repeat sends the same ids, which consumers' inboxes drop, and records
  it saves first-write make the repeated transaction abort (ConcurrencyError, RETRY; the handler,
  run once more, finds its records and saves nothing, and the marker is written).

Markers expire after a TTL (default seven days): a redelivery later than that runs the handler again.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel

from chassis._dapr import Dapr
from chassis._errors import ConcurrencyError, ConfigError, ContractError
from chassis._events import EventContext
from chassis._state import StateRepository, Upsert
from chassis._unit_of_work import UnitOfWork

DEFAULT_TTL = timedelta(days=7)
_PREFIX = "chassis-inbox"

_log = logging.getLogger("chassis.inbox")


class InboxMarker(BaseModel):
    """What a marker records: which event was handled, and when."""

    event_type: str
    handled_at: datetime


class EventWork(UnitOfWork):
    """`ctx.work`: a unit of work the chassis commits (with the inbox marker) once the handler returns."""

    async def commit(self) -> None:
        raise ContractError(
            "ctx.work is committed by the chassis after the handler returns: do not commit it"
        )

    async def apply(self, marker: Upsert | None = None) -> None:
        """Commit the changes, plus `marker` in the same transaction when given."""
        if marker is not None:
            self._changes.append(marker)
        await super().commit()


@dataclass(frozen=True)
class Inbox:
    """One subscription's inbox and the unit of work its handler gets (both in `store`)."""

    dapr: Dapr
    app_id: str
    store: str
    outbox_stores: set[str]  # the service's stores known to have the outbox on (shared)
    plain_stores: set[str]  # and those known to have it off (shared)
    enabled: bool = True
    ttl: timedelta = DEFAULT_TTL

    def __post_init__(self) -> None:
        if self.ttl.total_seconds() < 1:
            raise ConfigError(f"inbox_ttl must be at least a second, got {self.ttl}")

    @property
    def markers(self) -> StateRepository[InboxMarker]:
        return StateRepository(self.dapr, InboxMarker, self.store)

    def key(self, ctx: EventContext) -> str:
        """The marker's key: per consuming app, pubsub and topic, so each subscriber has its own."""
        return f"{_PREFIX}/{self.app_id}/{ctx.pubsub}/{ctx.topic}/{ctx.id}"

    def open(self, ctx: EventContext) -> EventContext:
        """`ctx` with its subscriber and a fresh unit of work whose events get ids derived from the event."""
        ctx = dataclasses.replace(ctx, subscriber=self.app_id)
        work = EventWork(
            self.dapr, self.store, self.outbox_stores, event_ids=lambda key: ctx.derived_id(f"outbox/{key}")
        )
        return dataclasses.replace(ctx, _work=work)

    async def handled(self, ctx: EventContext) -> bool:
        """Whether this event's marker is there (always False with the inbox off)."""
        return self.enabled and await self.markers.get(self.key(ctx)) is not None

    async def handled_among(self, contexts: Sequence[EventContext]) -> set[str]:
        """The ids among `contexts` whose marker is there, read in one bulk call."""
        if not self.enabled or not contexts:
            return set()
        found = await self.markers.get_many([self.key(ctx) for ctx in contexts])
        return {ctx.id for ctx in contexts if self.key(ctx) in found}

    async def complete(self, ctx: EventContext) -> bool:
        """Commit the handler's work and the marker; False when another delivery had done it first."""
        work = ctx.work
        if not isinstance(work, EventWork):
            raise ContractError("ctx.work was replaced: the chassis commits the unit of work it gave")
        if not self.enabled:
            await work.apply()
            return True
        marker = InboxMarker(event_type=ctx.type, handled_at=datetime.now(UTC))
        if not work.changes:
            return await self._save_alone(ctx, marker)
        if work.publishes or await work.on_outbox_store(self.plain_stores):
            # The outbox would publish the marker too: it is written right after the commit instead.
            if not work.publishes and any(isinstance(change, Upsert) for change in work.changes):
                raise ContractError(
                    f"ctx.work saves records in {self.store!r} without events, but that store's outbox "
                    "publishes every record a transaction saves: give each saved record its event"
                )
            await work.apply()
            await self._save_alone(ctx, marker)
            return True
        try:
            await work.apply(Upsert(self.key(ctx), marker, first_write=True, ttl_seconds=self._ttl_seconds))
        except ConcurrencyError:
            if await self.handled(ctx):
                return False
            raise  # the handler's own ETag or first-write conflict: redelivered, it runs again
        return True

    @property
    def _ttl_seconds(self) -> int:
        return int(self.ttl.total_seconds())

    async def _save_alone(self, ctx: EventContext, marker: InboxMarker) -> bool:
        """The marker on its own; False when another delivery wrote it first.

        A plain SaveState, not a transaction: Dapr's outbox publishes only what transactions save.
        """
        try:
            await self.markers.save(self.key(ctx), marker, first_write=True, ttl_seconds=self._ttl_seconds)
        except ConcurrencyError:
            return False
        return True
