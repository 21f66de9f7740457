"""A service under test, seen from the test: its RPCs, its state, events into it and events out of it.

Everything goes through real sidecars: calls through the service's own (Dapr gRPC proxying by
`dapr-app-id`), state reads through it too (so keys are the service's own), and events in and out
through a second sidecar, the test's client, on the same embedded broker: publishing uses the
chassis' own publish path (CloudEvent type, id, trace context), and a capture is a streaming
subscription with its own consumer group, so it sees what any other subscriber of the topic would.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import grpc
import yaml
from dapr.aio.clients.grpc.subscription import Subscription
from dapr.common.pubsub.subscription import SubscriptionMessage
from google.protobuf import text_format
from google.protobuf.message import Message
from pydantic import BaseModel

from chassis._dapr import Dapr
from chassis._events import EventContext, event_type_of, message_from_json
from chassis._pubsub import publish
from chassis._settings import ServiceSettings
from chassis._state import StateRepository
from chassis.invoke import channel as invoke_channel
from chassis.testing._processes import AppProcess, Sidecar

M = TypeVar("M", bound=Message)
R = TypeVar("R", bound=Message | BaseModel)
S = TypeVar("S")

DEFAULT_TIMEOUT = 10.0
DEFAULT_STORE = "statestore"
DEFAULT_PUBSUB = "pubsub"
_SQLITE_TYPES = ("state.sqlite", "pubsub.sqlite")


@dataclass(frozen=True)
class CapturedEvent(Generic[M]):
    """One event a capture received: the typed message and its CloudEvent attributes."""

    event: M
    ctx: EventContext


@dataclass(frozen=True)
class _Received:
    ctx: EventContext
    data: bytes


class TopicCapture:
    """Every event delivered on one topic since the capture opened, acknowledged as it arrives.

    `next` hands each event out once: it returns the oldest matching event no earlier call returned.
    """

    def __init__(self, subscription: Subscription, pubsub: str, topic: str) -> None:
        self.pubsub = pubsub
        self.topic = topic
        self._subscription = subscription
        self._received: list[_Received] = []
        self._taken: set[int] = set()
        self._changed = asyncio.Event()
        self._failure: BaseException | None = None
        self._reader = asyncio.create_task(self._read(), name=f"capture-{pubsub}-{topic}")

    @property
    def received(self) -> list[EventContext]:
        """The CloudEvent attributes of everything received so far, oldest first."""
        return [item.ctx for item in self._received]

    def events(self, model: type[M]) -> list[CapturedEvent[M]]:
        """Every event of `model`'s CloudEvent type received so far, oldest first."""
        event_type = event_type_of(model)
        return [self._typed(item, model) for item in self._received if item.ctx.type == event_type]

    async def next(
        self,
        model: type[M],
        *,
        where: Callable[[M], bool] | None = None,
        timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109  # bounds the whole wait, not one await
    ) -> CapturedEvent[M]:
        """The next event of `model`'s type (and matching `where`); TimeoutError names what came instead."""
        event_type = event_type_of(model)
        deadline = time.monotonic() + timeout
        while True:
            self._changed.clear()  # before looking, so an event arriving after the look wakes the wait
            for index, item in enumerate(self._received):
                if index in self._taken or item.ctx.type != event_type:
                    continue
                found = self._typed(item, model)
                if where is None or where(found.event):
                    self._taken.add(index)
                    return found
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._failure is not None:
                raise TimeoutError(self._missed(event_type, where, timeout))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._changed.wait()

    async def close(self) -> None:
        await self._subscription.close()  # type: ignore[no-untyped-call]
        self._reader.cancel()
        with contextlib.suppress(BaseException):
            await self._reader

    async def _read(self) -> None:
        try:
            while True:
                message = await self._subscription.next_message()  # type: ignore[no-untyped-call]
                self._received.append(_Received(_context_of(message), bytes(message.raw_data())))
                self._changed.set()
                await self._subscription.respond_success(message)  # type: ignore[no-untyped-call]
        except Exception as err:  # the stream ended: waiting longer cannot help, so say so at once
            self._failure = err
            self._changed.set()

    def _typed(self, item: _Received, model: type[M]) -> CapturedEvent[M]:
        try:
            return CapturedEvent(message_from_json(item.data, model), item.ctx)
        except Exception as err:
            raise AssertionError(
                f"event {item.ctx.id} on {self.pubsub}/{self.topic} has type {item.ctx.type} "
                f"but its data is not a {model.__name__}: {err}"
            ) from err

    def _missed(self, event_type: str, where: Callable[..., bool] | None, timeout: float) -> str:
        what = f"{event_type}{' matching ' + _name_of(where) if where else ''}"
        seen = [f"{ctx.type} id={ctx.id}" for ctx in self.received]
        if len(seen) > 10:
            seen = ["...", *seen[-10:]]
        took = f"{len(self._taken)} already taken by next(); " if self._taken else ""
        ended = f"; the subscription ended: {self._failure!r}" if self._failure else ""
        return (
            f"no new {what} on {self.pubsub}/{self.topic} within {timeout:g}s; "
            f"{took}received {len(self._received)}: {', '.join(seen) or 'nothing'}{ended}"
        )


