"""Routing rules: real CEL over the CloudEvent, rules in order, no match and no default -> dead letter.

Programmatic rules come from a `dapr.ext.grpc.App` (tests/sidecar/apps/router.py) behind a real sidecar;
the CEL compiler and evaluator are also checked directly.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from dapr.clients import DaprClient
from sidecar_support import Process, RunningSidecar, stop_all, wait_until
from subscription_support import Pair, start_pair

from chassis.sidecar._subscriptions import InvalidRule, RouteError, build_routes, compile_match

APP_ID = "router"


@pytest.fixture(scope="module")
def started_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    started: list[Process] = []
    try:
        yield start_pair(
            tmp_path_factory.mktemp("routing"), started, script="router.py", app_id=APP_ID,
            sidecar_args=("--enable-app-health-check", "--app-health-probe-interval", "1",
                          "--app-health-threshold", "1"),
        )  # fmt: skip
    finally:
        stop_all(started)


@pytest.fixture
def pair(started_pair: Pair, dapr_env: Callable[[RunningSidecar], None]) -> Pair:
    """The app and its sidecar, with the SDK pointed at the sidecar."""
    dapr_env(started_pair.sidecar)
    return started_pair


def _publish(pair: Pair, topic: str, data: dict[str, object]) -> str:
    event_id = str(uuid.uuid4())
    with DaprClient() as client:
        client.publish_event(
            "pubsub", topic, json.dumps(data), data_content_type="application/json",
            publish_metadata={"cloudevent.id": event_id},
        )  # fmt: skip
    return event_id


def test_cel_rules_route_in_order_over_event_data(pair: Pair) -> None:
    high = _publish(pair, "scores", {"score": 5})
    flagged = _publish(pair, "scores", {"score": 1, "important": True})
    both = _publish(pair, "scores", {"score": 9, "important": True})  # the first rule wins
    assert pair.wait_deliveries(1, id=high)[0]["handler"] == "high"
    assert pair.wait_deliveries(1, id=flagged)[0]["handler"] == "flagged"
    assert pair.wait_deliveries(1, id=both)[0]["handler"] == "high"


def test_unmatched_event_without_default_goes_to_the_dead_letter_topic(pair: Pair) -> None:
    unmatched = _publish(pair, "scores", {"score": 1})
    (dead,) = pair.wait_deliveries(1, id=unmatched)
    assert dead["handler"] == "scores_dead" and dead["topic"] == "scores-dlq"
    assert dead["data"] == {"score": 1}  # the original CloudEvent


def test_an_event_the_rules_cannot_evaluate_is_dead_lettered(pair: Pair) -> None:
    # `event.data.score > 3` on a string payload is a CEL error: daprd dead-letters such events.
    with DaprClient() as client:
        client.publish_event("pubsub", "scores", "plain text", publish_metadata={"cloudevent.id": "cel-err"})
    (dead,) = pair.wait_deliveries(1, id="cel-err")
    assert dead["handler"] == "scores_dead"
    assert "error finding matching route" in pair.sidecar.log()


def test_metadata_lists_the_rules(pair: Pair) -> None:
    from subscription_support import grpc_metadata

    (scores,) = [s for s in grpc_metadata(pair.sidecar).subscriptions if s.topic == "scores"]
    assert [(r.match, r.path) for r in scores.rules.rules] == [
        ("event.data.score > 3", "high"),
        ("has(event.data.important)", "flagged"),
    ]
    assert scores.dead_letter_topic == "scores-dlq"


def test_delivery_waits_while_the_grpc_app_reports_unhealthy(pair: Pair) -> None:
    marker = Path(f"{pair.records}.unhealthy")
    marker.touch()
    try:
        wait_until(lambda: "delivery paused" in pair.sidecar.log(), what="the app reported unhealthy")
        event_id = _publish(pair, "scores", {"score": 7})
        time.sleep(1.5)  # absence of a delivery needs a bounded wait (more than a probe interval)
        assert not pair.deliveries(id=event_id)
    finally:
        marker.unlink()
    assert pair.wait_deliveries(1, id=event_id)[0]["handler"] == "high"


# ---- the compiler, directly ------------------------------------------------------------------------


def test_cel_expressions_evaluate_over_the_event() -> None:
    event = {"type": "widget", "data": {"score": 4, "tags": ["a"]}, "source": "shop"}
    assert compile_match('event.type == "widget"')(event)
    assert compile_match("has(event.data.score) && event.data.score > 3")(event)
    assert not compile_match("has(event.data.important)")(event)
    assert compile_match('"a" in event.data.tags && event.source.startsWith("sh")')(event)


def test_invalid_expressions_fail_to_compile_and_bad_data_fails_to_evaluate() -> None:
    with pytest.raises(InvalidRule, match="invalid CEL expression"):
        compile_match("event.type ==")
    with pytest.raises(RouteError):
        compile_match("event.data.score > 3")({"data": {}})
    with pytest.raises(RouteError, match="did not return a bool"):
        compile_match("event.data")({"data": 1})


def test_routes_keep_order_then_default_and_gRPC_default_is_empty_path() -> None:
    routes = build_routes([('event.type == "a"', "/a"), ("", "/always")], "/default")
    assert [r.path for r in routes] == ["/a", "/always", "/default"]
    assert [r.path for r in build_routes([], "")] == [""]
