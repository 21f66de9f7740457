"""The `dapr.proto.runtime.v1.Dapr` gRPC service: state, publish, metadata, shutdown, answered as daprd does.

Every other Dapr RPC answers UNIMPLEMENTED naming itself, so a client learns at once what the embedded
sidecar lacks. Each call runs in a server span that continues the caller's `traceparent`.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import grpc.aio
from dapr.proto.common.v1 import common_pb2
from dapr.proto.runtime.v1 import (
    binding_pb2,
    dapr_pb2,
    dapr_pb2_grpc,
    invoke_pb2,
    metadata_pb2,
    pubsub_pb2,
    secret_pb2,
    state_pb2,
)
from google.protobuf import empty_pb2
from google.protobuf.message import DecodeError
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from chassis.sidecar import _bulk_publish, _grpc_more, _metrics, _status, _streaming
from chassis.sidecar._operations import Operations
from chassis.sidecar._operations import expire_metadata as _expire_metadata
from chassis.sidecar._operations import state_error as _state_error  # noqa: F401 (kept for importers)
from chassis.sidecar._operations import ttl as _ttl  # noqa: F401 (kept for importers)
from chassis.sidecar._resources import DRIVERS, Resources
from chassis.sidecar._status import ApiError
from chassis.sidecar._tracing import context_from_metadata
from chassis.sidecar.components import PubSub, StateStore, TxOp, meta_get

if TYPE_CHECKING:
    from chassis.sidecar._delivery import Deliverer
    from chassis.sidecar._outbox import Outbox
    from chassis.sidecar._registry import AppRegistry

log = logging.getLogger("chassis.sidecar.api")

SERVICE = "dapr.proto.runtime.v1.Dapr"
RUNTIME_VERSION = "mooc-chassis-embedded"
# What daprd's metadata API lists per component type (a subset of the driver's features).
_FIRST_WRITE = common_pb2.StateOptions.CONCURRENCY_FIRST_WRITE

_Self = TypeVar("_Self", bound="DaprApi")
_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")
Context = grpc.aio.ServicerContext[Any, Any]
UNMARSHAL_ERROR = "grpc: error unmarshalling request: "  # grpc-go's text (daprd), with code INTERNAL

if TYPE_CHECKING:
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:  # grpc's classes are not generic at runtime
    _ServerInterceptor = grpc.aio.ServerInterceptor


@dataclass(frozen=True)
class SubscriptionInfo:
    """One subscription, as the metadata API reports it."""

    pubsub: str
    topic: str
    metadata: dict[str, str]
    rules: tuple[tuple[str, str], ...]  # (match, path); the default route has match ''
    dead_letter_topic: str
    type: str = "PROGRAMMATIC"  # or DECLARATIVE, STREAMING (metadata_pb2.PubsubSubscriptionType)


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
    deliverer: Deliverer | None = None  # where streaming subscriptions bind (set by the sidecar)
    registry: AppRegistry | None = None  # where InvokeService finds other apps (set by the sidecar)
    outbox: Outbox | None = None  # transactional outbox of the stores that configure one (set by the sidecar)


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

    return _metrics.metered(method.__name__, wrapper)


@dataclass(frozen=True)
class _Undecodable:
    """What a request that is not valid protobuf deserializes to, so the handler can answer it."""

    problem: str


class DecodeErrors(_ServerInterceptor):
    """Answer a request that is not valid protobuf as daprd (grpc-go) does: INTERNAL, "grpc: error
    unmarshalling request: ...". Left to grpc.aio, it is UNKNOWN naming a Python class, plus a logged
    traceback for every such request."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming or handler.request_deserializer is None:
            return handler  # raw bytes (the proxy, a token rejection) or a request stream
        return _decoding(handler)


