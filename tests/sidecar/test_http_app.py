"""`--app-protocol http`: subscriptions from `GET /dapr/subscribe`, CloudEvents POSTed to the routes.

The app (tests/sidecar/apps/http_subscriber.py) is a small aiohttp server behind a real sidecar; events
are published with the official SDK. Response handling follows daprd's HTTP subscriber.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from dapr.clients import BulkPublishEntry, DaprClient
from sidecar_support import Process, RunningSidecar, stop_all, wait_until
from subscription_support import Pair, grpc_metadata, start_pair

from chassis.sidecar._http_app import read_status
from chassis.sidecar._outcomes import Outcome

APP_ID = "web"
HEALTH_CHECKS = (
    "--enable-app-health-check",
    "--app-health-probe-interval",
    "1",
    "--app-health-threshold",
    "1",
)


@pytest.fixture(scope="module")
def started_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    started: list[Process] = []
    try:
        yield start_pair(
            tmp_path_factory.mktemp("http-app"), started, script="http_subscriber.py", app_id=APP_ID,
            protocol="http", sidecar_args=HEALTH_CHECKS,
        )  # fmt: skip
    finally:
        stop_all(started)


@pytest.fixture
def pair(started_pair: Pair, dapr_env: Callable[[RunningSidecar], None]) -> Pair:
    """The app and its sidecar, with the SDK pointed at the sidecar."""
    dapr_env(started_pair.sidecar)
    return started_pair


def _publish(topic: str, data: dict[str, Any]) -> str:
    event_id = str(uuid.uuid4())
    with DaprClient() as client:
        client.publish_event(
            "pubsub", topic, json.dumps(data), data_content_type="application/json",
            publish_metadata={"cloudevent.id": event_id},
        )  # fmt: skip
    return event_id


def test_events_are_posted_as_cloudevents_to_the_route(pair: Pair) -> None:
    event_id = _publish("http-orders", {"n": 1})
    (delivery,) = pair.wait_deliveries(1, id=event_id)
    assert delivery["route"] == "/orders" and delivery["content_type"] == "application/cloudevents+json"
    event = delivery["event"]
    assert (event["source"], event["topic"], event["pubsubname"], event["data"]) == (
        APP_ID, "http-orders", "pubsub", {"n": 1},
    )  # fmt: skip
    trace_id = event["traceparent"].split("-")[1]
    assert delivery["traceparent"].split("-")[1] == trace_id  # the delivery continues the publisher's trace


@pytest.mark.parametrize("answer", ["retry-status", "fail-once", "unknown-once"])
def test_retry_answers_redeliver(pair: Pair, answer: str) -> None:
    event_id = _publish("http-orders", {"answer": answer})
    first, second = pair.wait_deliveries(2, id=event_id)
    assert first["event"] == second["event"]


@pytest.mark.parametrize("answer", ["drop", "gone"])
def test_drop_and_404_dead_letter(pair: Pair, answer: str) -> None:
    event_id = _publish("http-routed", {"answer": answer})
    first, dead = pair.wait_deliveries(2, id=event_id)
    assert (first["route"], dead["route"]) == ("/other", "/dead")
    assert dead["event"]["topic"] == "http-routed"  # the original CloudEvent, posted for topic http-dlq


def test_routing_rules_pick_the_path(pair: Pair) -> None:
    event_id = _publish("http-routed", {"kind": "a"})
    assert pair.wait_deliveries(1, id=event_id)[0]["route"] == "/kind-a"


def test_a_2xx_without_a_json_status_is_a_success(pair: Pair) -> None:
    event_id = _publish("http-orders", {"answer": "garbage"})
    pair.wait_deliveries(1, id=event_id)
    follow_up = _publish("http-orders", {"n": 2})  # delivered after: the first one was not retried first
    pair.wait_deliveries(1, id=follow_up)
    assert len(pair.deliveries(id=event_id)) == 1


def test_bulk_subscription_posts_entries_and_redelivers_missing_statuses(pair: Pair) -> None:
    ids = [str(uuid.uuid4()) for _ in range(3)]
    entries = [
        BulkPublishEntry(
            json.dumps({"answer": "retry-once" if n == 0 else "ok"}), metadata={"cloudevent.id": i}
        )
        for n, i in enumerate(ids)
    ]
    with DaprClient() as client:
        client.publish_events("pubsub", "http-bulk", entries, data_content_type="application/json")
    assert len(pair.wait_deliveries(2, id=ids[0])) == 2
    assert all(pair.wait_deliveries(1, id=i)[0]["route"] == "/bulk" for i in ids[1:])


def test_metadata_reports_the_http_app(pair: Pair) -> None:
    metadata = grpc_metadata(pair.sidecar)
    assert metadata.app_connection_properties.protocol == "http"
    assert {s.topic for s in metadata.subscriptions} >= {
        "http-orders",
        "http-routed",
        "http-dlq",
        "http-bulk",
    }


def test_delivery_pauses_while_the_app_is_unhealthy(pair: Pair) -> None:
    marker = Path(f"{pair.records}.unhealthy")
    log = pair.sidecar.log
    marker.touch()
    try:
        wait_until(lambda: "delivery paused" in log(), what="the app reported unhealthy")
        event_id = _publish("http-orders", {"n": "while unhealthy"})
        time.sleep(1.5)  # absence of a delivery needs a bounded wait (more than a probe interval)
        assert not pair.deliveries(id=event_id)
    finally:
        marker.unlink()
    pair.wait_deliveries(1, id=event_id)  # healthy again: the event was kept, now delivered


def test_read_status_rules() -> None:
    assert read_status("1", 200, b"") is Outcome.ACK
    assert read_status("1", 204, b'{"status":"success"}') is Outcome.ACK
    assert read_status("1", 200, b'{"status":"DROP"}') is Outcome.DROP
    assert read_status("1", 200, b'{"status":"RETRY"}') is Outcome.RETRY
    assert read_status("1", 200, b'{"status":"???"}') is Outcome.RETRY
    assert read_status("1", 404, b"") is Outcome.DROP
    assert read_status("1", 503, b'{"status":"SUCCESS"}') is Outcome.RETRY
