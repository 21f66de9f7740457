"""An HTTP subscriber app (aiohttp) for the sidecar's `--app-protocol http` tests.

`GET /dapr/subscribe` lists programmatic subscriptions; every POST is appended to $RECORD_FILE as one
JSON line {route, id, topic, type, content_type, traceparent, event}. The event's `data.answer` picks
the response: "retry-status" ({"status":"RETRY"} once), "fail-once" (500 once), "drop"
({"status":"DROP"}), "gone" (404), "garbage" (a non-JSON 200 body), "unknown-once" ({"status":"MAYBE"}
once); anything else answers {"status":"SUCCESS"}. `GET /healthz` answers 503 while the file
$RECORD_FILE.unhealthy exists. Port from $APP_PORT.
"""

from __future__ import annotations

import json
import os
from typing import Any

from aiohttp import web

RECORD_FILE = os.environ["RECORD_FILE"]
SUBSCRIPTIONS = [
    {"pubsubname": "pubsub", "topic": "http-orders", "route": "/orders"},
    {
        "pubsubname": "pubsub",
        "topic": "http-routed",
        "routes": {
            "rules": [{"match": 'has(event.data.kind) && event.data.kind == "a"', "path": "/kind-a"}],
            "default": "/other",
        },
        "deadLetterTopic": "http-dlq",
    },
    {"pubsubname": "pubsub", "topic": "http-dlq", "route": "/dead"},
    {
        "pubsubname": "pubsub",
        "topic": "http-bulk",
        "route": "/bulk",
        "bulkSubscribe": {"enabled": True, "maxMessagesCount": 3, "maxAwaitDurationMs": 200},
    },
]
_seen: set[str] = set()


def record(route: str, request: web.Request, event: dict[str, Any]) -> None:
    line = {
        "route": route,
        "id": event.get("id"),
        "topic": event.get("topic"),
        "type": event.get("type"),
        "content_type": request.headers.get("Content-Type"),
        "traceparent": request.headers.get("traceparent"),
        "event": event,
    }
    with open(RECORD_FILE, "a") as out:
        out.write(json.dumps(line) + "\n")


def first_time(event_id: str) -> bool:
    first = event_id not in _seen
    _seen.add(event_id)
    return first


def answer(event: dict[str, Any]) -> web.Response:
    data = event.get("data")
    wanted = data.get("answer") if isinstance(data, dict) else None
    event_id = str(event.get("id"))
    if wanted == "retry-status" and first_time(event_id):
        return web.json_response({"status": "RETRY"})
    if wanted == "fail-once" and first_time(event_id):
        return web.Response(status=500)
    if wanted == "unknown-once" and first_time(event_id):
        return web.json_response({"status": "MAYBE"})
    if wanted == "drop":
        return web.json_response({"status": "DROP"})
    if wanted == "gone":
        return web.Response(status=404)
    if wanted == "garbage":
        return web.Response(text="not json")
    return web.json_response({"status": "SUCCESS"})


async def healthz(request: web.Request) -> web.Response:
    """Unhealthy (503) while the file $RECORD_FILE.unhealthy exists."""
    unhealthy = os.path.exists(RECORD_FILE + ".unhealthy")  # noqa: ASYNC240 (a stat on a test app)
    return web.Response(status=503 if unhealthy else 200)


async def subscribe(request: web.Request) -> web.Response:
    return web.json_response(SUBSCRIPTIONS)


async def event(request: web.Request) -> web.Response:
    body = json.loads(await request.read())
    record(request.path, request, body)
    return answer(body)


async def bulk(request: web.Request) -> web.Response:
    body = await request.json()
    statuses = []
    for entry in body["entries"]:
        record("/bulk", request, entry["event"])
        data = entry["event"].get("data")
        if isinstance(data, dict) and data.get("answer") == "retry-once" and first_time(entry["event"]["id"]):
            continue  # no status for this entry: the sidecar must redeliver it
        statuses.append({"entryId": entry["entryId"], "status": "SUCCESS"})
    return web.json_response({"statuses": statuses})


def main() -> None:
    app = web.Application()
    app.router.add_get("/dapr/subscribe", subscribe)
    app.router.add_get("/healthz", healthz)
    app.router.add_post("/bulk", bulk)
    app.router.add_post("/{route:.*}", event)
    web.run_app(app, host="127.0.0.1", port=int(os.environ["APP_PORT"]), print=None)


if __name__ == "__main__":
    main()