def _decoding(handler: Any) -> grpc.RpcMethodHandler[Any, Any]:
    """The handler with a deserializer that never raises, and a behaviour that answers its failures."""
    decode = handler.request_deserializer

    def deserialize(data: bytes) -> object:
        try:
            return decode(data)
        except DecodeError as err:
            return _Undecodable(str(err))

    async def refuse(request: object, context: Context) -> None:
        if isinstance(request, _Undecodable):
            await context.abort(grpc.StatusCode.INTERNAL, UNMARSHAL_ERROR + request.problem)

    async def unary_unary(request: object, context: Context) -> Any:
        await refuse(request, context)
        return await handler.unary_unary(request, context)

    async def unary_stream(request: object, context: Context) -> None:
        await refuse(request, context)
        result = handler.unary_stream(request, context)
        if inspect.isasyncgen(result):
            async for response in result:
                await context.write(response)
        else:
            await result

    # RpcMethodHandler is a namedtuple at runtime (grpc._utilities), typed as a plain class.
    if handler.unary_unary is not None:
        wrapped: grpc.RpcMethodHandler[Any, Any] = handler._replace(
            request_deserializer=deserialize, unary_unary=unary_unary
        )
    else:
        wrapped = handler._replace(request_deserializer=deserialize, unary_stream=unary_stream)
    return wrapped


def _unimplemented(rpc: str) -> Callable[..., Awaitable[None]]:
    async def handler(self: DaprApi, request: object, context: Context) -> None:
        await _status.unimplemented(rpc).abort(context)

    handler.__name__ = rpc
    return handler


def _etag(item: common_pb2.StateItem | state_pb2.DeleteStateRequest) -> str | None:
    """The SDK only sets `etag` when the caller gave one; an explicit empty ETag still counts."""
    return item.etag.value if item.HasField("etag") else None


def _first_write(item: common_pb2.StateItem | state_pb2.DeleteStateRequest) -> bool:
    return item.HasField("options") and item.options.concurrency == _FIRST_WRITE


