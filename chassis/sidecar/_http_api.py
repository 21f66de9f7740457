"""The sidecar's HTTP port: daprd's HTTP API (health, state, publish, bindings, secrets, invoke, metadata).

`/v1.0/healthz/outbound` answers 204 once components are loaded (the SDK's DaprClient polls it before
any call); `/v1.0/healthz` additionally waits for the app channel when an app port was given, as daprd.
State and publish run the same operations as the gRPC API (`_operations`), invocation lives in
`_http_invoke`, token checks in `_auth` and the body limit in `_limits`.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web
from dapr.proto.runtime.v1 import metadata_pb2, secret_pb2
from google.protobuf.json_format import MessageToDict
from opentelemetry import trace

from chassis.sidecar import _auth, _limits
from chassis.sidecar import _cloudevents as ce
from chassis.sidecar._bindings import invoke_output
from chassis.sidecar._grpc_api import ApiContext, build_metadata
from chassis.sidecar._grpc_more import get_bulk_secret, get_secret
from chassis.sidecar._http_common import (
    MAX_BODY_SIZE,
    error_response,
    malformed,
    query_metadata,
    read_json,
    route,
    string_map,
)
from chassis.sidecar._http_invoke import Invoker, find_target, no_app_id
from chassis.sidecar._http_publish import PublishRoutes
from chassis.sidecar._http_state import StateRoutes
from chassis.sidecar._operations import Operations
from chassis.sidecar._tracing import traceparent, tracestate

API = "/v1.0"
_error = error_response


class HttpApi:
    """aiohttp routes over the shared API context; `app_ready` gates /healthz."""

    def __init__(
        self,
        ctx: ApiContext,
        app_ready: asyncio.Event | None,
        *,
        api_token: str | None = None,
        max_body_size: int | None = None,
    ) -> None:
        self.ctx = ctx
        self.app_ready = app_ready
        self.api_token = api_token
        self.max_body_size = max_body_size or _limits.parse_size(_limits.DEFAULT_MAX_BODY_SIZE)
        self.ops = Operations(ctx)
        self.invoker = Invoker(ctx)

    def application(self) -> web.Application:
        middlewares = [_limits.http_middleware(self.max_body_size)]
        if self.api_token:
            middlewares.insert(0, _auth.http_middleware(self.api_token))  # 401 before 413, as daprd
        app = web.Application(client_max_size=self.max_body_size, middlewares=middlewares)
        app[MAX_BODY_SIZE] = self.max_body_size
        app.on_cleanup.append(self._close)
        app.router.add_get(f"{API}/healthz", self.healthz)
        app.router.add_get(f"{API}/healthz/outbound", self.healthz_outbound)
        app.router.add_get(f"{API}/metadata", self.get_metadata)
        app.router.add_put(f"{API}/metadata/{{key:[^/]+}}", self.put_metadata)
        StateRoutes(self.ops).add_to(app)
        PublishRoutes(self.ops).add_to(app)
        app.router.add_post(f"{API}/bindings/{{name:[^/]+}}", self.bindings)
        app.router.add_put(f"{API}/bindings/{{name:[^/]+}}", self.bindings)
        app.router.add_get(f"{API}/secrets/{{store:[^/]+}}/bulk", self.bulk_secrets)
        app.router.add_get(f"{API}/secrets/{{store:[^/]+}}/{{key:[^/]+}}", self.secret)
        app.router.add_route("*", f"{API}/invoke/{{tail:[\\s\\S]*}}", self.invoke)
        app.router.add_route("*", "/{tail:[\\s\\S]*}", self.not_found)
        return app

    async def _close(self, app: web.Application) -> None:
        await self.invoker.close()

    async def healthz(self, request: web.Request) -> web.Response:
        if self.app_ready is not None and not self.app_ready.is_set():
            return _error(500, "ERR_HEALTH_NOT_READY", "dapr is not ready: waiting for the app channel")
        return web.Response(status=204)

    async def healthz_outbound(self, request: web.Request) -> web.Response:
        # Components are opened before the HTTP port listens, so outbound is ready as soon as we answer.
        return web.Response(status=204)

    async def get_metadata(self, request: web.Request) -> web.StreamResponse:
        """daprd's HTTP metadata JSON (its field names differ from the proto's JSON names)."""
        meta = build_metadata(self.ctx)
        body = {
            "id": meta.id,
            "runtimeVersion": meta.runtime_version,
            "enabledFeatures": list(meta.enabled_features),
            "components": [MessageToDict(c) for c in meta.registered_components],
            "extended": dict(meta.extended_metadata),
            "subscriptions": [
                {
                    "pubsubname": s.pubsub_name,
                    "topic": s.topic,
                    "metadata": dict(s.metadata),
                    "rules": [{"match": r.match, "path": r.path} for r in s.rules.rules],
                    "deadLetterTopic": s.dead_letter_topic,
                    "type": metadata_pb2.PubsubSubscriptionType.Name(s.type),
                }
                for s in meta.subscriptions
            ],
            "appConnectionProperties": MessageToDict(meta.app_connection_properties),
        }
        return web.json_response(body, dumps=json.dumps)

    async def put_metadata(self, request: web.Request) -> web.Response:
        """`dapr run` records cliPID/appPID/appCommand here; any key is kept as extended metadata."""
        self.ctx.extended[request.match_info["key"]] = await request.text()
        return web.Response(status=204)

    @route("InvokeService")
    async def invoke(self, request: web.Request) -> web.StreamResponse:
        """Service invocation; the target comes from `dapr-app-id` or the path."""
        target = find_target(request)
        if target is None:
            raise no_app_id()
        return await self.invoker.invoke(request, target)

    @route("InvokeBinding")
    async def bindings(self, request: web.Request) -> web.StreamResponse:
        """`{"data", "metadata", "operation"}` -> 200 with the binding's data, or 204 without."""
        name = request.match_info["name"]
        body = await read_json(request)
        if not isinstance(body, dict) or not isinstance(body.get("operation", ""), str):
            raise malformed("failed deserializing HTTP body: expected {data, metadata, operation}")
        metadata = string_map(body.get("metadata"), "metadata")
        data, answer_metadata = await _invoke_output(self.ctx, name, body, metadata)
        headers = {f"metadata.{key}": value for key, value in answer_metadata.items()}
        if not data:
            return web.Response(status=204, headers=headers)
        return web.Response(status=200, body=data, headers=headers)

    @route("GetSecret")
    async def secret(self, request: web.Request) -> web.StreamResponse:
        """One secret as a JSON object of its keys (a single-valued store: one key, the secret's name)."""
        asked = secret_pb2.GetSecretRequest(
            store_name=request.match_info["store"],
            key=request.match_info["key"],
            metadata=query_metadata(request),
        )
        found = await get_secret(self.ctx, asked)
        return web.json_response(dict(found.data))

    @route("GetBulkSecret")
    async def bulk_secrets(self, request: web.Request) -> web.StreamResponse:
        """Every secret of the store: `{name: {key: value}}`."""
        asked = secret_pb2.GetBulkSecretRequest(
            store_name=request.match_info["store"], metadata=query_metadata(request)
        )
        found = await get_bulk_secret(self.ctx, asked)
        return web.json_response({name: dict(item.secrets) for name, item in found.data.items()})

    async def not_found(self, request: web.Request) -> web.StreamResponse:
        """Any other path: invocation when `dapr-app-id` names an app (daprd's fallback), else 404."""
        if request.headers.get("dapr-app-id"):
            return await self.invoke(request)
        return _error(
            404,
            "ERR_NOT_FOUND",
            f"{request.method} {request.path} is not implemented by the embedded sidecar",
        )


async def _invoke_output(
    ctx: ApiContext, name: str, body: dict[str, Any], metadata: dict[str, str]
) -> tuple[bytes, dict[str, str]]:
    """The bindings runtime's `invoke_output`, with daprd's JSON data and the trace context."""
    data = ce.go_json(body.get("data"))  # daprd json.Marshal()s the request's data, strings included
    span = trace.get_current_span().get_span_context()
    metadata["traceparent"] = traceparent(span)
    if state := tracestate(span):
        metadata["tracestate"] = state
    return await invoke_output(ctx.resources, name, body.get("operation") or "", data, metadata)
