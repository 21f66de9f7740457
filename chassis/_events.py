"""Events as the contracts declare them: the CloudEvent type of a proto message, its JSON form, its context.

The type is read from the message option `(mooc.events.v1.event_type)` through the descriptor, so the
chassis never imports generated code: any message whose proto declares the option works.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message

from chassis._errors import ContractError

if TYPE_CHECKING:
    from chassis._unit_of_work import UnitOfWork

EVENT_TYPE_OPTION = "mooc.events.v1.event_type"
JSON_CONTENT_TYPE = "application/json"

M = TypeVar("M", bound=Message)
_DERIVED_IDS = uuid.UUID("6f1c2a5e-8d4b-4f0e-9a77-3c0de1ba7c11")  # namespace of ids derived from events


def event_type_of(message: Message | type[Message]) -> str:
    """The CloudEvent `type` the proto declares for this message (class or instance)."""
    descriptor = message.DESCRIPTOR
    for option, value in descriptor.GetOptions().ListFields():
        if option.is_extension and option.full_name == EVENT_TYPE_OPTION and value:
            return str(value)
    raise ContractError(
        f"{descriptor.full_name} declares no event type: add "
        f'`option ({EVENT_TYPE_OPTION}) = "mooc.<domain>.<entity>.<verb>.v1";` to the message in its .proto'
    )


def event_to_json(event: Message) -> str:
    """Event data in the canonical proto3 JSON mapping (lowerCamelCase): what any consumer expects."""
    return json_format.MessageToJson(event, indent=None)


def message_to_json(message: Message) -> str:
    """Compact JSON with the proto's own field names: the form a service's state is stored in."""
    return json_format.MessageToJson(message, preserving_proto_field_name=True, indent=None)


def message_from_json(data: bytes | str, model: type[M]) -> M:
    """Parse either JSON form into `model`; unknown fields are ignored so older readers accept newer writers.

    Raises `json_format.ParseError` when the data is not JSON of this message.
    """
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    return json_format.Parse(text, model(), ignore_unknown_fields=True)


@dataclass(frozen=True)
class EventContext:
    """What a handler may want to know about the CloudEvent besides its data."""

    id: str
    type: str
    source: str
    topic: str
    pubsub: str
    traceparent: str | None = None
    # Message metadata the sidecar forwarded with the delivery (gRPC metadata, transport keys removed).
    metadata: Mapping[str, str] = field(default_factory=dict)
    # The CloudEvent's other attributes (time, traceid, custom extensions, ...).
    extensions: Mapping[str, Any] = field(default_factory=dict)
    # Set by the chassis for each delivery: the app that consumes, and the handler's unit of work.
    subscriber: str = ""
    _work: UnitOfWork | None = field(default=None, repr=False, compare=False)

    @property
    def work(self) -> UnitOfWork:
        """The handler's unit of work, committed by the chassis after the handler returns.

        Saves, deletes and outbox events put here take effect once, together with the inbox marker
        of this event (see docs/pubsub.md); a handler that raises commits nothing.
        """
        if self._work is None:
            raise ContractError("this event context has no unit of work: only delivered events have one")
        return self._work

    def derived_id(self, name: str) -> str:
        """An id made from this event's id and `name`: the same on every redelivery of this event.

        Publish what a handler causes under such ids, so a repeat after a crash is a duplicate
        that consumers' inboxes drop, never a second event.
        """
        return str(uuid.uuid5(_DERIVED_IDS, f"{self.subscriber}/{self.pubsub}/{self.topic}/{self.id}/{name}"))
