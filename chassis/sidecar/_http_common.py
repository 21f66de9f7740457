"""Shared pieces of the HTTP API: daprd's error JSON, request parsing and the per-route span.

Every route handler is wrapped by `route`, so an `ApiError` (the same errors the gRPC API raises)
becomes daprd's `{errorCode, message, details}` body with its HTTP status, and nothing a client sends
can crash the server: an unexpected exception is logged and answered 500 ERR_INTERNAL.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from aiohttp import web
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from chassis.sidecar import _cloudevents as ce
from chassis.sidecar._status import ApiError
from chassis.sidecar._tracing import context_from_metadata

log = logging.getLogger("chassis.sidecar.http")

METADATA_PREFIX = "metadata."
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_BODY_SIZE = web.AppKey("max_body_size", int)
_Self = TypeVar("_Self")


def error_response(status: int, code: str, message: str) -> web.Response:
    """daprd's error body `{errorCode, message}`."""
    return web.json_response({"errorCode": code, "message": message}, status=status)


def api_error_response(err: ApiError) -> web.Response:
    """An ApiError as daprd's HTTP answer."""
    return web.json_response(err.http_body(), status=err.http_status)


def malformed(message: str, code: str = "ERR_MALFORMED_REQUEST", status: int = 400) -> ApiError:
    """A request body or parameter daprd cannot decode."""
    return ApiError(grpc.StatusCode.INVALID_ARGUMENT, message, error_code=code, http_status=status)


def query_metadata(request: web.Request) -> dict[str, str]:
    """daprd's getMetadataFromRequest: every `metadata.<key>` query parameter (first value wins)."""
    metadata: dict[str, str] = {}
    for key, value in request.query.items():
        if key.startswith(METADATA_PREFIX) and key[len(METADATA_PREFIX) :] not in metadata:
            metadata[key[len(METADATA_PREFIX) :]] = value
    return metadata


async def read_json(request: web.Request) -> Any:
    """The body decoded as JSON; a decoding error is daprd's 400 ERR_MALFORMED_REQUEST."""
    body = await request.read()
    try:
        return ce.parse_json(body)  # as strict as daprd's Go decoder: no NaN, no number past float64
    except ValueError as err:  # UnicodeDecodeError included
        raise malformed(f"failed deserializing HTTP body: {err}") from None


def string_map(value: Any, what: str) -> dict[str, str]:
    """A JSON object of strings (metadata maps); anything else is a malformed request."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise malformed(f"failed deserializing HTTP body: {what} must be an object of strings")
    return dict(value)


Method = Callable[[_Self, web.Request], Awaitable[web.StreamResponse]]


def route(name: str) -> Callable[[Method[_Self]], Method[_Self]]:
    """Wrap a handler: a SERVER span continuing the caller's trace, ApiError -> daprd's error JSON."""

    def decorate(
        method: Callable[[_Self, web.Request], Awaitable[web.StreamResponse]],
    ) -> Callable[[_Self, web.Request], Awaitable[web.StreamResponse]]:
        @functools.wraps(method)
        async def wrapper(self: _Self, request: web.Request) -> web.StreamResponse:
            tracer = trace.get_tracer("chassis.sidecar")
            parent = context_from_metadata(list(request.headers.items()))
            attributes = {"http.method": request.method, "http.route": name}
            with tracer.start_as_current_span(
                name, context=parent, kind=SpanKind.SERVER, attributes=attributes, record_exception=False
            ) as span:
                response = await _answer(method, self, request)
                span.set_attribute("http.status_code", response.status)
                if response.status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
                return response

        return wrapper

    return decorate


async def _answer(
    method: Callable[[_Self, web.Request], Awaitable[web.StreamResponse]], self: _Self, request: web.Request
) -> web.StreamResponse:
    try:
        return await method(self, request)
    except ApiError as err:
        log.debug("%s %s failed: %s", request.method, request.path, err.message)
        return api_error_response(err)
    except web.HTTPRequestEntityTooLarge:  # a chunked body past --max-body-size
        return too_large(None, request.app[MAX_BODY_SIZE])
    except web.HTTPException:
        raise
    except Exception as exc:  # a bug of ours: answer 500, keep the traceback in the log
        log.exception("%s %s failed unexpectedly", request.method, request.path)
        return error_response(500, "ERR_INTERNAL", f"{request.method} {request.path} failed: {exc}")


def too_large(actual: int | None, limit: int) -> web.Response:
    """413 for a body over the sidecar's `--max-body-size`."""
    size = f"of {actual} bytes " if actual else ""
    message = f"request body {size}exceeds the sidecar's maximum body size of {limit} bytes (--max-body-size)"
    return error_response(413, "ERR_BODY_TOO_LARGE", message)
