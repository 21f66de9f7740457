"""Proctoring hooks: a service marks exam RPCs; the chassis taps them and, where asked, gates them.

    service.proctor("SubmitAssignment")             # tap: timings and client signals, published
    service.proctor("StartExam", gate=True)         # and ask proctoring before the call runs

A tap never slows or fails the learner's call: the signal goes on a bounded queue (the newest is
dropped, and counted, when it is full) and a background task hands it to the configured hooks; the
built-in `publish` hook publishes it to `proctoring.signals`. A gate asks the proctoring service once,
under a strict deadline, and its fail-open or fail-closed policy decides what silence means.

The messages come from the project's contracts (proto/mooc/events/v1/proctoring.proto and
proto/mooc/proctoring/v1/proctoring.proto), imported only once a service proctors an RPC.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Literal, Protocol

import grpc
from google.protobuf import descriptor_pool
from opentelemetry import context as otel_context
from opentelemetry.instrumentation.grpc import aio_client_interceptors
from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from chassis._contract import served_api
from chassis._errors import ConfigError, ContractError
from chassis._metrics import record_proctoring_gate, record_proctoring_signal
from chassis._middleware import Call, Next
from chassis._pubsub import Publisher
from chassis._settings import ServiceSettings, settings_problem, sidecar_grpc_port
from chassis._telemetry import current_traceparent, trace_id_of

if TYPE_CHECKING:
    from mooc.events.v1.proctoring_pb2 import EngagementSignal
    from mooc.proctoring.v1.proctoring_pb2 import CheckActionRequest

SIGNALS_TOPIC = "proctoring.signals"
HOOKS_GROUP = "mooc_chassis.proctoring"  # entry points: name -> a HookFactory
SIGNAL_METADATA_PREFIX = "x-proctoring-"
# What CheckActionRequest.client_signals accepts (proto/mooc/proctoring/v1/proctoring.proto).
MAX_CLIENT_SIGNALS, MAX_SIGNAL_NAME, MAX_SIGNAL_VALUE = 32, 64, 256
APP_ID_METADATA = "dapr-app-id"
HOOKS_ENV = "CHASSIS_PROCTORING_HOOKS"
_DROP_LOG_INTERVAL = 10.0  # seconds between two "queue full" warnings

_log = logging.getLogger("chassis.proctoring")


class ProctoringSettings(BaseSettings):
    """Read when a service that proctors RPCs starts; a bad value stops it with one line."""

    # Only the CHASSIS_PROCTORING_* names: by field name, `app_id` would read the service's own APP_ID.
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    hooks: str = Field(default="publish", validation_alias=HOOKS_ENV, min_length=1)
    queue_size: int = Field(default=1000, validation_alias="CHASSIS_PROCTORING_QUEUE", ge=1)
    gate_timeout: float = Field(default=0.3, validation_alias="CHASSIS_PROCTORING_GATE_TIMEOUT", gt=0)
    fail: Literal["open", "closed"] = Field(default="open", validation_alias="CHASSIS_PROCTORING_FAIL")
    app_id: str = Field(default="proctoring", validation_alias="CHASSIS_PROCTORING_APP_ID", min_length=1)
    flush_seconds: float = Field(default=2.0, validation_alias="CHASSIS_PROCTORING_FLUSH_SECONDS", ge=0)

    @property
    def hook_names(self) -> list[str]:
        return [name.strip() for name in self.hooks.split(",") if name.strip()]


def load_proctoring_settings() -> ProctoringSettings:
    """The settings from the environment and `.env`; ConfigError naming the variable when one is bad."""
    try:
        return ProctoringSettings()
    except ValidationError as err:
        raise ConfigError(settings_problem(ProctoringSettings, err)) from None


class ProctoringHook(Protocol):
    """Receives every engagement signal, after the call, off the learner's path; may be slow or fail."""

    async def on_signal(self, signal: EngagementSignal) -> None: ...


@dataclass(frozen=True)
class ProctoringHookContext:
    """What a hook factory gets: the service's name, its declared signal publication, the settings."""

    app_id: str
    signals: Publisher[EngagementSignal]
    settings: ProctoringSettings


class HookFactory(Protocol):
    """What an entry point of group `mooc_chassis.proctoring` (or a `module:attribute`) names."""

    def __call__(self, context: ProctoringHookContext) -> ProctoringHook: ...


