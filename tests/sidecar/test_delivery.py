"""Publish through the sidecar to a `dapr.ext.grpc.App` subscriber: envelopes, outcomes, traces, crashes.

The envelope and routing helpers are also checked directly against daprd's rules (pure functions).
"""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from dapr.aio.clients import DaprClient as AsyncDaprClient
from dapr.clients import DaprClient
from dapr.proto.runtime.v1 import appcallback_pb2
from sidecar_support import (
    Process,
    RunningSidecar,
    app_process,
    fast_components,
    free_port,
    port_accepts,
    read_jsonl,
    sidecar_process,
    stop_all,
    wait_until,
)

from chassis.sidecar import _cloudevents as ce
from chassis.sidecar._delivery import backoff, parse_subscription

APP_ID = "shop"
UseSidecar = Callable[[RunningSidecar], None]


@dataclass
class Pair:
    """A subscriber app and its sidecar, sharing a tmp directory."""

    sidecar: RunningSidecar
    app: Process
    records: Path
    traces: Path

    def deliveries(self, **match: Any) -> list[dict[str, Any]]:
        return [r for r in read_jsonl(self.records) if all(r.get(k) == v for k, v in match.items())]

    def wait_deliveries(self, count: int, **match: Any) -> list[dict[str, Any]]:
        def enough() -> list[dict[str, Any]] | None:
            found = self.deliveries(**match)
            return found if len(found) >= count else None

        result: list[dict[str, Any]] = wait_until(enough, what=f"{count} deliveries of {match}")
        return result


def start_pair(workdir: Path, started: list[Process], **ports: int) -> Pair:
    """Start the subscriber app, then its sidecar; ready when /v1.0/healthz is 204 (subscribed).

    Both go into `started` before they are awaited, so a failed start is still reaped.
    """
    records, traces = workdir / "deliveries.jsonl", workdir / "spans.jsonl"
    app_port = free_port()
    app = app_process("subscriber.py", app_port, workdir, {"RECORD_FILE": str(records)})
    started.append(app)
    app.spawn()
    app.wait_ready(lambda: port_accepts(app_port), "listening")
    sidecar = sidecar_process(
        APP_ID,
        workdir,
        app_port=app_port,
        resources=[fast_components(workdir / "components")],
        env={"CHASSIS_TRACE_FILE": str(traces)},
        **ports,
    )
    started.append(sidecar)
    sidecar.spawn()
    sidecar.wait_ready(lambda: sidecar.healthy("/v1.0/healthz"), "subscribed (/v1.0/healthz 204)")
    return Pair(sidecar, app, records, traces)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    started: list[Process] = []
    try:
        yield start_pair(tmp_path_factory.mktemp("delivery"), started)
    finally:
        stop_all(started)


@pytest.fixture
def client_env(pair: Pair, dapr_env: UseSidecar) -> Pair:
    dapr_env(pair.sidecar)
    return pair


def _trace_and_span(traceparent: str) -> tuple[str, str]:
    _, trace_id, span_id, _ = traceparent.split("-")
    return trace_id, span_id


async def test_retry_then_success_redelivers_the_same_event(client_env: Pair) -> None:
    async with AsyncDaprClient() as client:
        await client.publish_event(
            "pubsub", "orders-retry", json.dumps({"order": 7}), data_content_type="application/json"
        )
    first, second = client_env.wait_deliveries(2, topic="orders-retry")
    assert first["id"] == second["id"]
    for delivery in (first, second):
        ext = delivery["extensions"]
        assert (delivery["source"], delivery["type"], delivery["specversion"]) == (
            APP_ID,
            "com.dapr.event.sent",
            "1.0",
        )
        assert delivery["datacontenttype"] == "application/json"
        assert bytes.fromhex(delivery["data"]) == b'{"order":7}'
        assert (ext["topic"], ext["pubsubname"]) == ("orders-retry", "pubsub")
        assert ext["traceparent"] == ext["traceid"] and ext["traceparent"].startswith("00-")
        assert "time" in ext and "id" not in ext and "data" not in ext
    await asyncio.sleep(0.5)  # SUCCESS was acked: nothing more may arrive (absence needs a bounded wait)
    assert len(client_env.deliveries(topic="orders-retry")) == 2


def test_delivery_continues_the_publisher_trace(client_env: Pair) -> None:
    with DaprClient() as client:
        client.publish_event("pubsub", "orders", "traced", publish_metadata={"cloudevent.id": "trace-1"})
    (delivery,) = client_env.wait_deliveries(1, id="trace-1")
    event_trace, publish_span = _trace_and_span(delivery["extensions"]["traceparent"])
    call_trace, delivery_span = _trace_and_span(delivery["metadata"]["traceparent"])
    assert call_trace == event_trace and delivery_span != publish_span
    # grpc-trace-bin is sent too, but gRPC's C core consumes that key: a Python app never sees it.
    assert delivery["metadata"]["pubsubname"] == "pubsub"
    names = ("/dapr.proto.runtime.v1.Dapr/PublishEvent", "pubsub/orders")

    def spans() -> dict[str, dict[str, Any]] | None:
        found = {s["name"]: s for s in read_jsonl(client_env.traces) if s["trace_id"] == event_trace}
        return found if all(name in found for name in names) else None

    publish, deliver = (wait_until(spans, what="publish and delivery spans")[name] for name in names)
    assert publish["span_id"] == publish_span and publish["service"] == f"{APP_ID}-sidecar"
    assert deliver["span_id"] == delivery_span and deliver["parent_id"] == publish_span


