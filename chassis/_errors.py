"""The chassis' exceptions: one root, so callers can catch everything the chassis raises.

ChassisError
├── ConfigError          a setting is missing or invalid (raised at start-up)
├── ContractError        the protos cannot be compiled, or a message has no event type
├── InvalidMessage       a message breaks its proto's protovalidate rules
├── StateError           the state store refused or failed an operation
│   └── ConcurrencyError an ETag did not match (someone else wrote first)
├── SidecarUnavailable   the Dapr sidecar did not become healthy in time
├── PublishError         the sidecar did not accept an event
├── InvocationError      a call to another service failed
└── HandlerOutcome       raised by an event handler to choose Dapr's outcome
    ├── Retry            redeliver the event later (TopicEventResponse RETRY)
    └── Drop             give up on the event (DROP; dead-lettered where configured)
"""

from __future__ import annotations

from collections.abc import Sequence


class ChassisError(Exception):
    """Root of every error the chassis raises."""


class ConfigError(ChassisError):
    """A setting is missing or invalid."""


class ContractError(ChassisError):
    """The contracts in `proto/` cannot be compiled or used as declared."""


class InvalidMessage(ChassisError):
    """A message breaks the protovalidate rules its proto declares (`validate`; INVALID_ARGUMENT at the edge).

    `violations` holds one (field path, rule id, what is wrong) per broken rule, e.g.
    ("answers[1].choice", "required", "value is required"); the path is "" for a whole-message rule.
    """

    def __init__(self, message_type: str, violations: Sequence[tuple[str, str, str]]) -> None:
        self.message_type = message_type
        self.violations = tuple(violations)
        problems = "; ".join(
            f"{field} is required" if rule == "required" else f"{field or message_type}: {what}"
            for field, rule, what in self.violations
        )
        super().__init__(f"invalid {message_type}: {problems}")


class StateError(ChassisError):
    """The state store refused or failed an operation."""


class ConcurrencyError(StateError):
    """An ETag did not match: the record changed since it was read (or exists, for a first write)."""


class SidecarUnavailable(ChassisError):
    """The Dapr sidecar did not answer its health endpoint within DAPR_HEALTH_TIMEOUT seconds."""


class PublishError(ChassisError):
    """The sidecar did not accept an event for publishing."""


class BindingError(ChassisError):
    """An output binding failed (the component's error, through the sidecar)."""


class InvocationError(ChassisError):
    """A call to another service through the sidecar failed."""


class HandlerOutcome(ChassisError):
    """Raised by an event handler to answer the sidecar with something other than SUCCESS."""


class Retry(HandlerOutcome):
    """Redeliver this event later (Dapr's RETRY)."""


class Drop(HandlerOutcome):
    """Give up on this event (Dapr's DROP): it is dead-lettered where a dead-letter topic is set."""