def _context_of(message: SubscriptionMessage) -> EventContext:
    extensions: dict[str, Any] = dict(message.extensions())  # type: ignore[no-untyped-call]
    return EventContext(
        id=message.id(),  # type: ignore[no-untyped-call]
        type=message.type(),  # type: ignore[no-untyped-call]
        source=message.source(),  # type: ignore[no-untyped-call]
        topic=message.topic(),  # type: ignore[no-untyped-call]
        pubsub=message.pubsub_name(),  # type: ignore[no-untyped-call]
        traceparent=str(extensions.get("traceparent") or "") or None,
        extensions=extensions,
    )


def _name_of(predicate: Callable[..., Any]) -> str:
    name = getattr(predicate, "__name__", repr(predicate))
    return "a lambda" if name == "<lambda>" else name


def _shown(value: object) -> str:
    text = text_format.MessageToString(value, as_one_line=True) if isinstance(value, Message) else repr(value)
    return text if len(text) <= 300 else text[:300] + "..."


class ServiceUnderTest:
    """A running service (`python -m <module>`) beside its sidecar; made by the `chassis_service` fixture.

    Clients open on first use and close when the test ends, after which the service drains and stops.
    """

    def __init__(
        self,
        *,
        module: str,
        sidecar: Sidecar,
        app: AppProcess,
        start_client_sidecar: Callable[[], Sidecar],
    ) -> None:
        self.module = module
        self.app_id = app.app_id
        self.sidecar = sidecar
        self.app = app
        self._start_client_sidecar = start_client_sidecar
        self._dapr: Dapr | None = None
        self._channel: grpc.aio.Channel | None = None
        self._client: Dapr | None = None
        self._captures: dict[tuple[str, str], TopicCapture] = {}

    @property
    def app_port(self) -> int:
        return self.app.app_port

    @property
    def dapr_grpc_port(self) -> int:
        return self.sidecar.grpc_port

    @property
    def dapr_http_port(self) -> int:
        return self.sidecar.http_port

    @property
    def workdir(self) -> Path:
        """The sidecars' working directory: relative SQLite paths in the components resolve here."""
        return self.sidecar.cwd

    @property
    def sqlite_files(self) -> dict[str, Path]:
        """The SQLite file of each embedded state store and broker the service's sidecar loads, by name."""
        return _sqlite_files(self.sidecar.resources, self.app_id, self.workdir)

    @property
    def settings(self) -> ServiceSettings:
        """Settings that reach the service's sidecar, for chassis objects a test builds itself."""
        return _settings_for(self.sidecar)

    @property
    def dapr(self) -> Dapr:
        """A chassis `Dapr` on the service's own sidecar (state keys as the service sees them)."""
        if self._dapr is None:
            self._dapr = Dapr(self.settings)
        return self._dapr

    @property
    def channel(self) -> grpc.aio.Channel:
        """A channel whose calls reach the service through its sidecar (`dapr-app-id`, deadline, retry)."""
        if self._channel is None:
            self._channel = invoke_channel(self.app_id, settings=self.settings)
        return self._channel

    def stub(self, stub_class: Callable[[grpc.aio.Channel], S]) -> S:
        """A generated stub on `channel`: `service.stub(GradingServiceStub)`."""
        return stub_class(self.channel)

    def state(self, model: type[R], *, store: str = DEFAULT_STORE) -> StateRepository[R]:
        """The service's records of `model` in `store`, read (or seeded) through its sidecar."""
        return StateRepository(self.dapr, model, store)

    async def wait_for_state(
        self,
        model: type[R],
        key: str,
        *,
        until: Callable[[R], bool] | None = None,
        store: str = DEFAULT_STORE,
        timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109  # bounds the polling, not one await
    ) -> R:
        """Poll `key` until a record is stored there (and satisfies `until`); return it.

        TimeoutError says which key was awaited and what was stored there last.
        """
        records = self.state(model, store=store)
        deadline = time.monotonic() + timeout
        while True:
            stored = await records.get(key)
            if stored is not None and (until is None or until(stored.value)):
                return stored.value
            if time.monotonic() >= deadline:
                last = "nothing was stored" if stored is None else f"last stored: {_shown(stored.value)}"
                wanted = f" satisfying {_name_of(until)}" if until else ""
                raise TimeoutError(
                    f"no {model.__name__}{wanted} under {key!r} in {store!r} of {self.app_id} "
                    f"after {timeout:g}s; {last}"
                )
            await asyncio.sleep(0.05)

    async def publish(
        self,
        event: Message,
        *,
        topic: str,
        pubsub: str = DEFAULT_PUBSUB,
        event_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> str:
        """Publish `event` as the CloudEvent of its declared type, from the test's client sidecar.

        A fixed `event_id` publishes the same CloudEvent again: what a broker's redelivery looks like.
        Returns the event id.
        """
        client = await self._client_dapr()
        return await publish(client, event, pubsub=pubsub, topic=topic, event_id=event_id, metadata=metadata)

    async def capture(self, topic: str, *, pubsub: str = DEFAULT_PUBSUB) -> TopicCapture:
        """Start receiving `topic`'s events (those published from now on); the same capture if open.

        Open it before triggering what publishes: a new consumer group starts from its subscription.
        """
        key = (pubsub, topic)
        if key not in self._captures:
            client = await (await self._client_dapr()).client()
            subscription = await client.subscribe(pubsub_name=pubsub, topic=topic)
            self._captures[key] = TopicCapture(subscription, pubsub, topic)
        return self._captures[key]

    async def aclose(self) -> None:
        """Close the test's clients (the fixture does it; the processes stop after)."""
        for capture in self._captures.values():
            await capture.close()
        self._captures.clear()
        if self._channel is not None:
            await self._channel.close(None)
            self._channel = None
        for dapr in (self._dapr, self._client):
            if dapr is not None:
                await dapr.close()
        self._dapr = self._client = None

    async def _client_dapr(self) -> Dapr:
        """The test's own sidecar, started on first need (publish, capture)."""
        if self._client is None:
            sidecar = await asyncio.to_thread(self._start_client_sidecar)
            self._client = Dapr(_settings_for(sidecar))
        return self._client


class StartService(Protocol):
    """The `chassis_service` fixture: `chassis_service("grading")` starts `python -m grading`."""

    def __call__(
        self,
        module: str,
        *,
        app_id: str | None = None,
        resources: Sequence[Path] = (),
        env: Mapping[str, str] | None = None,
        pythonpath: Sequence[Path] = (),
    ) -> ServiceUnderTest: ...


def _settings_for(sidecar: Sidecar) -> ServiceSettings:
    return ServiceSettings(
        app_id=sidecar.app_id, dapr_grpc_port=sidecar.grpc_port, dapr_http_port=sidecar.http_port
    )


def _sqlite_files(resources: Sequence[Path], app_id: str, workdir: Path) -> dict[str, Path]:
    """Component name -> SQLite file, for the embedded components in scope for `app_id`."""
    files: dict[str, Path] = {}
    for folder in resources:
        for path in sorted(folder.glob("*.y*ml")):
            for doc in yaml.safe_load_all(path.read_text()):
                found = _sqlite_file_of(doc, app_id, workdir)
                if found is not None:
                    files[doc["metadata"]["name"]] = found
    return files


def _sqlite_file_of(doc: object, app_id: str, workdir: Path) -> Path | None:
    if not isinstance(doc, dict) or doc.get("kind") != "Component":
        return None
    spec = doc.get("spec") or {}
    if spec.get("type") not in _SQLITE_TYPES or app_id not in (doc.get("scopes") or [app_id]):
        return None
    metadata = {item.get("name"): item.get("value") for item in spec.get("metadata") or []}
    location = str(metadata.get("connectionString") or "").removeprefix("file:").partition("?")[0]
    if not location or location == ":memory:":
        return None
    return workdir / location  # relative paths resolve in the sidecar's cwd; an absolute one stays
