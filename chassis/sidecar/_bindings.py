"""Bindings at runtime: output bindings invoked through the API, input binding events fed to the app.

`invoke_output` is shared by the gRPC `InvokeBinding` and the HTTP `POST /v1.0/bindings/<name>`, so both
answer with daprd's errors. `InputBindings` asks the app which bindings it wants once it is up (gRPC
`ListInputBindings`, or HTTP `OPTIONS /<route>`), starts only those, and delivers each event
(`OnBindingEvent`, or `POST /<route>`) under the binding's inbound resiliency policy; a gRPC reply's
`states`/`to` are saved and sent on as daprd does.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

import grpc
import grpc.aio
from dapr.proto.runtime.v1 import appcallback_pb2, appcallback_pb2_grpc
from google.protobuf import empty_pb2
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from chassis.sidecar._auth import app_interceptors
from chassis.sidecar._bindings_http import HttpAppBindings
from chassis.sidecar._errors import SidecarError
from chassis.sidecar._resources import Resources
from chassis.sidecar._status import ApiError
from chassis.sidecar._tracing import grpc_trace_bin, traceparent, tracestate
from chassis.sidecar.components import BindingCallback, InputBinding, TxOp, meta_get

__all__ = ["InputBindings", "invoke_output"]

log = logging.getLogger("chassis.sidecar.bindings")

CALL_TIMEOUT = 60.0  # one OnBindingEvent call, unless a resiliency timeout is shorter
LIST_RETRY = 0.2


def _invoke_error(name: str, problem: object) -> ApiError:
    # daprd's messages.ErrInvokeOutputBinding.
    return ApiError(
        grpc.StatusCode.INTERNAL,
        f"error when invoke output binding {name}: {problem}",
        error_code="ERR_INVOKE_OUTPUT_BINDING",
        http_status=500,
    )


def _kind(resources: Resources, name: str) -> str:
    return next((spec.type for spec in resources.specs if spec.name == name), "bindings")


async def invoke_output(
    resources: Resources, name: str, operation: str, data: bytes, metadata: Mapping[str, str]
) -> tuple[bytes, dict[str, str]]:
    """Invoke operation `operation` of output binding `name`; ApiError as daprd answers it."""
    binding = resources.output_bindings.get(name)
    if binding is None:
        raise _invoke_error(name, f"couldn't find output binding {name}")
    if operation not in binding.operations:
        supported = " ".join(binding.operations)
        problem = f"binding {name} does not support operation {operation}. supported operations:{supported}"
        raise _invoke_error(name, problem)
    policy = resources.resiliency.component_outbound(name, _kind(resources, name))
    try:
        return await policy.run(lambda: binding.invoke(operation, data, metadata))
    except SidecarError as err:
        raise _invoke_error(name, err) from None


class InputBindings:
    """Delivers input binding events to the app (gRPC or HTTP); one instance per sidecar with an app port."""

    def __init__(
        self,
        *,
        resources: Resources,
        address: str | None,
        tracer: trace.Tracer,
        app_id: str = "",
        protocol: str = "grpc",
    ) -> None:
        self.resources = resources
        self.address = address
        self.tracer = tracer
        self.app_id = app_id
        self.protocol = protocol
        self._channel: grpc.aio.Channel | None = None
        self._stub: appcallback_pb2_grpc.AppCallbackStub | None = None
        self._http: HttpAppBindings | None = None
        self._started: list[InputBinding] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """In the background: wait for the app, ask which bindings it wants, start them."""
        if self.address is None or not self.resources.input_bindings:
            return
        if self.protocol == "http":
            self._http = HttpAppBindings(self.address, _routes(self.resources))
        else:
            self._channel = grpc.aio.insecure_channel(self.address, interceptors=app_interceptors())
            self._stub = appcallback_pb2_grpc.AppCallbackStub(self._channel)  # type: ignore[no-untyped-call]
        self._task = asyncio.create_task(self._run(), name="input-bindings")

    async def stop(self) -> None:
        """Stop the bindings (no new events), then close the app channel."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for binding in self._started:
            await binding.stop()
        self._started.clear()
        if self._channel is not None:
            await self._channel.close(None)
        if self._http is not None:
            await self._http.close()

    async def _run(self) -> None:
        wanted = await self._wanted()
        for name, binding in self.resources.input_bindings.items():
            if name not in wanted:
                log.info("app has not subscribed to binding %s", name)
                continue
            await binding.start(self._callback(name))
            self._started.append(binding)
            log.info("input binding %s started", name)

    async def _wanted(self) -> set[str]:
        """The bindings the app asked for: HTTP apps answer OPTIONS per binding, gRPC apps list them."""
        if self._http is not None:
            return {name for name in self.resources.input_bindings if await self._http.wanted(name)}
        assert self._stub is not None
        return await self._list(self._stub)

    async def _list(self, stub: appcallback_pb2_grpc.AppCallbackStub) -> set[str]:
        """AppCallback.ListInputBindings, retried until the app answers (UNIMPLEMENTED = none)."""
        while True:
            try:
                response = await stub.ListInputBindings(empty_pb2.Empty(), timeout=5.0)
                return set(response.bindings)
            except grpc.aio.AioRpcError as err:
                if err.code() == grpc.StatusCode.UNIMPLEMENTED:
                    return set()
                log.debug("waiting for the app's ListInputBindings: %s", err.code().name)
            await asyncio.sleep(LIST_RETRY)

    def _callback(self, name: str) -> BindingCallback:
        policy = self.resources.resiliency.component_inbound(name, _kind(self.resources, name))

        async def deliver(data: bytes, metadata: dict[str, str]) -> bool:
            with self.tracer.start_as_current_span(
                f"bindings/{name}", kind=SpanKind.CLIENT, attributes={"dapr.binding": name}
            ) as span:
                context = span.get_span_context()
                try:
                    response = await policy.run(lambda: self._send(name, data, metadata, context))
                except (grpc.aio.AioRpcError, SidecarError) as err:
                    span.set_status(Status(StatusCode.ERROR, str(err)))
                    log.warning("error from app consumer for binding %s: %s", name, err)
                    return False
            if response is not None:
                await self._follow_up(name, response)
            return True

        return deliver

    async def _send(
        self, name: str, data: bytes, metadata: dict[str, str], span: trace.SpanContext
    ) -> appcallback_pb2.BindingEventResponse | None:
        """One delivery attempt: OnBindingEvent, or POST /<route> (metadata as headers) for HTTP apps."""
        trace_metadata = _trace_metadata(span)
        if self._http is not None:
            headers = metadata | {key: value for key, value in trace_metadata if isinstance(value, str)}
            await self._http.deliver(name, data, headers)
            return None
        assert self._stub is not None
        request = appcallback_pb2.BindingEventRequest(name=name, data=data, metadata=metadata)
        response: appcallback_pb2.BindingEventResponse = await self._stub.OnBindingEvent(
            request, metadata=trace_metadata, timeout=CALL_TIMEOUT
        )
        return response

    async def _follow_up(self, name: str, response: appcallback_pb2.BindingEventResponse) -> None:
        """The app's reply may save `states` to `store_name` and send `data` to the `to` bindings."""
        if response.store_name and response.states:
            store = self.resources.state_stores.get(response.store_name)
            ops = [TxOp("upsert", item.key, item.value) for item in response.states]
            try:
                if store is None:
                    raise SidecarError(f"state store {response.store_name} is not found")
                await store.transact(ops)
            except SidecarError as err:
                log.error("binding %s: cannot save the app's states: %s", name, err)
        for target in response.to:
            try:
                await invoke_output(self.resources, target, "create", response.data, {})
            except ApiError as err:
                log.error("binding %s: cannot send the app's reply on: %s", name, err.message)


def _routes(resources: Resources) -> dict[str, str]:
    """The `route` metadata of the input bindings that set one (daprd's default is /<name>)."""
    return {
        spec.name: route
        for spec in resources.specs
        if spec.name in resources.input_bindings and (route := meta_get(spec.metadata, "route"))
    }


def _trace_metadata(span: trace.SpanContext) -> list[tuple[str, str | bytes]]:
    metadata: list[tuple[str, str | bytes]] = [("traceparent", traceparent(span))]
    if state := tracestate(span):
        metadata.append(("tracestate", state))
    metadata.append(("grpc-trace-bin", grpc_trace_bin(span)))
    return metadata