class PublishSignals:
    """The built-in hook `publish`: each signal to topic `proctoring.signals`, as a CloudEvent."""

    def __init__(self, context: ProctoringHookContext) -> None:
        self._signals = context.signals

    async def on_signal(self, signal: EngagementSignal) -> None:
        # The signal id is the event id, so a retried publish is a duplicate consumers can recognise.
        await self._signals.publish(signal, event_id=signal.signal_id)


# Also registered as an entry point (pyproject.toml), where it is listed beside installed hooks;
# kept here so a checkout that was not reinstalled still starts with the default.
_BUILT_IN: dict[str, HookFactory] = {"publish": PublishSignals}


def load_hooks(names: Sequence[str], context: ProctoringHookContext) -> list[tuple[str, ProctoringHook]]:
    """The hooks `names` choose: entry point names, or `module:attribute` of a HookFactory."""
    installed = {ep.name: ep for ep in entry_points(group=HOOKS_GROUP)}
    hooks = []
    for name in names:
        try:
            if ":" in name:
                module, _, attribute = name.partition(":")
                factory: HookFactory = getattr(importlib.import_module(module), attribute)
            elif name in installed:
                factory = installed[name].load()
            elif name in _BUILT_IN:
                factory = _BUILT_IN[name]
            else:
                known = ", ".join(sorted({*installed, *_BUILT_IN}))
                raise ConfigError(
                    f"{HOOKS_ENV}: unknown hook {name!r}; installed: {known} (or give module:attribute)"
                )
            hooks.append((name, factory(context)))
        except (ImportError, AttributeError, TypeError) as err:
            raise ConfigError(f"{HOOKS_ENV}: cannot load hook {name!r}: {err}") from err
    return hooks


class SignalQueue:
    """A bounded queue of signals and the task that hands them to the hooks, one at a time."""

    def __init__(self, hooks: Sequence[tuple[str, ProctoringHook]], size: int) -> None:
        self._hooks = hooks
        self._queue: asyncio.Queue[tuple[EngagementSignal, otel_context.Context]] = asyncio.Queue(size)
        self._worker: asyncio.Task[None] | None = None
        self._dropped = 0  # since the last warning
        self._warned_at = float("-inf")

    def start(self) -> None:
        self._worker = asyncio.create_task(self._run(), name="proctoring-signals")

    def offer(self, signal: EngagementSignal) -> None:
        """Queue `signal` with the call's trace context, or drop it at once when the queue is full."""
        try:
            self._queue.put_nowait((signal, otel_context.get_current()))
        except asyncio.QueueFull:
            record_proctoring_signal("dropped")
            self._dropped += 1
            now = time.monotonic()
            if now - self._warned_at >= _DROP_LOG_INTERVAL:
                _log.warning(
                    "proctoring signal queue full (%d): dropped %d newest signal(s); hooks are slow or down",
                    self._queue.maxsize,
                    self._dropped,
                )
                self._warned_at, self._dropped = now, 0

    async def close(self, flush_seconds: float) -> None:
        """Let the hooks take what is queued for at most `flush_seconds`, then stop."""
        try:
            await asyncio.wait_for(self._queue.join(), flush_seconds)
        except TimeoutError:
            _log.warning("proctoring: %d signal(s) left unsent at shutdown", self._queue.qsize())
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            signal, context = await self._queue.get()
            # The hooks run in the call's trace, so a published signal joins the learner's trace.
            token = otel_context.attach(context)
            try:
                await self._deliver(signal)
            finally:
                otel_context.detach(token)
                self._queue.task_done()

    async def _deliver(self, signal: EngagementSignal) -> None:
        for name, hook in self._hooks:
            try:
                await hook.on_signal(signal)
            except Exception as err:
                record_proctoring_signal("failed", hook=name)
                _log.warning("proctoring hook %s failed for %s: %s", name, signal.method, err)
            else:
                record_proctoring_signal("delivered", hook=name)


@dataclass(frozen=True)
class Mark:
    """How one RPC is proctored."""

    gate: bool
    learner_field: str | None  # the request field naming the learner


@dataclass(frozen=True)
class GateAnswer:
    outcome: Literal["ALLOW", "HOLD", "FAIL_OPEN", "FAIL_CLOSED"]
    reason: str


