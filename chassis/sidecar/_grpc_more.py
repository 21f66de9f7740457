"""The rest of the Dapr gRPC API: bulk state, bindings, secrets and the deprecated InvokeService.

`DaprApi` (in _grpc_api) delegates these RPCs here, so that module stays about the core calls. Each
function answers as daprd does: same messages, codes and per-item errors.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import grpc
import grpc.aio
from dapr.proto.common.v1 import common_pb2
from dapr.proto.runtime.v1 import (
    appcallback_pb2_grpc,
    binding_pb2,
    invoke_pb2,
    secret_pb2,
    state_pb2,
)
from google.protobuf import empty_pb2
from opentelemetry import trace

from chassis.sidecar._auth import app_interceptors
from chassis.sidecar._bindings import invoke_output
from chassis.sidecar._errors import EtagInvalid, EtagMismatch, IllegalKey, SidecarError
from chassis.sidecar._operations import expire_metadata, state_error
from chassis.sidecar._status import ApiError
from chassis.sidecar._tracing import grpc_trace_bin, traceparent
from chassis.sidecar.components import SecretStore, StateStore, TxOp

if TYPE_CHECKING:
    from chassis.sidecar._grpc_api import ApiContext, DaprApi

__all__ = ["RPCS"]

RPCS = frozenset(
    {"GetBulkState", "DeleteBulkState", "InvokeBinding", "InvokeService", "GetSecret", "GetBulkSecret"}
)
_FIRST_WRITE = common_pb2.StateOptions.CONCURRENCY_FIRST_WRITE


# ---- state ------------------------------------------------------------------------------------


async def get_bulk_state(
    api: DaprApi, request: state_pb2.GetBulkStateRequest
) -> state_pb2.GetBulkStateResponse:
    """Every key read with at most `parallelism` reads in flight; a failing key carries its `error`."""
    store = api.ops.store(request.store_name)
    policy = api.ctx.resources.resiliency.component_outbound(request.store_name, "state")
    limit = asyncio.Semaphore(request.parallelism if request.parallelism > 0 else max(1, len(request.keys)))

    async def one(key: str) -> state_pb2.BulkStateItem:
        async with limit:
            try:
                item = await policy.run(lambda: store.get(key), retryable=_retryable)
            except IllegalKey as err:
                raise state_error(err, str(err), request.store_name, "ERR_STATE_BULK_GET") from None
            except SidecarError as err:
                return state_pb2.BulkStateItem(key=key, error=str(err))
        if item is None:
            return state_pb2.BulkStateItem(key=key)
        return state_pb2.BulkStateItem(
            key=key, data=item.value, etag=item.etag, metadata=expire_metadata(item.expire_time)
        )

    items = await asyncio.gather(*(one(key) for key in request.keys))
    return state_pb2.GetBulkStateResponse(items=items)


async def delete_bulk_state(api: DaprApi, request: state_pb2.DeleteBulkStateRequest) -> empty_pb2.Empty:
    """Delete all the items in one transaction (daprd's BulkDelete is transactional on SQL stores)."""
    store: StateStore = api.ops.store(request.store_name)
    ops = [
        TxOp(
            "delete",
            item.key,
            etag=item.etag.value if item.HasField("etag") else None,
            first_write=item.HasField("options") and item.options.concurrency == _FIRST_WRITE,
        )
        for item in request.states
    ]
    policy = api.ctx.resources.resiliency.component_outbound(request.store_name, "state")
    try:
        await policy.run(lambda: store.transact(ops), retryable=_retryable)
    except SidecarError as err:
        message = f"failed deleting state in state store {request.store_name}: {err}"
        raise state_error(err, message, request.store_name, "ERR_STATE_DELETE") from None
    return empty_pb2.Empty()


def _retryable(error: BaseException) -> bool:
    """A caller's mistake (bad key, ETag) is not retried and does not count against the breaker."""
    return not isinstance(error, EtagMismatch | EtagInvalid | IllegalKey)


# ---- bindings ---------------------------------------------------------------------------------


async def invoke_binding(
    api: DaprApi, request: binding_pb2.InvokeBindingRequest
) -> binding_pb2.InvokeBindingResponse:
    """Output binding call; the binding's reply data and metadata come back as they are."""
    data, metadata = await invoke_output(
        api.ctx.resources, request.name, request.operation, request.data, dict(request.metadata)
    )
    return binding_pb2.InvokeBindingResponse(data=data, metadata=metadata)


# ---- secrets ----------------------------------------------------------------------------------


def _secret_store(ctx: ApiContext, name: str) -> SecretStore:
    stores = ctx.resources.secret_stores
    if not stores:
        raise ApiError(
            grpc.StatusCode.FAILED_PRECONDITION,
            "secret store is not configured",
            error_code="ERR_SECRET_STORES_NOT_CONFIGURED",
        )
    if name not in stores:
        raise ApiError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"failed finding secret store with key {name}",
            error_code="ERR_SECRET_STORE_NOT_FOUND",
            http_status=401,
        )
    return stores[name]


