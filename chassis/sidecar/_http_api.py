"""The sidecar's HTTP port: the health API the SDK waits on, plus the metadata API; nothing else yet.

`/v1.0/healthz/outbound` answers 204 once components are loaded (the SDK's DaprClient polls it before
any call); `/v1.0/healthz` additionally waits for the app channel when an app port was given, as daprd.
"""

from __future__ import annotations

import asyncio
import json

from aiohttp import web
from google.protobuf.json_format import MessageToDict

from chassis.sidecar._grpc_api import ApiContext, build_metadata

API = "/v1.0"


def _error(status: int, code: str, message: str) -> web.Response:
    """daprd's error body `{errorCode, message}`."""
    return web.json_response({"errorCode": code, "message": message}, status=status)


class HttpApi:
    """aiohttp routes over the shared API context; `app_ready` gates /healthz."""

    def __init__(self, ctx: ApiContext, app_ready: asyncio.Event | None) -> None:
        self.ctx = ctx
        self.app_ready = app_ready

    def application(self) -> web.Application:
        app = web.Application()
        app.router.add_get(f"{API}/healthz", self.healthz)
        app.router.add_get(f"{API}/healthz/outbound", self.healthz_outbound)
        app.router.add_get(f"{API}/metadata", self.get_metadata)
        app.router.add_put(f"{API}/metadata/{{key}}", self.put_metadata)
        app.router.add_route("*", f"{API}/invoke/{{tail:.*}}", self.invoke)
        app.router.add_route("*", "/{tail:.*}", self.not_found)
        return app

    async def healthz(self, request: web.Request) -> web.Response:
        if self.app_ready is not None and not self.app_ready.is_set():
            return _error(500, "ERR_HEALTH_NOT_READY", "dapr is not ready: waiting for the app channel")
        return web.Response(status=204)

    async def healthz_outbound(self, request: web.Request) -> web.Response:
        # Components are opened before the HTTP port listens, so outbound is ready as soon as we answer.
        return web.Response(status=204)

    async def get_metadata(self, request: web.Request) -> web.Response:
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
                    "type": "PROGRAMMATIC",
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

    async def invoke(self, request: web.Request) -> web.Response:
        return _error(
            501,
            "ERR_DIRECT_INVOKE",
            "HTTP service invocation is not implemented by the embedded sidecar;"
            " call the app over gRPC with `dapr-app-id` metadata (proxy mode)",
        )

    async def not_found(self, request: web.Request) -> web.Response:
        return _error(
            404,
            "ERR_NOT_FOUND",
            f"{request.method} {request.path} is not implemented by the embedded sidecar",
        )