class Gate:
    """Asks the proctoring service, through the sidecar, whether an action may go ahead: once, no retries."""

    def __init__(self, service: ServiceSettings, settings: ProctoringSettings) -> None:
        from mooc.proctoring.v1 import proctoring_pb2_grpc

        self._settings = settings
        interceptors: list[Any] = aio_client_interceptors()  # type: ignore[no-untyped-call]
        address = f"127.0.0.1:{sidecar_grpc_port(service)}"
        self._channel = grpc.aio.insecure_channel(address, interceptors=interceptors)
        self._stub = proctoring_pb2_grpc.ProctoringServiceStub(self._channel)

    async def check(self, request: CheckActionRequest) -> GateAnswer:
        from mooc.proctoring.v1.proctoring_pb2 import CheckActionResponse

        try:
            response = await self._stub.CheckAction(
                request,
                timeout=self._settings.gate_timeout,
                metadata=((APP_ID_METADATA, self._settings.app_id),),
            )
        except grpc.aio.AioRpcError as err:
            return self._no_answer(f"{err.code().name}: {err.details()}")
        if response.decision == CheckActionResponse.DECISION_ALLOW:
            return GateAnswer("ALLOW", response.reason)
        if response.decision == CheckActionResponse.DECISION_HOLD:
            return GateAnswer("HOLD", response.reason or "no reason given")
        return self._no_answer("no decision")

    def _no_answer(self, why: str) -> GateAnswer:
        closed = self._settings.fail == "closed"
        _log.warning(
            "proctoring gate: %s did not decide (%s); failing %s",
            self._settings.app_id,
            why,
            self._settings.fail,
        )
        return GateAnswer("FAIL_CLOSED" if closed else "FAIL_OPEN", why)

    async def close(self) -> None:
        await self._channel.close(grace=None)


class Proctoring:
    """One service's proctored RPCs, the middleware that taps (and gates) them, and the signal queue."""

    def __init__(self, app_id: str, service: ServiceSettings) -> None:
        self._app_id = app_id
        self._service = service
        self._marks: dict[str, Mark] = {}  # as the service named them
        self._by_method: dict[str, Mark] = {}  # full method -> mark, once started
        self._queue: SignalQueue | None = None
        self._gate: Gate | None = None
        self.signals: Publisher[EngagementSignal] | None = None  # declared by Service.proctor
        self._signal_type: type[EngagementSignal] | None = None
        self.settings: ProctoringSettings | None = None

    @property
    def marked(self) -> bool:
        return bool(self._marks)

    def mark(self, methods: Iterable[str], *, gate: bool, learner_field: str | None) -> None:
        for method in methods:
            self._marks[method] = Mark(gate, learner_field)

    async def start(self, servicers: Iterable[Any]) -> None:
        """Resolve the marks against the served RPCs, load settings and hooks, start the queue."""
        if not self._marks or self.signals is None:
            return
        self._by_method = _resolve(self._marks, [served_api(s).service for s in servicers])
        self._signal_type = self.signals.event
        self.settings = settings = load_proctoring_settings()
        context = ProctoringHookContext(self._app_id, self.signals, settings)
        self._queue = SignalQueue(load_hooks(settings.hook_names, context), settings.queue_size)
        if any(mark.gate for mark in self._by_method.values()):
            self._gate = Gate(self._service, settings)
        self._queue.start()

    async def stop(self) -> None:
        """Flush what is queued (for CHASSIS_PROCTORING_FLUSH_SECONDS at most) and close the gate."""
        if self._queue is not None and self.settings is not None:
            await self._queue.close(self.settings.flush_seconds)
        if self._gate is not None:
            await self._gate.close()

    async def middleware(self, call: Call, call_next: Next) -> Any:
        """Taps a proctored RPC (and gates it first where asked); everything else passes by."""
        mark = self._by_method.get(call.name) if call.kind == "rpc" else None
        if mark is None or self._queue is None or self._signal_type is None:
            return await call_next(call)
        started_at = datetime.now(UTC)
        started = time.perf_counter()
        client_signals = _client_signals(call.metadata)
        learner_id = _field_text(call, mark.learner_field)
        gate_outcome = ""
        error: BaseException | None = None
        try:
            if mark.gate and self._gate is not None:
                answer = await self._ask_gate(call, learner_id, client_signals)
                gate_outcome = answer.outcome
                await self._enforce(call, answer)
            return await call_next(call)
        except BaseException as err:
            error = err
            raise
        finally:
            signal = self._signal_type(
                signal_id=str(uuid.uuid4()),
                app_id=self._app_id,
                method=call.name,
                learner_id=learner_id,
                status_code=_status_name(call, error),
                client_signals=client_signals,
                trace_id=_trace_id(),
                gate_outcome=gate_outcome,
            )
            signal.started_at.FromDatetime(started_at)
            signal.duration.FromTimedelta(timedelta(seconds=time.perf_counter() - started))
            self._queue.offer(signal)

    async def _ask_gate(self, call: Call, learner_id: str, client_signals: dict[str, str]) -> GateAnswer:
        from mooc.proctoring.v1.proctoring_pb2 import CheckActionRequest

        assert self._gate is not None
        request = CheckActionRequest(
            learner_id=learner_id,
            action=call.method,
            app_id=self._app_id,
            method=call.name,
            client_signals=client_signals,
        )
        answer = await self._gate.check(request)
        record_proctoring_gate(answer.outcome, call.method)
        return answer

    async def _enforce(self, call: Call, answer: GateAnswer) -> None:
        """Abort the call the gate held, or that fail-closed refuses; otherwise let it run."""
        assert self.settings is not None
        if call.rpc is not None and answer.outcome == "HOLD":
            await call.rpc.abort(grpc.StatusCode.FAILED_PRECONDITION, f"held by proctoring: {answer.reason}")
        if call.rpc is not None and answer.outcome == "FAIL_CLOSED":
            await call.rpc.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"proctoring ({self.settings.app_id}) did not decide within "
                f"{self.settings.gate_timeout:g}s and CHASSIS_PROCTORING_FAIL=closed: {answer.reason}",
            )