def test_drop_goes_to_the_dead_letter_topic(client_env: Pair) -> None:
    with DaprClient() as client:
        client.publish_event("pubsub", "drops", "bad", publish_metadata={"cloudevent.id": "drop-1"})
    (dropped,) = client_env.wait_deliveries(1, handler="drops", id="drop-1")
    (dead,) = client_env.wait_deliveries(1, handler="dead_letters", id="drop-1")
    assert dropped["topic"] == "drops"
    assert dead["topic"] == "drops-dlq" and dead["extensions"]["topic"] == "drops"  # the original CloudEvent
    assert bytes.fromhex(dead["data"]) == b"bad"


def test_routing_rule_selects_the_handler_path(client_env: Pair) -> None:
    with DaprClient() as client:
        metadata = {"cloudevent.type": "special", "cloudevent.id": "route-1"}
        client.publish_event("pubsub", "routed", "x", publish_metadata=metadata)
    (delivery,) = client_env.wait_deliveries(1, id="route-1")
    assert delivery["handler"] == "special" and delivery["type"] == "special"


def test_envelope_variants_reach_the_app_as_daprd_sends_them(client_env: Pair) -> None:
    event = {"specversion": "1.0", "id": "ce-1", "source": "billing", "type": "paid", "custom": "yes"}
    with DaprClient() as client:
        client.publish_event(
            "pubsub", "orders", b"\x00\xff", data_content_type="application/octet-stream",
            publish_metadata={"cloudevent.id": "bin-1"},
        )  # fmt: skip
        overrides = {"cloudevent.id": "txt-1", "cloudevent.source": "me"}
        client.publish_event("pubsub", "orders", "hello", publish_metadata=overrides)
        client.publish_event(
            "pubsub", "orders", json.dumps(event), data_content_type="application/cloudevents+json"
        )
        client.publish_event("pubsub", "orders", b"raw-bytes", publish_metadata={"rawPayload": "true"})
    binary = client_env.wait_deliveries(1, id="bin-1")[0]
    text = client_env.wait_deliveries(1, id="txt-1")[0]
    passthrough = client_env.wait_deliveries(1, id="ce-1")[0]
    raw = client_env.wait_deliveries(1, source="Dapr")[0]
    assert bytes.fromhex(binary["data"]) == b"\x00\xff"
    assert text["datacontenttype"] == "text/plain" and text["source"] == "me"
    assert bytes.fromhex(text["data"]) == b"hello"
    assert (passthrough["source"], passthrough["type"]) == ("billing", "paid")
    assert passthrough["extensions"]["custom"] == "yes" and passthrough["extensions"]["topic"] == "orders"
    assert raw["datacontenttype"] == "application/octet-stream" and bytes.fromhex(raw["data"]) == b"raw-bytes"


def test_metadata_reports_the_app_subscriptions(client_env: Pair) -> None:
    url = f"http://127.0.0.1:{client_env.sidecar.http_port}/v1.0/metadata"
    with urllib.request.urlopen(url, timeout=5) as response:
        metadata = json.load(response)
    topics = {(s["pubsubname"], s["topic"], s["deadLetterTopic"]) for s in metadata["subscriptions"]}
    assert metadata["id"] == APP_ID
    assert ("pubsub", "drops", "drops-dlq") in topics and ("pubsub", "orders", "") in topics
    routed = next(s for s in metadata["subscriptions"] if s["topic"] == "routed")
    assert routed["rules"] == [{"match": 'event.type == "special"', "path": "special"}]


def test_published_events_survive_app_and_sidecar_crashes(tmp_path: Path, dapr_env: UseSidecar) -> None:
    processes: list[Process] = []
    try:
        running = start_pair(tmp_path, processes)
        dapr_env(running.sidecar)
        running.app.kill()  # the app is down: deliveries fail with UNAVAILABLE and are retried
        with DaprClient() as client:
            client.publish_event("pubsub", "orders", "one", publish_metadata={"cloudevent.id": "crash-1"})
        wait_until(lambda: "error returned from app" in running.sidecar.log(), what="a failed attempt")
        running.app.spawn()  # same port: the sidecar reconnects and delivers
        wait_until(lambda: running.deliveries(id="crash-1"), what="delivery after the app restart")
        running.app.kill()
        with DaprClient() as client:
            client.publish_event("pubsub", "orders", "two", publish_metadata={"cloudevent.id": "crash-2"})
        running.sidecar.kill()  # acknowledged to the publisher, then the sidecar dies
        ports = {"grpc_port": running.sidecar.grpc_port, "http_port": running.sidecar.http_port}
        restarted = start_pair(tmp_path, processes, **ports)
        (delivery,) = restarted.wait_deliveries(1, id="crash-2")
        assert bytes.fromhex(delivery["data"]) == b"two"
    finally:
        stop_all(processes)


