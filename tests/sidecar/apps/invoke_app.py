"""An app for the HTTP API tests: answers service invocation and records the events it is sent.

It serves `AppCallback` (raw grpc.aio, so the test sees `http_extension`), or plain HTTP when
$APP_PROTOCOL is `http`. Port from $APP_PORT; events go to $RECORD_FILE as JSON
lines. Invocation methods:
  echo     200 JSON of what arrived (method, verb, query, content type, body, headers/metadata),
           plus response header `x-echo: yes`
  proto    (gRPC) an Any with a type URL, whose bytes are the request body
  fail     (gRPC) NOT_FOUND with an ErrorInfo detail; (HTTP) 418 with a text body
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import grpc
import grpc.aio
from aiohttp import web
from dapr.proto.common.v1 import common_pb2
from dapr.proto.runtime.v1 import appcallback_pb2, appcallback_pb2_grpc
from google.protobuf import any_pb2, empty_pb2
from google.rpc import error_details_pb2, status_pb2

RECORD_FILE = os.environ.get("RECORD_FILE", "")
TOPIC = "http-events"
VERBS = common_pb2.HTTPExtension.Verb


def _record(line: dict[str, Any]) -> None:
    if RECORD_FILE:
        with open(RECORD_FILE, "a") as out:
            out.write(json.dumps(line) + "\n")


class Callback(appcallback_pb2_grpc.AppCallbackServicer):
    """OnInvoke echo/proto/fail; one subscription to `pubsub/http-events`."""

    async def OnInvoke(self, request: common_pb2.InvokeRequest, context: Any) -> common_pb2.InvokeResponse:
        metadata = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        if request.method == "fail":
            info = error_details_pb2.ErrorInfo(reason="NO_SUCH_THING", domain="test")
            status = status_pb2.Status(code=grpc.StatusCode.NOT_FOUND.value[0], message="no such thing")
            status.details.add().Pack(info)
            trailer = (("grpc-status-details-bin", status.SerializeToString()),)
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such thing", trailer)
        if request.method == "proto":
            data = any_pb2.Any(type_url="type.googleapis.com/test.Thing", value=request.data.value)
            return common_pb2.InvokeResponse(data=data, content_type="application/json")
        await context.send_initial_metadata((("x-echo", "yes"),))
        body = {
            "method": request.method,
            "verb": VERBS.Name(request.http_extension.verb),
            "query": request.http_extension.querystring,
            "content_type": request.content_type,
            "body": request.data.value.decode("utf-8", "replace"),
            "headers": metadata,
        }
        return common_pb2.InvokeResponse(
            data=any_pb2.Any(value=json.dumps(body).encode()), content_type="application/json"
        )

    async def ListTopicSubscriptions(
        self, request: empty_pb2.Empty, context: Any
    ) -> appcallback_pb2.ListTopicSubscriptionsResponse:
        sub = appcallback_pb2.TopicSubscription(pubsub_name="pubsub", topic=TOPIC)
        return appcallback_pb2.ListTopicSubscriptionsResponse(subscriptions=[sub])

    async def OnTopicEvent(
        self, request: appcallback_pb2.TopicEventRequest, context: Any
    ) -> appcallback_pb2.TopicEventResponse:
        _record(
            {
                "id": request.id,
                "type": request.type,
                "source": request.source,
                "datacontenttype": request.data_content_type,
                "data": request.data.decode("utf-8", "replace"),
                "topic": request.topic,
            }
        )
        return appcallback_pb2.TopicEventResponse()


async def serve_grpc(port: int) -> None:
    server = grpc.aio.server()
    appcallback_pb2_grpc.add_AppCallbackServicer_to_server(Callback(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


async def http_handler(request: web.Request) -> web.StreamResponse:
    if request.path == "/dapr/subscribe":
        return web.json_response([])
    if request.path.startswith("/fail"):
        return web.Response(status=418, text="short and stout", headers={"x-teapot": "yes"})
    body = {
        "method": request.path.lstrip("/"),
        "verb": request.method,
        "query": request.raw_path.partition("?")[2],
        "content_type": request.headers.get("Content-Type", ""),
        "body": (await request.read()).decode("utf-8", "replace"),
        "headers": {k.lower(): v for k, v in request.headers.items()},
    }
    return web.json_response(body, headers={"x-echo": "yes"})


async def serve_http(port: int) -> None:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", http_handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


if __name__ == "__main__":
    port = int(os.environ["APP_PORT"])
    asyncio.run(serve_http(port) if os.environ.get("APP_PROTOCOL") == "http" else serve_grpc(port))
