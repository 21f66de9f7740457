"""HTTP service invocation: `/v1.0/invoke/<app-id>/method/<path>` (or any path with `dapr-app-id`).

Body, headers, query string, content type and the callee's status go through both ways. A gRPC app is
called through `AppCallback.OnInvoke` with the verb and query string in `http_extension`, and its
answer is mapped as daprd maps it (an Any with a type URL -> `application/x-protobuf`; a gRPC error ->
the HTTP status of its code with the status as JSON). An `--app-protocol http` app gets the request
forwarded as it came. The target's address comes from the shared app registry.
"""

from __future__ import annotations

import logging
import posixpath
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import aiohttp
import grpc
import grpc.aio
from aiohttp import web
from dapr.proto.common.v1 import common_pb2
from dapr.proto.runtime.v1 import appcallback_pb2_grpc
from google.protobuf import any_pb2
from google.protobuf.json_format import MessageToDict
from google.rpc import status_pb2  # type: ignore[import-untyped]
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from yarl import URL

from chassis.sidecar import _auth
from chassis.sidecar._proxy import CALLER_KEY, CHANNEL_OPTIONS
from chassis.sidecar._status import ApiError

if TYPE_CHECKING:
    from chassis.sidecar._grpc_api import ApiContext
from chassis.sidecar._tracing import metadata_pairs, traceparent, tracestate

log = logging.getLogger("chassis.sidecar.invoke")

APP_ID_HEADER = "dapr-app-id"
PROTOBUF_CONTENT_TYPE = "application/x-protobuf"
CALL_TIMEOUT = 60.0
_INVOKE_PREFIX = "/v1.0/invoke/"
_VERBS = frozenset(common_pb2.HTTPExtension.Verb.keys())
# Request headers that describe the hop to the sidecar, not the call to the app.
_HOP_BY_HOP = frozenset(
    {
        "host",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "expect",
        APP_ID_HEADER,
        _auth.TOKEN_KEY,
        CALLER_KEY,
        "traceparent",
        "tracestate",
    }
)
_GRPC_KEY = re.compile(r"[0-9a-z_.\-]+")
# grpc-gateway's HTTPStatusFromCode, which daprd uses for a gRPC app's error.
_HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 408,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}


@dataclass(frozen=True)
class Target:
    """Who to call and what: the app id and the method path (still URL-encoded, as daprd keeps it)."""

    app_id: str
    method: str


def find_target(request: web.Request) -> Target | None:
    """daprd's findTargetIDAndMethod: the `dapr-app-id` header first, else the /v1.0/invoke/ path."""
    raw_path = request.raw_path.split("?", 1)[0]
    if app_id := request.headers.get(APP_ID_HEADER, ""):
        cleaned = posixpath.normpath(raw_path)
        if raw_path.endswith("/") and cleaned != "/":
            cleaned += "/"
        return Target(app_id, cleaned.lstrip("/"))
    if not raw_path.startswith(_INVOKE_PREFIX):
        return None
    rest = raw_path[len(_INVOKE_PREFIX) :]
    index = rest.find("/method/")
    if index <= 0:
        return None
    return Target(unquote(rest[:index]), rest[index + len("/method/") :])


def raw_query(request: web.Request) -> str:
    """The query string as sent (still encoded), as daprd's r.URL.RawQuery."""
    return request.raw_path.partition("?")[2]


def invoke_error(app_id: str, reason: object, status: int = 500) -> ApiError:
    """daprd's ErrDirectInvoke."""
    message = f"failed to invoke, id: {app_id}, err: {reason}"
    return ApiError(grpc.StatusCode.INTERNAL, message, error_code="ERR_DIRECT_INVOKE", http_status=status)


def no_app_id() -> ApiError:
    """daprd's ErrDirectInvokeNoAppID."""
    message = "failed getting app id either from the URL path or the header dapr-app-id"
    return ApiError(grpc.StatusCode.NOT_FOUND, message, error_code="ERR_DIRECT_INVOKE", http_status=404)


def _grpc_metadata(request: web.Request, span: trace.SpanContext, caller: str) -> list[tuple[str, str]]:
    """The request headers gRPC can carry (lowercase token keys, printable ASCII values) plus ours."""
    metadata = []
    for key, value in request.headers.items():
        key = key.lower()
        if key in _HOP_BY_HOP or key == "content-type" or key.startswith("grpc-") or key.endswith("-bin"):
            continue
        if _GRPC_KEY.fullmatch(key) and value.isascii() and value.isprintable():
            metadata.append((key, value))
    return metadata + _outgoing(span, caller)


def _outgoing(span: trace.SpanContext, caller: str) -> list[tuple[str, str]]:
    extra = [(CALLER_KEY, caller), ("traceparent", traceparent(span))]
    if state := tracestate(span):
        extra.append(("tracestate", state))
    return extra + _auth.app_token_metadata()


