"""Bindings both ways: output bindings invoked through the sidecar, input binding events run by handlers.

An output binding (`service.output_binding("mailer")`) sends data to the outside world through a
component (bindings.http, bindings.smtp, ...), retried on transient failures like every sidecar call.
An input binding (`@service.on_binding("nightly")`, a cron schedule among others) delivers each event to
a handler; a handler error answers the sidecar with an error, so the binding's own retry policy
(Resiliency YAML) decides what happens next, and `Drop` acknowledges an event without acting on it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from dapr.aio.clients import DaprClient
from google.protobuf.message import Message
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from chassis._dapr import Dapr
from chassis._errors import BindingError, ChassisError, ConfigError, Drop
from chassis._events import message_to_json
from chassis._resilience import grpc_code_of
from chassis._telemetry import context_from_traceparent

_log = logging.getLogger("chassis.bindings")
_tracer = trace.get_tracer("chassis")

BindingData = bytes | str | Message


@dataclass(frozen=True)
class BindingEvent:
    """One event of an input binding: its data and the metadata the component attached."""

    binding: str
    data: bytes
    metadata: Mapping[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        """The data parsed as JSON (raises ValueError when it is not)."""
        return json.loads(self.data)


@dataclass(frozen=True)
class BindingResult:
    """What an output binding answered: data (e.g. an HTTP response body) and metadata (e.g. status)."""

    data: bytes
    metadata: Mapping[str, str]


BindingHandler = Callable[[BindingEvent], Awaitable[None]]


class OutputBinding:
    """One output binding component, named as in its Component YAML."""

    def __init__(self, dapr: Dapr, name: str) -> None:
        self.name = name
        self._dapr = dapr

    async def invoke(
        self, operation: str, data: BindingData = b"", metadata: Mapping[str, str] | None = None
    ) -> BindingResult:
        """Run `operation` (e.g. "post", "create") with `data`; a proto message is sent as JSON."""
        payload = _as_bytes(data)

        async def send(client: DaprClient) -> Any:
            return await client.invoke_binding(self.name, operation, payload, dict(metadata or {}))

        try:
            response = await self._dapr.call(send, component=self.name)
        except ChassisError:
            raise
        except Exception as err:
            raise BindingError(
                f"output binding {self.name!r} failed on {operation!r}: {grpc_code_of(err)}: {err}"
            ) from err
        return BindingResult(bytes(response.data), dict(response.binding_metadata))


def _as_bytes(data: BindingData) -> bytes:
    if isinstance(data, Message):
        return message_to_json(data).encode()
    return data.encode() if isinstance(data, str) else data


class InputBindingRegistry:
    """The input bindings a service handles; answers the sidecar's ListInputBindings."""

    def __init__(self) -> None:
        self._handlers: dict[str, BindingHandler] = {}

    def add(self, name: str, handler: BindingHandler) -> None:
        if name in self._handlers:
            raise ConfigError(f"input binding {name!r} already has a handler")
        self._handlers[name] = handler

    def names(self) -> list[str]:
        return list(self._handlers)

    async def deliver(self, event: BindingEvent) -> grpc.StatusCode | None:
        """Run the handler of `event.binding`; the status to answer the sidecar with (None: OK)."""
        handler = self._handlers.get(event.binding)
        if handler is None:
            _log.warning("no handler for input binding %s: dropping the event", event.binding)
            return None
        parent = context_from_traceparent(event.metadata.get("traceparent"))
        with _tracer.start_as_current_span(
            f"binding {event.binding}", context=parent, kind=SpanKind.CONSUMER, record_exception=False
        ) as span:
            try:
                await handler(event)
            except Drop as outcome:
                _log.warning("handler dropped an event of binding %s: %s", event.binding, outcome)
            except Exception as err:
                _log.exception("handler failed on an event of binding %s", event.binding)
                span.record_exception(err)
                span.set_status(trace.Status(trace.StatusCode.ERROR, str(err)))
                return grpc.StatusCode.INTERNAL
        return None
