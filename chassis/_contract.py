"""What a service promises: the proto services it serves, the events it consumes and publishes.

`Service.contract()` describes it; `problems()` checks it against the protos, so a contract test (and
the template's own tests) fail when an RPC of a served proto service is left unimplemented, or when an
event travels without a schema in `proto/mooc/events`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message

from chassis._errors import ContractError
from chassis._events import event_type_of

EVENT_SCHEMA_DIR = "mooc/events/"  # where every event message must be declared, under proto/


@dataclass(frozen=True)
class ServedApi:
    """A proto service and the servicer serving it; `missing` lists the RPCs it leaves UNIMPLEMENTED."""

    service: str  # full proto name, e.g. mooc.assessment.v1.AssessmentService
    servicer: str
    missing: tuple[str, ...]


@dataclass(frozen=True)
class EventFlow:
    """Events of one message type on one topic."""

    pubsub: str
    topic: str
    message: type[Message]

    @property
    def schema_problem(self) -> str | None:
        """Why this event has no proper schema, or None."""
        descriptor = self.message.DESCRIPTOR
        if not descriptor.file.name.startswith(EVENT_SCHEMA_DIR):
            where = f"{descriptor.full_name} ({descriptor.file.name})"
            return f"{where} is not declared under proto/{EVENT_SCHEMA_DIR}"
        try:
            event_type_of(self.message)
        except ContractError as err:
            return str(err)
        return None


@dataclass(frozen=True)
class Contract:
    app_id: str
    apis: tuple[ServedApi, ...]
    consumes: tuple[EventFlow, ...]
    publishes: tuple[EventFlow, ...]

    def problems(self) -> list[str]:
        """Every broken promise, one line each; empty when the service keeps its contract."""
        found = [
            f"{self.app_id}: {api.servicer} leaves {api.service}.{method} unimplemented"
            for api in self.apis
            for method in api.missing
        ]
        for verb, flows in (("consumes", self.consumes), ("publishes", self.publishes)):
            found += [
                f"{self.app_id} {verb} {flow.topic!r}: {problem}"
                for flow in flows
                if (problem := flow.schema_problem) is not None
            ]
        return found


def served_api(servicer: Any) -> ServedApi:
    """The proto service `servicer` implements, found through its generated `<Name>Servicer` base class."""
    for base in type(servicer).__mro__[1:]:
        module = base.__module__
        if module.endswith("_pb2_grpc") and base.__name__.endswith("Servicer"):
            descriptor = _service_descriptor(module, base.__name__.removesuffix("Servicer"))
            missing = tuple(
                method.name
                for method in descriptor.methods
                if getattr(type(servicer), method.name, None) is getattr(base, method.name, None)
            )
            return ServedApi(descriptor.full_name, type(servicer).__qualname__, missing)
    raise ContractError(f"{type(servicer).__qualname__} does not derive from a generated *Servicer class")


def _service_descriptor(grpc_module: str, name: str) -> ServiceDescriptor:
    messages = importlib.import_module(grpc_module.removesuffix("_grpc"))
    descriptor: ServiceDescriptor = messages.DESCRIPTOR.services_by_name[name]
    return descriptor
