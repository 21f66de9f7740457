"""The HTTP app channel: what daprd does for an `--app-protocol http` app's subscriptions.

`GET /dapr/subscribe` lists the programmatic subscriptions; each event is `POST /<route>` with the
CloudEvent JSON as `application/cloudevents+json`. The answer is read as daprd's `postman/http` does:
2xx with an optional `{"status": "SUCCESS|RETRY|DROP"}` (empty or unreadable body = SUCCESS, an
unknown status = retry), 404 drops, any other status retries. Bulk subscriptions post one
`{entries: [...]}` request and read `{statuses: [{entryId, status}]}` (a missing status = retry).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Mapping
from typing import Any

import aiohttp

from chassis.sidecar import _cloudevents as ce
from chassis.sidecar._app_grpc import Unanswered
from chassis.sidecar._auth import app_token_metadata
from chassis.sidecar._outcomes import Delivery, Outcome
from chassis.sidecar._subscriptions import Subscription, from_http_json, parse_each
from chassis.sidecar._tracing import traceparent, tracestate

log = logging.getLogger("chassis.sidecar.delivery")

CALL_TIMEOUT = 60.0
_STATUSES = {"SUCCESS": Outcome.ACK, "RETRY": Outcome.RETRY, "DROP": Outcome.DROP}


def _headers(delivery: Delivery) -> dict[str, str]:
    """Message metadata as headers, plus the delivery span's W3C context."""
    headers = {
        key: value
        for key, value in delivery.metadata.items()
        if key.isascii() and value.isascii() and value.isprintable() and key.replace("-", "").isalnum()
    }
    headers["Content-Type"] = ce.CLOUDEVENT_CONTENT_TYPE
    headers["pubsubname"] = delivery.pubsub
    headers["traceparent"] = traceparent(delivery.span)
    if state := tracestate(delivery.span):
        headers["tracestate"] = state
    return headers


def read_status(event_id: str, status: int, body: bytes) -> Outcome:
    """daprd's HTTP subscriber rules for one response."""
    if status == 404:
        log.warning("non-retriable error returned from app while processing pub/sub event %s: 404", event_id)
        return Outcome.DROP
    if not 200 <= status < 300:
        log.info("app returned http status %d for pub/sub event %s: retrying", status, event_id)
        return Outcome.RETRY
    try:
        answer = json.loads(body) if body.strip() else {}
    except ValueError:
        return Outcome.ACK  # daprd: an unreadable body of a 2xx answer is a success
    text = answer.get("status", "") if isinstance(answer, dict) else ""
    if not text:
        return Outcome.ACK
    outcome = _STATUSES.get(str(text).upper())
    if outcome is None:
        log.warning("unknown status %r returned from app for pub/sub event %s: retrying", text, event_id)
        return Outcome.RETRY
    if outcome is not Outcome.ACK:
        log.info("%s status returned from app while processing pub/sub event %s", text, event_id)
    return outcome


class HttpApp:
    """Talks to the app's HTTP server."""

    def __init__(self, address: str) -> None:
        self.base = f"http://{address}"
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:  # created lazily: a session must be made inside the running loop
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT),
                headers=dict(app_token_metadata()),  # APP_API_TOKEN, as daprd sends it
            )
        return self._session

    async def ready(self) -> bool:
        """True once the app's port answers HTTP at all (any status); waits up to a second."""
        try:
            async with self._client().get(f"{self.base}/", timeout=aiohttp.ClientTimeout(total=1.0)):
                return True
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def subscriptions(self) -> list[Subscription]:
        """GET /dapr/subscribe (404 = none); Unanswered while the app cannot answer."""
        try:
            async with self._client().get(f"{self.base}/dapr/subscribe") as response:
                body = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as err:
            raise Unanswered(str(err) or type(err).__name__) from None
        if status == 404:
            log.info("pubsub subscriptions: app returned 404 for /dapr/subscribe")
            return []
        if status != 200:
            raise Unanswered(f"GET /dapr/subscribe returned {status}")
        try:
            items = json.loads(body) if body.strip() else []
        except ValueError as err:
            raise Unanswered(f"GET /dapr/subscribe returned invalid JSON: {err}") from None
        if not isinstance(items, list):
            raise Unanswered("GET /dapr/subscribe must return a JSON list")
        return parse_each((item for item in items if isinstance(item, dict)), from_http_json)

    async def deliver(self, delivery: Delivery) -> Outcome:
        """POST the CloudEvent to the route."""
        url = f"{self.base}/{delivery.path.lstrip('/')}"
        try:
            async with self._client().post(url, data=delivery.body, headers=_headers(delivery)) as response:
                return read_status(delivery.id, response.status, await response.read())
        except (aiohttp.ClientError, TimeoutError) as err:
            log.info("error delivering pub/sub event %s to the app: %s", delivery.id, err)
            return Outcome.RETRY

    async def deliver_bulk(self, batch: list[Delivery]) -> list[Outcome]:
        """POST one bulk request; per-entry statuses, a missing one = RETRY."""
        first = batch[0]
        url = f"{self.base}/{first.path.lstrip('/')}"
        headers = _headers(replace_metadata(first))
        headers["Content-Type"] = "application/json"
        try:
            async with self._client().post(url, json=_bulk_body(batch), headers=headers) as response:
                status, body = response.status, await response.read()
        except (aiohttp.ClientError, TimeoutError) as err:
            log.info("error delivering a bulk of %d pub/sub events to the app: %s", len(batch), err)
            return [Outcome.RETRY] * len(batch)
        if status == 404:
            return [Outcome.DROP] * len(batch)
        if not 200 <= status < 300:
            return [Outcome.RETRY] * len(batch)
        return _bulk_outcomes(batch, body)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def replace_metadata(delivery: Delivery) -> Delivery:
    """The first entry's delivery without its own message metadata (bulk headers carry none)."""
    return Delivery(delivery.pubsub, delivery.topic, delivery.path, {}, b"", span=delivery.span)


def _bulk_body(batch: list[Delivery]) -> dict[str, Any]:
    first = batch[0]
    entries = [
        {
            "entryId": d.entry_id,
            "event": d.event,
            "contentType": ce.CLOUDEVENT_CONTENT_TYPE,
            "metadata": d.metadata,
        }
        for d in batch
    ]
    return {
        "id": str(uuid.uuid4()),
        "entries": entries,
        "metadata": {},
        "topic": first.topic,
        "pubsubname": first.pubsub,
        "type": "com.dapr.event.sent.bulk",
    }


def _bulk_outcomes(batch: list[Delivery], body: bytes) -> list[Outcome]:
    try:
        answer = json.loads(body)
    except ValueError:
        return [Outcome.RETRY] * len(batch)
    statuses: Mapping[str, Any] = {}
    if isinstance(answer, dict) and isinstance(answer.get("statuses"), list):
        statuses = {
            str(s.get("entryId")): str(s.get("status", "")).upper()
            for s in answer["statuses"]
            if isinstance(s, dict)
        }
    return [_STATUSES.get(statuses.get(d.entry_id, ""), Outcome.RETRY) for d in batch]