# ---- daprd's envelope and routing rules, checked directly ------------------------------------------


def test_new_envelope_applies_cloudevent_overrides() -> None:
    envelope = ce.new_envelope(
        source="app",
        topic="t",
        pubsub="p",
        content_type="",
        data=b"text",
        traceparent="00-" + "1" * 32 + "-" + "2" * 16 + "-01",
        tracestate="",
        metadata={"CloudEvent.Id": "x", "cloudevent.type": "kind", "cloudevent.subject": "s",
                  "cloudevent.traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"},
    )  # fmt: skip
    assert envelope["id"] == "x" and envelope["type"] == "kind" and envelope["subject"] == "s"
    assert envelope["datacontenttype"] == "text/plain" and envelope["data"] == "text"
    assert envelope["traceparent"] == envelope["traceid"] == "00-" + "a" * 32 + "-" + "b" * 16 + "-01"


def test_json_payloads_are_parsed_or_kept_as_strings() -> None:
    common = {"source": "a", "topic": "t", "pubsub": "p", "traceparent": "", "tracestate": "", "metadata": {}}
    parsed = ce.new_envelope(content_type="application/json; charset=utf-8", data=b'{"b":1,"a":2}', **common)
    broken = ce.new_envelope(content_type="application/json", data=b"{not json", **common)
    assert parsed["data"] == {"b": 1, "a": 2}
    assert broken["data"] == "{not json"
    request = ce.topic_event_request(parsed, topic="t", pubsub="p", path="")
    assert request.data == b'{"a":2,"b":1}'  # Go's json.Marshal: sorted keys, compact


def test_cloudevent_passthrough_defaults_missing_attributes() -> None:
    raw = b'{"id":"1","data":"x"}'
    event = ce.from_cloudevent(raw, topic="t", pubsub="p", traceparent="tp", tracestate="")
    assert (event["source"], event["type"], event["specversion"]) == ("Dapr", "com.dapr.event.sent", "1.0")
    assert (event["topic"], event["pubsubname"], event["traceparent"]) == ("t", "p", "tp")
    with pytest.raises(ce.EnvelopeError):
        ce.from_cloudevent(b"[1]", topic="t", pubsub="p", traceparent="", tracestate="")


def test_ttl_adds_expiration_and_expired_events_are_detected() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    envelope: dict[str, Any] = {}
    ce.apply_ttl(envelope, {"ttlInSeconds": "60"}, now=now)
    assert envelope["expiration"] == "2030-01-01T00:01:00Z"
    assert not ce.has_expired(envelope, now=now)
    assert ce.has_expired(envelope, now=now + timedelta(minutes=2))


def test_topic_event_request_fields_and_extensions() -> None:
    event = {
        "id": "1", "source": "s", "type": "t", "specversion": "1.0", "topic": "orders", "custom": {"k": [1]},
        "datacontenttype": "application/octet-stream", "data_base64": base64.b64encode(b"\x01").decode(),
    }  # fmt: skip
    request = ce.topic_event_request(event, topic="orders", pubsub="pubsub", path="")
    assert (request.id, request.source, request.type, request.spec_version) == ("1", "s", "t", "1.0")
    assert request.data == b"\x01" and request.path == "" and request.pubsub_name == "pubsub"
    assert set(request.extensions.keys()) == {"topic", "custom"}


def _subscription(*rules: tuple[str, str], default: str = "") -> appcallback_pb2.TopicSubscription:
    topic_rules = [appcallback_pb2.TopicRule(match=match, path=path) for match, path in rules]
    routes = appcallback_pb2.TopicRoutes(rules=topic_rules, default=default)
    return appcallback_pb2.TopicSubscription(pubsub_name="p", topic="t", routes=routes)


def test_routes_follow_daprd_rules_in_order() -> None:
    parsed = parse_subscription(
        _subscription(('event.type == "a"', "/a"), ("has(event.data.x)", "/unsupported"), default="/default")
    )
    no_routes = parse_subscription(appcallback_pb2.TopicSubscription(pubsub_name="p", topic="t"))
    rules_only = parse_subscription(_subscription(("event.type == 'a'", "a")))
    assert parsed.route({"type": "a"}) == "/a" and parsed.route({"type": "b"}) == "/default"
    assert no_routes.route({"type": "b"}) == ""  # gRPC's implicit default route
    assert rules_only.route({"type": "b"}) is None  # daprd drops what no rule matches


def test_backoff_doubles_from_100ms_up_to_the_cap() -> None:
    assert [backoff(n, 5.0) for n in (1, 2, 3, 8, 20)] == [0.1, 0.2, 0.4, 5.0, 5.0]