def signal_type() -> type[EngagementSignal]:
    """The EngagementSignal class, or a ContractError saying which proto the project lacks."""
    try:
        from mooc.events.v1.proctoring_pb2 import EngagementSignal
    except ImportError as err:
        raise ContractError(
            "proctoring needs proto/mooc/events/v1/proctoring.proto and "
            f"proto/mooc/proctoring/v1/proctoring.proto compiled (`chassis protoc`): {err}"
        ) from err
    return EngagementSignal


def _resolve(marks: dict[str, Mark], served_services: Iterable[str]) -> dict[str, Mark]:
    """Each mark by the full method it names; a name no served RPC has is a ConfigError."""
    pool = descriptor_pool.Default()
    methods = {
        f"/{service}/{method.name}": method
        for service in served_services
        for method in pool.FindServiceByName(service).methods
    }
    resolved: dict[str, Mark] = {}
    for name, mark in marks.items():
        found = [full for full in methods if name in (full, full.rsplit("/", 1)[-1])]
        if not found:
            served = ", ".join(sorted(m.rsplit("/", 1)[-1] for m in methods)) or "none"
            raise ConfigError(f"proctor({name!r}): the service serves no such RPC (it serves: {served})")
        if mark.gate and not mark.learner_field:
            raise ConfigError(f"proctor({name!r}, gate=True): a gate asks about a learner; set learner_field")
        for full in found:
            field = mark.learner_field
            if field and field not in methods[full].input_type.fields_by_name:
                raise ConfigError(
                    f"proctor({name!r}): {methods[full].input_type.full_name} has no field {field!r}; "
                    "pass learner_field= the field naming the learner, or None"
                )
            resolved[full] = mark
    return resolved


def _client_signals(metadata: dict[str, str]) -> dict[str, str]:
    """The caller's `x-proctoring-<name>` values by name, bounded so a client cannot bloat the events."""
    found: dict[str, str] = {}
    for key, value in metadata.items():
        name = key.removeprefix(SIGNAL_METADATA_PREFIX)
        if key.startswith(SIGNAL_METADATA_PREFIX) and 0 < len(name) <= MAX_SIGNAL_NAME:
            found[name] = value[:MAX_SIGNAL_VALUE]
            if len(found) == MAX_CLIENT_SIGNALS:
                break
    return found


def _field_text(call: Call, field: str | None) -> str:
    if not field or call.message is None or field not in call.message.DESCRIPTOR.fields_by_name:
        return ""
    return str(getattr(call.message, field))


def _status_name(call: Call, error: BaseException | None) -> str:
    """The call's gRPC status as the learner will see it."""
    if error is None:
        return "OK"
    if isinstance(error, asyncio.CancelledError):
        return "CANCELLED"
    code = call.rpc.code() if call.rpc is not None else None
    return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"


def _trace_id() -> str:
    return trace_id_of(current_traceparent()) or ""
