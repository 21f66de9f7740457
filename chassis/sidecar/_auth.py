"""API token authentication, as daprd does it: `DAPR_API_TOKEN` guards the sidecar, `APP_API_TOKEN` the app.

When `DAPR_API_TOKEN` is set, every gRPC call (including proxied ones) and every HTTP route except
`GET /v1.0/healthz[/outbound]` must carry it as `dapr-api-token` (metadata or header), else
UNAUTHENTICATED / 401. When `APP_API_TOKEN` is set, the sidecar sends it as `dapr-api-token` on every
call it makes to an app. Both are read once at start, as daprd reads them.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
from aiohttp import web

from chassis.sidecar._tracing import metadata_pairs

TOKEN_KEY = "dapr-api-token"
API_TOKEN_ENV = "DAPR_API_TOKEN"
APP_TOKEN_ENV = "APP_API_TOKEN"
_UNGUARDED = frozenset({"/v1.0/healthz", "/v1.0/healthz/outbound"})

if TYPE_CHECKING:
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
    _UnaryUnary = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
    _UnaryStream = grpc.aio.UnaryStreamClientInterceptor[Any, Any]
    _StreamUnary = grpc.aio.StreamUnaryClientInterceptor[Any, Any]
    _StreamStream = grpc.aio.StreamStreamClientInterceptor[Any, Any]
else:  # grpc's classes are not generic at runtime
    _ServerInterceptor = grpc.aio.ServerInterceptor
    _UnaryUnary = grpc.aio.UnaryUnaryClientInterceptor
    _UnaryStream = grpc.aio.UnaryStreamClientInterceptor
    _StreamUnary = grpc.aio.StreamUnaryClientInterceptor
    _StreamStream = grpc.aio.StreamStreamClientInterceptor


def api_token() -> str | None:
    """The token callers must present, or None when authentication is off."""
    return os.environ.get(API_TOKEN_ENV) or None


def app_token() -> str | None:
    """The token sent to the app, or None."""
    return os.environ.get(APP_TOKEN_ENV) or None


def app_token_metadata() -> list[tuple[str, str]]:
    """`[("dapr-api-token", APP_API_TOKEN)]` when set, for calls to the app."""
    token = app_token()
    return [(TOKEN_KEY, token)] if token else []


def matches(presented: str | bytes | None, expected: str) -> bool:
    """Constant-time comparison, so the token cannot be guessed byte by byte from timings."""
    if presented is None:
        return False
    given = presented if isinstance(presented, bytes) else presented.encode("utf-8", "surrogateescape")
    return hmac.compare_digest(given, expected.encode())


# ---- gRPC server -----------------------------------------------------------------------------------


class TokenInterceptor(_ServerInterceptor):
    """Rejects calls without the matching `dapr-api-token` metadata with daprd's messages."""

    def __init__(self, token: str) -> None:
        self._token = token

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        presented = [v for k, v in metadata_pairs(handler_call_details.invocation_metadata) if k == TOKEN_KEY]
        if not presented:
            return _rejecting("missing api token in request metadata")
        if not matches(presented[0], self._token):
            return _rejecting("authentication error: api token mismatch")
        return await continuation(handler_call_details)


def _rejecting(message: str) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler answering UNAUTHENTICATED; stream-stream with raw bytes fits every call shape."""

    async def reject(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    return grpc.stream_stream_rpc_method_handler(reject)


# ---- HTTP server -----------------------------------------------------------------------------------


def http_middleware(token: str) -> Any:
    """aiohttp middleware: 401 `{"errorCode": "ERR_UNAUTHORIZED"}` without the matching header."""

    @web.middleware
    async def check_token(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        unguarded = request.method == "GET" and request.path.rstrip("/") in _UNGUARDED
        if not unguarded and not matches(request.headers.get(TOKEN_KEY), token):
            body = {"errorCode": "ERR_UNAUTHORIZED", "message": "invalid api token"}
            return web.json_response(body, status=401)
        return await handler(request)

    return check_token


# ---- gRPC client (calls to the app) ----------------------------------------------------------------


class _AppToken(_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream):
    """Adds `dapr-api-token: APP_API_TOKEN` to every call on a channel to the app."""

    def __init__(self, token: str) -> None:
        self._token = token

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*[(k, v) for k, v in metadata_pairs(details.metadata) if k != TOKEN_KEY])
        metadata.add(TOKEN_KEY, self._token)
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)

    async def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return await continuation(self._details(details), request_iterator)

    async def intercept_stream_stream(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return await continuation(self._details(details), request_iterator)


def app_interceptors() -> list[Any]:
    """Client interceptors for a channel to an app: the APP_API_TOKEN one when the variable is set."""
    token = app_token()
    return [_AppToken(token)] if token else []


# ---- where the APIs listen -------------------------------------------------------------------------

DEFAULT_LISTEN = "127.0.0.1"


def listen_hosts(addresses: str) -> list[str]:
    """`--dapr-listen-addresses` ("127.0.0.1", "0.0.0.0", "[::1],127.0.0.1") as bind hosts."""
    hosts = [part.strip().removeprefix("[").removesuffix("]") for part in addresses.split(",")]
    return [host for host in hosts if host] or [DEFAULT_LISTEN]


def host_port(host: str, port: int) -> str:
    """`host:port`, bracketing IPv6 hosts as gRPC expects."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
