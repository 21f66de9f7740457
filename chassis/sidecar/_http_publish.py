"""The HTTP publish API: `/v1.0/publish/<pubsub>/<topic>` and the bulk `/v1.0-alpha1/publish/bulk/...`.

The request's Content-Type becomes the CloudEvent's `datacontenttype` (daprd's default `text/plain`
when absent), `metadata.*` query parameters are the publish metadata, and an
`application/cloudevents+json` body is passed through, exactly as the gRPC PublishEvent does.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import grpc
from aiohttp import web

from chassis.sidecar import _cloudevents as ce
from chassis.sidecar._http_common import malformed, query_metadata, route, string_map
from chassis.sidecar._operations import Operations
from chassis.sidecar._status import ApiError

PUBLISH = "/v1.0/publish/{pubsub:[^/]+}/{topic:[\\s\\S]*}"
BULK_PUBLISH = "/v1.0-alpha1/publish/bulk/{pubsub:[^/]+}/{topic:[\\s\\S]*}"


def _events_error(pubsub: str, topic: str, reason: str) -> ApiError:
    message = f"error when unmarshaling the request for topic {topic} pubsub {pubsub}: {reason}"
    return malformed(message, "ERR_PUBSUB_EVENTS_SER")


def event_bytes(event: Any, content_type: str) -> bytes:
    """daprd's ConvertEventToBytes: binary types take base64, string types a string, JSON any value."""
    if ce.is_binary(content_type):
        if not isinstance(event, str):
            raise ValueError("unable to decode binary data")
        try:
            return base64.b64decode(event, validate=True)
        except binascii.Error as err:
            raise ValueError(f"unable to decode binary data: {err}") from None
    if ce.is_string(content_type):
        if not isinstance(event, str):
            raise ValueError("unable to decode string data")
        return event.encode()
    if ce.is_json(content_type) or ce.is_cloudevent(content_type) or content_type.endswith("+json"):
        return ce.go_json(event)
    raise ValueError(f"error mapping event to bytes: unknown content type {content_type}")


class PublishRoutes:
    """Handlers of the publish API; `ops` is shared with the gRPC servicer."""

    def __init__(self, ops: Operations) -> None:
        self.ops = ops

    def add_to(self, app: web.Application) -> None:
        """Register the routes."""
        app.router.add_post(PUBLISH, self.publish)
        app.router.add_post(BULK_PUBLISH, self.bulk_publish)

    @route("PublishEvent")
    async def publish(self, request: web.Request) -> web.StreamResponse:
        """204 once the broker has the message."""
        pubsub, topic = request.match_info["pubsub"], request.match_info["topic"]
        self.ops.pubsub(pubsub, topic)  # daprd validates before reading the body
        data = await request.read()
        content_type = request.headers.get("Content-Type", "")
        await self.ops.publish(pubsub, topic, data, content_type, query_metadata(request))
        return web.Response(status=204)

    @route("BulkPublishEvent")
    async def bulk_publish(self, request: web.Request) -> web.StreamResponse:
        """Publish each entry; 204 when all succeed, else 500 with daprd's `failedEntries`."""
        pubsub, topic = request.match_info["pubsub"], request.match_info["topic"]
        self.ops.pubsub(pubsub, topic)
        entries = self._entries(await request.read(), pubsub, topic, query_metadata(request))
        failed = []
        for entry_id, data, content_type, metadata in entries:
            try:
                await self.ops.publish(pubsub, topic, data, content_type, metadata)
            except ApiError as err:
                failed.append({"entryId": entry_id, "error": err.message})
        if not failed:
            return web.Response(status=204)
        body = {"failedEntries": failed, "errorCode": "ERR_PUBSUB_PUBLISH_MESSAGE"}
        return web.json_response(body, status=500)

    @staticmethod
    def _entries(
        body: bytes, pubsub: str, topic: str, query: dict[str, str]
    ) -> list[tuple[str, bytes, str, dict[str, str]]]:
        """Validate every entry before publishing any (unique non-empty entryId, convertible event)."""
        try:
            raw = ce.parse_json(body)  # daprd's json.Unmarshal refuses NaN and numbers past float64
        except ValueError as err:  # UnicodeDecodeError included
            raise _events_error(pubsub, topic, str(err)) from None
        if not isinstance(raw, list) or not all(isinstance(entry, dict) for entry in raw):
            raise _events_error(pubsub, topic, "expected an array of entries")
        entries, seen = [], set()
        for entry in raw:
            entry_id = entry.get("entryId")
            if not isinstance(entry_id, str) or not entry_id or entry_id in seen:
                raise _events_error(pubsub, topic, "entryId is duplicated or not present for entry")
            seen.add(entry_id)
            content_type = entry.get("contentType") or ""
            if not isinstance(content_type, str):
                raise _events_error(pubsub, topic, "contentType must be a string")
            try:
                data = event_bytes(entry.get("event"), content_type)
            except ValueError as err:
                message = (
                    f"error when marshalling the cloud envelope for topic {topic} pubsub {pubsub}: {err}"
                )
                raise ApiError(
                    grpc.StatusCode.INTERNAL, message, error_code="ERR_PUBSUB_CLOUD_EVENTS_SER"
                ) from None
            metadata = query | string_map(entry.get("metadata"), "metadata")  # entry keys win
            entries.append((entry_id, data, content_type, metadata))
        return entries