class DaprApi(dapr_pb2_grpc.DaprServicer):
    """The Dapr runtime API of one embedded sidecar."""

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx
        self.ops = Operations(ctx)  # shared with the HTTP API
        self._kinds = self.ops.kinds

    # ---- components -----------------------------------------------------------------------------

    def _store(self, name: str) -> StateStore:
        return self.ops.store(name)

    def _pubsub(self, name: str, topic: str) -> PubSub:
        return self.ops.pubsub(name, topic)

    # ---- state ----------------------------------------------------------------------------------

    @_traced
    async def GetState(
        self, request: state_pb2.GetStateRequest, context: Context
    ) -> state_pb2.GetStateResponse:
        item = await self.ops.get_state(request.store_name, request.key)
        if item is None:
            return state_pb2.GetStateResponse()  # daprd: a missing key is empty data and ETag, not an error
        return state_pb2.GetStateResponse(
            data=item.value, etag=item.etag, metadata=_expire_metadata(item.expire_time)
        )

    @_traced
    async def SaveState(self, request: state_pb2.SaveStateRequest, context: Context) -> empty_pb2.Empty:
        self._store(request.store_name)  # an unknown store is reported before a bad item
        ops = [self._upsert(item, request.store_name) for item in request.states]
        await self.ops.save_state(request.store_name, ops)
        return empty_pb2.Empty()

    def _upsert(self, item: common_pb2.StateItem, store: str) -> TxOp:
        return self.ops.upsert(
            store,
            item.key,
            item.value,
            etag=_etag(item),
            first_write=_first_write(item),
            metadata=dict(item.metadata),
        )

    @_traced
    async def DeleteState(self, request: state_pb2.DeleteStateRequest, context: Context) -> empty_pb2.Empty:
        await self.ops.delete_state(
            request.store_name, request.key, etag=_etag(request), first_write=_first_write(request)
        )
        return empty_pb2.Empty()

    @_traced
    async def ExecuteStateTransaction(
        self, request: state_pb2.ExecuteStateTransactionRequest, context: Context
    ) -> empty_pb2.Empty:
        self._store(request.storeName)  # an unknown store is reported before a bad operation
        ops = [self._transaction_op(op, request.storeName) for op in request.operations]
        await self.ops.transact(request.storeName, ops)
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
        await self.ops.publish(
            request.pubsub_name,
            request.topic,
            request.data,
            request.data_content_type,
            dict(request.metadata),
        )
        return empty_pb2.Empty()

    def _message(self, request: pubsub_pb2.PublishEventRequest, metadata: dict[str, str], kind: str) -> bytes:
        """The bytes stored in the broker for one request (kept for the bulk/outbox callers)."""
        return self.ops.message(
            request.pubsub_name, request.topic, request.data, request.data_content_type, metadata
        )

    @_traced
    async def BulkPublishEvent(
        self, request: pubsub_pb2.BulkPublishRequest, context: Context
    ) -> pubsub_pb2.BulkPublishResponse:
        return await _bulk_publish.bulk_publish(self.ctx, self.ops, request, "BulkPublishEvent")

    @_traced
    async def BulkPublishEventAlpha1(
        self, request: pubsub_pb2.BulkPublishRequest, context: Context
    ) -> pubsub_pb2.BulkPublishResponse:
        return await _bulk_publish.bulk_publish(self.ctx, self.ops, request, "BulkPublishEventAlpha1")

    async def SubscribeTopicEventsAlpha1(self, request_iterator: object, context: Context) -> None:
        """Bidirectional stream (in _streaming); no span for the whole stream, one per delivery."""
        await _streaming.subscribe_topic_events(self.ctx, context)

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

    # ---- bulk state, bindings, secrets, InvokeService (in _grpc_more) ---------------------------

    @_traced
    async def GetBulkState(
        self, request: state_pb2.GetBulkStateRequest, context: Context
    ) -> state_pb2.GetBulkStateResponse:
        return await _grpc_more.get_bulk_state(self, request)

    @_traced
    async def DeleteBulkState(
        self, request: state_pb2.DeleteBulkStateRequest, context: Context
    ) -> empty_pb2.Empty:
        return await _grpc_more.delete_bulk_state(self, request)

    @_traced
    async def InvokeBinding(
        self, request: binding_pb2.InvokeBindingRequest, context: Context
    ) -> binding_pb2.InvokeBindingResponse:
        return await _grpc_more.invoke_binding(self, request)

    @_traced
    async def GetSecret(
        self, request: secret_pb2.GetSecretRequest, context: Context
    ) -> secret_pb2.GetSecretResponse:
        return await _grpc_more.get_secret(self.ctx, request)

    @_traced
    async def GetBulkSecret(
        self, request: secret_pb2.GetBulkSecretRequest, context: Context
    ) -> secret_pb2.GetBulkSecretResponse:
        return await _grpc_more.get_bulk_secret(self.ctx, request)

    @_traced
    async def InvokeService(
        self, request: invoke_pb2.InvokeServiceRequest, context: Context
    ) -> common_pb2.InvokeResponse:
        return await _grpc_more.invoke_service(self, request)

    @_traced
    async def Shutdown(self, request: dapr_pb2.ShutdownRequest, context: Context) -> empty_pb2.Empty:
        log.info("shutdown requested through the API")
        self.ctx.request_shutdown()  # the stop itself runs after this reply is sent
        return empty_pb2.Empty()


IMPLEMENTED = frozenset(
    {"GetState", "SaveState", "DeleteState", "ExecuteStateTransaction", "PublishEvent"}
    | {"GetMetadata", "SetMetadata", "Shutdown"}
    | _grpc_more.RPCS
    | {"BulkPublishEvent", "BulkPublishEventAlpha1", "SubscribeTopicEventsAlpha1"}
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
        type=metadata_pb2.PubsubSubscriptionType.Value(sub.type),
    )
