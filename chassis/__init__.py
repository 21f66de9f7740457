"""mooc-chassis: the Dapr-native chassis every MOOC service is built on.

Services import from here only; everything else in the package is private.
"""

from chassis._bindings import BindingEvent, BindingResult, OutputBinding
from chassis._contract import Contract
from chassis._dapr import Dapr
from chassis._errors import (
    BindingError,
    ChassisError,
    ConcurrencyError,
    ConfigError,
    ContractError,
    Drop,
    HandlerOutcome,
    InvalidMessage,
    InvocationError,
    PublishError,
    Retry,
    SidecarUnavailable,
    StateError,
)
from chassis._events import EventContext, event_type_of
from chassis._middleware import Call, Middleware, Next
from chassis._proctoring import ProctoringHook, ProctoringHookContext, ProctoringSettings
from chassis._pubsub import BulkEvent, Publisher
from chassis._resilience import retrying
from chassis._runtime import Service
from chassis._secrets import DaprSecret
from chassis._settings import ServiceSettings, load_settings
from chassis._state import Delete, StateRepository, Upsert, Versioned
from chassis._telemetry import context_from_traceparent, current_traceparent, setup_telemetry
from chassis._unit_of_work import UnitOfWork
from chassis._validation import validate

__all__ = [
    "BindingError",
    "BindingEvent",
    "BindingResult",
    "BulkEvent",
    "Call",
    "ChassisError",
    "ConcurrencyError",
    "ConfigError",
    "Contract",
    "ContractError",
    "Dapr",
    "DaprSecret",
    "Delete",
    "Drop",
    "EventContext",
    "HandlerOutcome",
    "InvalidMessage",
    "InvocationError",
    "Middleware",
    "Next",
    "OutputBinding",
    "ProctoringHook",
    "ProctoringHookContext",
    "ProctoringSettings",
    "PublishError",
    "Publisher",
    "Retry",
    "Service",
    "ServiceSettings",
    "SidecarUnavailable",
    "StateError",
    "StateRepository",
    "UnitOfWork",
    "Upsert",
    "Versioned",
    "context_from_traceparent",
    "current_traceparent",
    "event_type_of",
    "load_settings",
    "retrying",
    "setup_telemetry",
    "validate",
]
