"""The `dapr.proto.runtime.v1.Dapr` gRPC service: state, publish, metadata, shutdown, answered as daprd does.

Every other Dapr RPC answers UNIMPLEMENTED naming itself, so a client learns at once what the embedded
sidecar lacks. Each call runs in a server span that continues the caller's `traceparent`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import grpc
import grpc.aio
from dapr.proto.common.v1 import common_pb2
from dapr.proto.runtime.v1 import dapr_pb2, dapr_pb2_grpc, metadata_pb2, pubsub_pb2, state_pb2
from google.protobuf import empty_pb2
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from chassis.sidecar import _cloudevents as ce
from chassis.sidecar import _status
from chassis.sidecar._errors import EtagInvalid, EtagMismatch, IllegalKey, SidecarError
from chassis.sidecar._resources import DRIVERS, Resources
from chassis.sidecar._status import ApiError
from chassis.sidecar._tracing import context_from_metadata, traceparent, tracestate
from chassis.sidecar.components import PubSub, StateStore, TxOp, meta_get

log = logging.getLogger("chassis.sidecar.api")

SERVICE = "dapr.proto.runtime.v1.Dapr"
RUNTIME_VERSION = "mooc-chassis-embedded"
# What daprd's metadata API lists per component type (a subset of the driver's features).
_FIRST_WRITE = common_pb2.StateOptions.CONCURRENCY_FIRST_WRITE

_Self = TypeVar("_Self", bound="DaprApi")
_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")
Context = grpc.aio.ServicerContext[Any, Any]


@dataclass(frozen=True)
class SubscriptionInfo:
    """One programmatic subscription, as the metadata API reports it."""

    pubsub: str
    topic: str
    metadata: dict[str, str]
    rules: tuple[tuple[str, str], ...]  # (match, path); the default route has match ''
    dead_letter_topic: str


@dataclass
class ApiContext:
    """What the API servers share with the sidecar process that runs them."""

    app_id: str
    resources: Resources
    tracer: trace.Tracer
    request_shutdown: Callable[[], None]
    app_port: int | None = None
    app_protocol: str = "grpc"
    app_host: str = "127.0.0.1"
    extended: dict[str, str] = field(default_factory=dict)
    subscriptions: Callable[[], Sequence[SubscriptionInfo]] = lambda: ()


def _traced(
    method: Callable[[_Self, _Req, Context], Awaitable[_Resp]],
) -> Callable[[_Self, _Req, Context], Awaitable[_Resp]]:
    """Run an RPC in a SERVER span (child of the caller's trace) and turn ApiError into the gRPC status."""
    name = f"/{SERVICE}/{method.__name__}"

    @functools.wraps(method)
    async def wrapper(self: _Self, request: _Req, context: Context) -> _Resp:
        parent = context_from_metadata(context.invocation_metadata())
        attributes = {"rpc.system": "grpc", "rpc.service": SERVICE, "rpc.method": method.__name__}
        error: ApiError
        with self.ctx.tracer.start_as_current_span(
            name, context=parent, kind=SpanKind.SERVER, attributes=attributes, record_exception=False
        ) as span:
            try:
                return await method(self, request, context)
            except ApiError as exc:
                error = exc
            except Exception as exc:  # a bug of ours: answer INTERNAL, keep the traceback in the log
                log.exception("%s failed unexpectedly", name)
                error = ApiError(grpc.StatusCode.INTERNAL, f"{method.__name__} failed: {exc}")
            span.set_attribute("rpc.grpc.status_code", error.code.value[0])
            span.set_status(Status(StatusCode.ERROR, error.message))
        log.debug("%s failed: %s", name, error.message)
        await error.abort(context)

    return wrapper


def _unimplemented(rpc: str) -> Callable[..., Awaitable[None]]:
    async def handler(self: DaprApi, request: object, context: Context) -> None:
        await _status.unimplemented(rpc).abort(context)

    handler.__name__ = rpc
    return handler


def _state_error(err: SidecarError, message: str, store: str) -> ApiError:
    """daprd's stateErrorResponse: ETag mismatch ABORTED, invalid ETag INVALID_ARGUMENT, else INTERNAL."""
    if isinstance(err, IllegalKey):
        return _status.illegal_key(store, err.key)
    if isinstance(err, EtagMismatch):
        return ApiError(grpc.StatusCode.ABORTED, message, error_code="ERR_STATE_SAVE", http_status=409)
    if isinstance(err, EtagInvalid):
        return ApiError(
            grpc.StatusCode.INVALID_ARGUMENT, message, error_code="ERR_STATE_SAVE", http_status=400
        )
    return ApiError(grpc.StatusCode.INTERNAL, message, error_code="ERR_STATE_SAVE", http_status=500)


def _ttl(metadata: dict[str, str], store: str) -> int | None:
    text = meta_get(metadata, "ttlInSeconds")
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        message = (
            f"failed saving state in state store {store}: incorrect value for metadata 'ttlInSeconds': {text}"
        )
        raise ApiError(grpc.StatusCode.INTERNAL, message, error_code="ERR_STATE_SAVE") from None


def _etag(item: common_pb2.StateItem | state_pb2.DeleteStateRequest) -> str | None:
    """The SDK only sets `etag` when the caller gave one; an explicit empty ETag still counts."""
    return item.etag.value if item.HasField("etag") else None


def _first_write(item: common_pb2.StateItem | state_pb2.DeleteStateRequest) -> bool:
    return item.HasField("options") and item.options.concurrency == _FIRST_WRITE


def _expire_metadata(expire_time: datetime | None) -> dict[str, str]:
    return {"ttlExpireTime": ce.rfc3339(expire_time)} if expire_time else {}


class DaprApi(dapr_pb2_grpc.DaprServicer):
    """The Dapr runtime API of one embedded sidecar."""

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx
        self._kinds = {spec.name: spec.type for spec in ctx.resources.specs}

    # ---- components -----------------------------------------------------------------------------

    def _store(self, name: str) -> StateStore:
        stores = self.ctx.resources.state_stores
        if not stores:
            raise _status.state_not_configured()
        if name not in stores:
            raise _status.state_store_not_found(name)
        return stores[name]

    def _pubsub(self, name: str, topic: str) -> PubSub:
        brokers = self.ctx.resources.pubsubs
        if not brokers:
            raise _status.pubsub_not_configured()
        if not name:
            raise _status.pubsub_name_empty()
        if name not in brokers:
            raise _status.pubsub_not_found(name)
        if not topic:
            raise _status.pubsub_topic_empty(name, self._kinds.get(name, "pubsub"))
        return brokers[name]

    # ---- state ----------------------------------------------------------------------------------

    @_traced
    async def GetState(
        self, request: state_pb2.GetStateRequest, context: Context
    ) -> state_pb2.GetStateResponse:
        store = self._store(request.store_name)
        try:
            item = await store.get(request.key)
        except SidecarError as err:
            message = f"fail to get {request.key} from state store {request.store_name}: {err}"
            raise _state_error(err, message, request.store_name) from None
        if item is None:
            return state_pb2.GetStateResponse()  # daprd: a missing key is empty data and ETag, not an error
        return state_pb2.GetStateResponse(
            data=item.value, etag=item.etag, metadata=_expire_metadata(item.expire_time)
        )

    @_traced
    async def SaveState(self, request: state_pb2.SaveStateRequest, context: Context) -> empty_pb2.Empty:
        store = self._store(request.store_name)
        ops = [self._upsert(item, request.store_name) for item in request.states]
        try:
            await self._write(store, ops)
        except SidecarError as err:
            message = f"failed saving state in state store {request.store_name}: {err}"
            raise _state_error(err, message, request.store_name) from None
        return empty_pb2.Empty()

    def _upsert(self, item: common_pb2.StateItem, store: str) -> TxOp:
        if not item.key:
            raise _status.invalid_argument("state key cannot be empty")
        metadata = dict(item.metadata)
        return TxOp(
            "upsert",
            item.key,
            item.value,
            etag=_etag(item),
            first_write=_first_write(item),
            ttl_seconds=_ttl(metadata, store),
        )

    @staticmethod
    async def _write(store: StateStore, ops: list[TxOp]) -> None:
        # One item is a plain set; several go in one transaction (daprd's BulkSet on SQLite is one too).
        if len(ops) == 1:
            op = ops[0]
            await store.set(
                op.key, op.value, etag=op.etag, first_write=op.first_write, ttl_seconds=op.ttl_seconds
            )
        elif ops:
            await store.transact(ops)

    @_traced
    async def DeleteState(self, request: state_pb2.DeleteStateRequest, context: Context) -> empty_pb2.Empty:
        store = self._store(request.store_name)
        try:
            await store.delete(request.key, etag=_etag(request), first_write=_first_write(request))
        except SidecarError as err:
            message = f"failed deleting state with key {request.key}: {err}"
            raise _state_error(err, message, request.store_name) from None
        return empty_pb2.Empty()

    @_traced
    async def ExecuteStateTransaction(
        self, request: state_pb2.ExecuteStateTransactionRequest, context: Context
    ) -> empty_pb2.Empty:
        store = self._store(request.storeName)
        ops = [self._transaction_op(op, request.storeName) for op in request.operations]
        try:
            await store.transact(ops)
        except SidecarError as err:
            # daprd answers INTERNAL here for every failure; we keep ABORTED for an ETag mismatch so
            # callers can tell a concurrency conflict from a broken store (the chassis relies on it).
            message = f"error while executing state transaction: {err}"
            raise _state_error(err, message, request.storeName) from None
        return empty_pb2.Empty()

    def _transaction_op(self, op: state_pb2.TransactionalStateOperation, store: str) -> TxOp:
        if op.operationType == "upsert":
            return self._upsert(op.request, store)
        if op.operationType == "delete":
            item = op.request
            return TxOp("delete", item.key, etag=_etag(item), first_write=_first_write(item))
        message = f"operation type {op.operationType} not supported"
        raise ApiError(grpc.StatusCode.UNIMPLEMENTED, message, error_code="ERR_NOT_SUPPORTED_STATE_OPERATION")

    # ---- pub/sub --------------------------------------------------------------------------------

    @_traced
    async def PublishEvent(
        self, request: pubsub_pb2.PublishEventRequest, context: Context
    ) -> empty_pb2.Empty:
        broker = self._pubsub(request.pubsub_name, request.topic)
        kind = self._kinds.get(request.pubsub_name, "pubsub")
        metadata = dict(request.metadata)
        data = self._message(request, metadata, kind)
        try:
            await broker.publish(request.topic, data, metadata)
        except SidecarError as err:
            raise _status.pubsub_publish_failed(request.pubsub_name, kind, request.topic, err) from None
        return empty_pb2.Empty()

    def _message(self, request: pubsub_pb2.PublishEventRequest, metadata: dict[str, str], kind: str) -> bytes:
        """The bytes stored in the broker: the CloudEvent JSON, or the payload itself for rawPayload."""
        span = trace.get_current_span().get_span_context()
        if ce.is_raw_payload(metadata):
            # Without an envelope the trace context travels in the message metadata (daprd does the same).
            metadata.setdefault("traceparent", traceparent(span))
            return request.data
        try:
            envelope = ce.new_envelope(
                source=self.ctx.app_id,
                topic=request.topic,
                pubsub=request.pubsub_name,
                content_type=request.data_content_type,
                data=request.data,
                traceparent=traceparent(span),
                tracestate=tracestate(span),
                metadata=metadata,
            )
        except ce.EnvelopeError:
            raise _status.pubsub_cloudevent_creation(request.pubsub_name, kind) from None
        ce.apply_ttl(envelope, metadata)
        return ce.go_json(envelope)

    # ---- metadata and lifecycle -----------------------------------------------------------------

    @_traced
    async def GetMetadata(
        self, request: metadata_pb2.GetMetadataRequest, context: Context
    ) -> metadata_pb2.GetMetadataResponse:
        return build_metadata(self.ctx)

    @_traced
    async def SetMetadata(
        self, request: metadata_pb2.SetMetadataRequest, context: Context
    ) -> empty_pb2.Empty:
        self.ctx.extended[request.key] = request.value
        return empty_pb2.Empty()

    @_traced
    async def Shutdown(self, request: dapr_pb2.ShutdownRequest, context: Context) -> empty_pb2.Empty:
        log.info("shutdown requested through the API")
        self.ctx.request_shutdown()  # the stop itself runs after this reply is sent
        return empty_pb2.Empty()


IMPLEMENTED = frozenset(
    {"GetState", "SaveState", "DeleteState", "ExecuteStateTransaction", "PublishEvent"}
    | {"GetMetadata", "SetMetadata", "Shutdown"}
)
for _method in dapr_pb2.DESCRIPTOR.services_by_name["Dapr"].methods:
    if _method.name not in IMPLEMENTED:
        setattr(DaprApi, _method.name, _unimplemented(_method.name))


def build_metadata(ctx: ApiContext) -> metadata_pb2.GetMetadataResponse:
    """GetMetadataResponse: app id, loaded components, programmatic subscriptions, extended metadata."""
    components = [
        metadata_pb2.RegisteredComponents(
            name=spec.name,
            type=spec.type,
            version=spec.version,
            capabilities=_capabilities(spec.type, spec.metadata),
        )
        for spec in ctx.resources.specs
        if spec.in_scope(ctx.app_id)
    ]
    return metadata_pb2.GetMetadataResponse(
        id=ctx.app_id,
        registered_components=components,
        extended_metadata=ctx.extended,
        subscriptions=[_subscription(sub) for sub in ctx.subscriptions()],
        app_connection_properties=metadata_pb2.AppConnectionProperties(
            port=ctx.app_port or 0, protocol=ctx.app_protocol, channel_address=ctx.app_host
        ),
        runtime_version=RUNTIME_VERSION,
    )


def _capabilities(kind: str, metadata: dict[str, str]) -> list[str]:
    driver = DRIVERS.get(kind)
    capabilities = list(driver.capabilities if driver else ())
    if kind.startswith("state.") and meta_get(metadata, "actorStateStore").lower() == "true":
        capabilities.append("ACTOR")
    return capabilities


def _subscription(sub: SubscriptionInfo) -> metadata_pb2.PubsubSubscription:
    rules = [metadata_pb2.PubsubSubscriptionRule(match=match, path=path) for match, path in sub.rules]
    return metadata_pb2.PubsubSubscription(
        pubsub_name=sub.pubsub,
        topic=sub.topic,
        metadata=sub.metadata,
        rules=metadata_pb2.PubsubSubscriptionRules(rules=rules),
        dead_letter_topic=sub.dead_letter_topic,
        type=metadata_pb2.PROGRAMMATIC,
    )