async def get_secret(ctx: ApiContext, request: secret_pb2.GetSecretRequest) -> secret_pb2.GetSecretResponse:
    """One secret's key/value map (gRPC GetSecret and HTTP GET /v1.0/secrets/<store>/<key>)."""
    store = _secret_store(ctx, request.store_name)
    policy = ctx.resources.resiliency.component_outbound(request.store_name, "secretstores")
    try:
        data = await policy.run(lambda: store.get(request.key, dict(request.metadata)), retryable=_not_key)
    except (KeyError, SidecarError) as err:
        problem = f"secret {request.key} not found" if isinstance(err, KeyError) else str(err)
        message = (
            f"failed getting secret with key {request.key} from secret store {request.store_name}: {problem}"
        )
        raise ApiError(grpc.StatusCode.INTERNAL, message, error_code="ERR_SECRET_GET") from None
    return secret_pb2.GetSecretResponse(data=data)


async def get_bulk_secret(
    ctx: ApiContext, request: secret_pb2.GetBulkSecretRequest
) -> secret_pb2.GetBulkSecretResponse:
    """Every secret of the store, each as its key/value map (gRPC and HTTP `.../bulk`)."""
    store = _secret_store(ctx, request.store_name)
    policy = ctx.resources.resiliency.component_outbound(request.store_name, "secretstores")
    try:
        secrets = await policy.run(lambda: store.bulk(dict(request.metadata)))
    except SidecarError as err:
        message = f"failed getting secrets from secret store {request.store_name}: {err}"
        raise ApiError(grpc.StatusCode.INTERNAL, message, error_code="ERR_SECRET_GET") from None
    return secret_pb2.GetBulkSecretResponse(
        data={key: secret_pb2.SecretResponse(secrets=values) for key, values in secrets.items()}
    )


def _not_key(error: BaseException) -> bool:
    return not isinstance(error, KeyError)


# ---- service invocation (deprecated path) -----------------------------------------------------


async def invoke_service(api: DaprApi, request: invoke_pb2.InvokeServiceRequest) -> common_pb2.InvokeResponse:
    """AppCallback.OnInvoke on the target app, under the target's app resiliency policy."""
    ctx = api.ctx
    address = await _address(ctx, request.id)
    if address is None:
        message = f"failed to invoke, id: {request.id}, err: couldn't find service: {request.id}"
        raise ApiError(grpc.StatusCode.INTERNAL, message, error_code="ERR_DIRECT_INVOKE")
    span = trace.get_current_span().get_span_context()
    metadata = [
        ("dapr-caller-app-id", ctx.app_id),
        ("traceparent", traceparent(span)),
        ("grpc-trace-bin", grpc_trace_bin(span)),
    ]
    async with grpc.aio.insecure_channel(address, interceptors=app_interceptors()) as channel:
        stub = appcallback_pb2_grpc.AppCallbackStub(channel)  # type: ignore[no-untyped-call]
        try:
            response: common_pb2.InvokeResponse = await ctx.resources.resiliency.app(request.id).run(
                lambda: stub.OnInvoke(request.message, metadata=metadata)
            )
        except grpc.aio.AioRpcError as err:
            raise ApiError(err.code(), err.details() or "", error_code="ERR_DIRECT_INVOKE") from None
        except SidecarError as err:
            message = f"failed to invoke, id: {request.id}, err: {err}"
            raise ApiError(grpc.StatusCode.INTERNAL, message, error_code="ERR_DIRECT_INVOKE") from None
    return response


async def _address(ctx: ApiContext, app_id: str) -> str | None:
    if app_id == ctx.app_id and ctx.app_port:
        return f"{ctx.app_host}:{ctx.app_port}"
    registry = getattr(ctx, "registry", None)
    return await registry.lookup(app_id) if registry is not None else None
