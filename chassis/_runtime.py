"""The service runtime: one grpc.aio server for a service's own RPCs and Dapr's app callbacks.

Start order matters: the server listens first, then the Dapr client opens (the sidecar waits for the
app port, the client waits for the sidecar). SIGTERM/SIGINT drain in-flight work before exiting.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

import grpc
from dapr.proto.runtime.v1 import appcallback_pb2 as callback_v1
from dapr.proto.runtime.v1 import appcallback_pb2_grpc as callback_grpc
from google.protobuf import empty_pb2
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]  # public, not in stubs
from opentelemetry.instrumentation.grpc import aio_server_interceptor
from pydantic import BaseModel

from chassis._bindings import BindingHandler, InputBindingRegistry, OutputBinding
from chassis._contract import Contract, EventFlow, served_api
from chassis._dapr import Dapr
from chassis._errors import ChassisError, ConfigError
from chassis._inbox import DEFAULT_TTL as INBOX_TTL
from chassis._inbox import Inbox
from chassis._middleware import Middleware, MiddlewareInterceptor
from chassis._proctoring import SIGNALS_TOPIC, Proctoring, signal_type
from chassis._pubsub import (
    AppCallback,
    BulkHandler,
    BulkSubscription,
    Handler,
    Publisher,
    Subscription,
    SubscriptionRegistry,
)
from chassis._settings import ServiceSettings, load_settings
from chassis._state import StateRepository
from chassis._telemetry import flush_telemetry, setup_logging, setup_telemetry
from chassis._unit_of_work import UnitOfWork
from chassis._validation import check_requests

M = TypeVar("M", bound=Message)
R = TypeVar("R", bound=Message | BaseModel)  # a stored record: a proto message or a pydantic model
AddServicer = Callable[[Any, grpc.aio.Server], None]

_log = logging.getLogger("chassis.runtime")


class Service:
    """A MOOC service: its RPC servicers, its event handlers, its state and its Dapr client."""

    def __init__(self, name: str, settings: ServiceSettings | None = None) -> None:
        self.name = name
        self.settings = settings if settings is not None else load_settings(ServiceSettings)
        self._dapr = Dapr(self.settings)
        self._servicers: list[tuple[AddServicer, Any]] = []
        self._input_bindings = InputBindingRegistry()
        self._publishers: list[Publisher[Any]] = []
        self._middleware: list[Middleware] = [check_requests]  # protovalidate rules, before all else
        self._subscriptions = SubscriptionRegistry(self._middleware)
        self._proctoring = Proctoring(name, self.settings)
        self._outbox_stores: set[str] = set()  # stores whose outbox a unit of work has verified
        self._plain_stores: set[str] = set()  # stores found to have no outbox (by an inbox)
        self._health = health_aio.HealthServicer()
        self._stopping = asyncio.Event()
        self.port: int | None = None

    @property
    def dapr(self) -> Dapr:
        """The service's Dapr client owner; its client opens on first use."""
        return self._dapr

    def add_servicer(self, add_to_server: AddServicer, servicer: Any) -> None:
        """Serve a generated servicer: `service.add_servicer(add_XServicer_to_server, XServicer())`."""
        self._servicers.append((add_to_server, servicer))

    def use(self, *middleware: Middleware) -> None:
        """Run `middleware` around this service's RPCs, the events it consumes and those it publishes."""
        self._middleware.extend(middleware)

    def subscribe(
        self,
        *,
        topic: str,
        event: type[M],
        pubsub: str | None = None,
        dead_letter_topic: str | None = None,
        match: str | None = None,
        default: bool = False,
        store: str | None = None,
        inbox: bool = True,
        inbox_ttl: timedelta = INBOX_TTL,
    ) -> Callable[[Handler[M]], Handler[M]]:
        """Decorate `async def handler(event: M, ctx: EventContext) -> None` to receive `topic`'s events.

        Several handlers may share a topic: each gets the events of its type (`event.type == ...`),
        or those its CEL `match` selects, rules tried in the order declared; `default=True` takes
        what no rule selects. The handler's state changes go in `ctx.work` (a unit of work on
        `store`, default the service's), committed after it returns together with the event's inbox
        marker, so a redelivered event has its effects once (`inbox=False` turns the marker off).
        """

        def register(handler: Handler[M]) -> Handler[M]:
            name = pubsub or self.settings.pubsub
            box = self._inbox(store, inbox, inbox_ttl)
            self._subscriptions.add(
                Subscription(name, topic, event, handler, dead_letter_topic, match, default, box)
            )
            return handler

        return register

    def subscribe_bulk(
        self,
        *,
        topic: str,
        event: type[M],
        pubsub: str | None = None,
        dead_letter_topic: str | None = None,
        max_messages: int = 100,
        max_await_ms: int = 1000,
        store: str | None = None,
        inbox: bool = True,
        inbox_ttl: timedelta = INBOX_TTL,
    ) -> Callable[[BulkHandler[M]], BulkHandler[M]]:
        """Decorate `async def handler(batch: Sequence[BulkEvent[M]]) -> None` to receive `topic`'s
        events in batches of up to `max_messages`, gathered for at most `max_await_ms`.

        Each entry is SUCCESS unless the handler calls its `retry` or `drop`; an exception answers for
        the whole batch. Each entry has its own `ctx.work` and inbox marker, as with `subscribe`.
        """

        def register(handler: BulkHandler[M]) -> BulkHandler[M]:
            name = pubsub or self.settings.pubsub
            box = self._inbox(store, inbox, inbox_ttl)
            self._subscriptions.add_bulk(
                BulkSubscription(
                    name, topic, event, handler, max_messages, max_await_ms, dead_letter_topic, box
                )
            )
            return handler

        return register

    def _inbox(self, store: str | None, enabled: bool, ttl: timedelta) -> Inbox:
        store = store or self.settings.state_store
        return Inbox(self._dapr, self.name, store, self._outbox_stores, self._plain_stores, enabled, ttl)

    def on_binding(self, name: str) -> Callable[[BindingHandler], BindingHandler]:
        """Decorate `async def handler(event: BindingEvent) -> None` to receive binding `name`'s events."""

        def register(handler: BindingHandler) -> BindingHandler:
            self._input_bindings.add(name, handler)
            return handler

        return register

    def output_binding(self, name: str) -> OutputBinding:
        """Output binding `name` (a Component in the sidecar's resources), to `invoke` operations on."""
        return OutputBinding(self._dapr, name)

    def unit_of_work(self, *, store: str | None = None) -> UnitOfWork:
        """Saves, deletes and events in one store (default: the service's), committed together."""
        return UnitOfWork(self._dapr, store or self.settings.state_store, self._outbox_stores)

    def state(self, model: type[R], *, store: str | None = None) -> StateRepository[R]:
        """The records of `model` in the service's state store (or `store`)."""
        return StateRepository(self._dapr, model, store or self.settings.state_store)

    def publisher(self, event: type[M], *, topic: str, pubsub: str | None = None) -> Publisher[M]:
        """Declare that this service publishes `event`s to `topic`; publish through what it returns."""
        publisher = Publisher(
            self._dapr, event, pubsub=pubsub or self.settings.pubsub, topic=topic, middleware=self._middleware
        )
        self._publishers.append(publisher)
        return publisher

    def proctor(self, *methods: str, gate: bool = False, learner_field: str | None = "learner_id") -> None:
        """Tap RPCs `methods` ("SubmitAssignment" or "/pkg.Service/Method") for proctoring.

        Each call's timings, status and `x-proctoring-*` client signals become an EngagementSignal
        published off the learner's path to `proctoring.signals`; with `gate=True` the proctoring service
        is asked first and may hold the call. `learner_field` names the request field of the learner.
        """
        if not self._proctoring.marked:
            self._proctoring.signals = self.publisher(signal_type(), topic=SIGNALS_TOPIC)
            self.use(self._proctoring.middleware)
        self._proctoring.mark(methods, gate=gate, learner_field=learner_field)

    def contract(self) -> Contract:
        """The proto services this service serves and the events it consumes and publishes."""
        return Contract(
            app_id=self.name,
            apis=tuple(served_api(servicer) for _, servicer in self._servicers),
            consumes=tuple(EventFlow(s.pubsub, s.topic, s.event) for s in self._subscriptions),
            publishes=tuple(EventFlow(p.pubsub, p.topic, p.event) for p in self._publishers),
        )

    def run(self) -> None:
        """Serve until SIGTERM/SIGINT (the body of every service's `__main__`)."""
        try:
            asyncio.run(self.serve())
        except ConfigError as err:
            print(f"config error: {err}", file=sys.stderr)
            raise SystemExit(2) from None

    def stop(self) -> None:
        """Ask a running `serve()` to drain and return (what SIGTERM does)."""
        self._stopping.set()

    async def serve(self) -> None:
        """Listen, open the Dapr client, and serve until stopped; then drain and close."""
        self._dapr.load_policies()  # invalid Resiliency YAML: ConfigError, one line, before listening
        setup_telemetry(self.name, metrics=True)
        setup_logging(self.name)
        server = self._build_server()
        await self._proctoring.start(servicer for _, servicer in self._servicers)
        await server.start()
        await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        _log.info("%s serving on port %s", self.name, self.port)
        watched = self._watch_signals()
        opener = asyncio.create_task(self._open_dapr())
        try:
            await self._stopping.wait()
        finally:
            opener.cancel()
            await self._shutdown(server)
            for sig in watched:
                asyncio.get_running_loop().remove_signal_handler(sig)

    def _build_server(self) -> grpc.aio.Server:
        interceptors = [
            aio_server_interceptor(),  # type: ignore[no-untyped-call]  # outermost: middleware runs in the span
            MiddlewareInterceptor(self._middleware, skip=_is_dapr_or_health),
        ]
        server = grpc.aio.server(interceptors=interceptors)
        for add_to_server, servicer in self._servicers:
            add_to_server(servicer, server)
        # The SDK's generated registration functions are untyped.
        callback_grpc.add_AppCallbackServicer_to_server(
            AppCallback(self._subscriptions, self._input_bindings), server
        )  # type: ignore[no-untyped-call]
        callback_grpc.add_AppCallbackHealthCheckServicer_to_server(_AppHealth(), server)  # type: ignore[no-untyped-call]
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        self.port = self._bind(server)
        return server

    def _bind(self, server: grpc.aio.Server) -> int:
        host = self.settings.bind_host
        address = f"[{host}]:{self.settings.app_port}" if ":" in host else f"{host}:{self.settings.app_port}"
        try:
            return server.add_insecure_port(address)
        except RuntimeError as err:
            raise ConfigError(f"APP_PORT: cannot listen on {address}: {err}") from err

    def _watch_signals(self) -> list[signal.Signals]:
        loop = asyncio.get_running_loop()
        watched = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self._on_signal, sig)
            except (NotImplementedError, RuntimeError, ValueError):
                _log.debug("cannot watch %s outside the main thread", sig.name)
            else:
                watched.append(sig)
        return watched

    def _on_signal(self, sig: signal.Signals) -> None:
        _log.info("%s received: draining for up to %gs", sig.name, self.settings.drain_seconds)
        self.stop()

    async def _open_dapr(self) -> None:
        try:
            await self._dapr.client()
        except ChassisError as err:
            _log.error("Dapr client not ready yet (it opens again on first use): %s", err)

    async def _shutdown(self, server: grpc.aio.Server) -> None:
        await self._health.enter_graceful_shutdown()
        # New calls are refused at once; calls and event handlers in flight get drain_seconds to finish.
        await server.stop(grace=self.settings.drain_seconds)
        await self._proctoring.stop()  # the drained calls' signals, flushed for a bounded time
        await self._dapr.close()
        flush_telemetry()
        _log.info("%s stopped", self.name)


def _is_dapr_or_health(method: str) -> bool:
    """Dapr's app callbacks and gRPC health are the chassis' own plumbing, not the service's API."""
    return method.startswith(("/dapr.proto.runtime.v1.", "/grpc.health.v1."))


class _AppHealth(callback_grpc.AppCallbackHealthCheckServicer):
    """Answers the sidecar's app health probe: serving means healthy."""

    async def HealthCheck(
        self, request: empty_pb2.Empty, context: grpc.aio.ServicerContext[Any, Any]
    ) -> callback_v1.HealthCheckResponse:
        return callback_v1.HealthCheckResponse()