def _status_body(err: grpc.aio.AioRpcError) -> dict[str, Any]:
    """The callee's google.rpc.Status as JSON (its rich details included), as daprd answers it."""
    details: list[dict[str, Any]] = []
    for key, value in metadata_pairs(err.trailing_metadata()):
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            details = [MessageToDict(detail) for detail in status.details]
    return {"code": err.code().value[0], "message": err.details() or "", "details": details}


def _response_headers(pairs: object) -> dict[str, str]:
    headers: dict[str, str] = {}
    for key, value in metadata_pairs(pairs):
        if isinstance(value, str) and not key.startswith((":", "grpc-")) and key != "content-type":
            headers[key] = value
    return headers


class Invoker:
    """Calls apps on behalf of HTTP clients; keeps one gRPC channel / HTTP session per target."""

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx
        self.app_id = ctx.app_id
        self.app_address = f"{ctx.app_host}:{ctx.app_port}" if ctx.app_port else None
        self.app_protocol = ctx.app_protocol
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        """Close the channels and the HTTP session."""
        for channel in self._channels.values():
            await channel.close(None)
        self._channels.clear()
        if self._session is not None:
            await self._session.close()

    async def _resolve(self, app_id: str) -> tuple[str, str]:
        """(address, protocol); the local app is known, others come from the registry (gRPC apps)."""
        if app_id == self.app_id and self.app_address:
            return self.app_address, self.app_protocol
        registry = self.ctx.registry  # set by the sidecar once the servers listen
        address = await registry.lookup(app_id) if registry else None
        if address is None:
            raise invoke_error(app_id, f"couldn't find service: {app_id}")
        return address, "grpc"

    async def invoke(self, request: web.Request, target: Target) -> web.StreamResponse:
        """Call the target app and relay its answer."""
        address, protocol = await self._resolve(target.app_id)
        tracer = trace.get_tracer("chassis.sidecar")
        attributes = {"dapr.app_id": target.app_id, "net.peer.name": address, "http.method": request.method}
        name = f"CallLocal/{target.app_id}/{target.method}"
        with tracer.start_as_current_span(name, kind=SpanKind.CLIENT, attributes=attributes) as span:
            if protocol == "http":
                return await self._http(request, target, address, span.get_span_context())
            return await self._grpc(request, target, address, span.get_span_context())

    # ---- gRPC apps ------------------------------------------------------------------------------

    def _stub(self, address: str) -> Any:
        if address not in self._channels:
            self._channels[address] = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        return appcallback_pb2_grpc.AppCallbackStub(self._channels[address])  # type: ignore[no-untyped-call]

    async def _grpc(
        self, request: web.Request, target: Target, address: str, span: trace.SpanContext
    ) -> web.StreamResponse:
        verbs = common_pb2.HTTPExtension.Verb
        verb = request.method.upper()
        message = common_pb2.InvokeRequest(
            method=target.method,
            data=any_pb2.Any(value=await request.read()),
            content_type=request.headers.get("Content-Type", ""),
            http_extension=common_pb2.HTTPExtension(
                verb=verbs.Value(verb) if verb in _VERBS else verbs.NONE,
                querystring=raw_query(request),
            ),
        )
        call = self._stub(address).OnInvoke(
            message, metadata=_grpc_metadata(request, span, self.app_id), timeout=CALL_TIMEOUT
        )
        try:
            response = await call
            headers = _response_headers(await call.initial_metadata())
        except grpc.aio.AioRpcError as err:
            status = _HTTP_STATUS.get(err.code(), 500)
            return web.json_response(_status_body(err), status=status)
        answer = web.Response(status=200, body=response.data.value, headers=headers)
        if content_type := PROTOBUF_CONTENT_TYPE if response.data.type_url else response.content_type:
            answer.headers["Content-Type"] = content_type
        return answer

    # ---- HTTP apps ------------------------------------------------------------------------------

    async def _http(
        self, request: web.Request, target: Target, address: str, span: trace.SpanContext
    ) -> web.StreamResponse:
        if self._session is None:
            # auto_decompress off: the body goes back byte for byte with its Content-Encoding.
            self._session = aiohttp.ClientSession(auto_decompress=False)
        query = raw_query(request)
        url = URL(f"http://{address}/{target.method}" + (f"?{query}" if query else ""), encoded=True)
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP]
        headers += _outgoing(span, self.app_id)
        try:
            async with self._session.request(
                request.method,
                url,
                headers=headers,
                data=await request.read(),
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT),
            ) as answer:
                body = await answer.read()
                relayed = [(k, v) for k, v in answer.headers.items() if k.lower() not in _HOP_BY_HOP]
                return web.Response(status=answer.status, body=body, headers=relayed)
        except (aiohttp.ClientError, TimeoutError) as err:
            raise invoke_error(target.app_id, err) from None
