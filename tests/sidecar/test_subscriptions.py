"""Declarative subscriptions (Subscription YAML v2alpha1 and v1alpha1) merged with programmatic ones.

A real sidecar loads the YAML beside the `dapr.ext.grpc` app of tests/sidecar/apps/router.py; start-up
errors are checked on a real `python -m chassis.sidecar`; parsing and merging directly.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from dapr.clients import DaprClient
from sidecar_support import (
    Process,
    RunningSidecar,
    child_env,
    embedded_components,
    free_port,
    stop_all,
    wait_until,
)
from subscription_support import Pair, grpc_metadata, start_pair

from chassis.sidecar._errors import ResourceError
from chassis.sidecar._outcomes import Delivery
from chassis.sidecar._settle import prepare
from chassis.sidecar._subscriptions import (
    DECLARATIVE,
    PROGRAMMATIC,
    Subscription,
    from_http_json,
    merge,
    parse_declarative,
)
from chassis.sidecar._topic_scopes import PUBLISHING, SUBSCRIPTION, is_allowed, scoped_topics
from chassis.sidecar.components import Message

APP_ID = "shop"
SUBSCRIPTIONS_YAML = """\
apiVersion: dapr.io/v2alpha1
kind: Subscription
metadata: {name: declared}
spec:
  pubsubname: pubsub
  topic: declared
  routes:
    rules:
    - {match: 'event.type == "typed"', path: typed}
    default: fallback
  deadLetterTopic: declared-dlq
scopes: [shop]
---
apiVersion: dapr.io/v1alpha1
kind: Subscription
metadata: {name: legacy}
spec:
  pubsubname: pubsub
  topic: legacy
  route: fallback
---
apiVersion: dapr.io/v2alpha1
kind: Subscription
metadata: {name: not-mine}
spec:
  pubsubname: pubsub
  topic: not-mine
  routes: {default: fallback}
scopes: [someone-else]
"""


@pytest.fixture(scope="module")
def started_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    started: list[Process] = []
    try:
        yield start_pair(
            tmp_path_factory.mktemp("declarative"), started, script="router.py", app_id=APP_ID,
            resources={"subscriptions.yaml": SUBSCRIPTIONS_YAML},
        )  # fmt: skip
    finally:
        stop_all(started)


@pytest.fixture
def pair(started_pair: Pair, dapr_env: Callable[[RunningSidecar], None]) -> Pair:
    """The app and its sidecar, with the SDK pointed at the sidecar."""
    dapr_env(started_pair.sidecar)
    return started_pair


def _publish(pair: Pair, topic: str, event_id: str, data: object, **metadata: str) -> None:
    with DaprClient() as client:
        client.publish_event(
            "pubsub", topic, json.dumps(data), data_content_type="application/json",
            publish_metadata={"cloudevent.id": event_id, **metadata},
        )  # fmt: skip


def test_declarative_rules_and_default_route(pair: Pair) -> None:
    _publish(pair, "declared", "typed-1", {"n": 1}, **{"cloudevent.type": "typed"})
    _publish(pair, "declared", "other-1", {"n": 2})
    _publish(pair, "legacy", "legacy-1", {"n": 3})
    assert pair.wait_deliveries(1, id="typed-1")[0]["handler"] == "typed"
    assert pair.wait_deliveries(1, id="other-1")[0]["handler"] == "fallback"
    assert pair.wait_deliveries(1, id="legacy-1")[0]["handler"] == "fallback"


def test_drop_and_retry_go_to_the_dead_letter_topic(pair: Pair) -> None:
    # Without a resiliency policy daprd dead-letters a failed delivery at once, RETRY included.
    _publish(pair, "declared", "drop-1", {"answer": "drop"})
    _publish(pair, "declared", "retry-1", {"answer": "retry-once"})
    for event_id in ("drop-1", "retry-1"):
        first, dead = pair.wait_deliveries(2, id=event_id)
        assert (first["handler"], dead["handler"]) == ("fallback", "declared_dead")
        assert dead["topic"] == "declared-dlq" and dead["data"] == first["data"]


def test_expired_events_are_dead_lettered_without_delivery(pair: Pair) -> None:
    past = (datetime.now(UTC) - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    event = {"specversion": "1.0", "id": "expired-1", "source": "t", "type": "x", "expiration": past,
             "datacontenttype": "application/json", "data": {"late": True}}  # fmt: skip
    with DaprClient() as client:
        client.publish_event(
            "pubsub", "declared", json.dumps(event), data_content_type="application/cloudevents+json"
        )
    # The dead-letter copy is the original CloudEvent, so it is expired too: dropped there as well.
    log = pair.sidecar.log
    wait_until(lambda: log().count("dropping expired pub/sub event expired-1") == 2, what="both drops")
    assert "sent to dead-letter topic declared-dlq" in log()
    assert not pair.deliveries(id="expired-1")


def test_metadata_reports_each_subscription_type_and_honours_scopes(pair: Pair) -> None:
    subscriptions = {s.topic: s for s in grpc_metadata(pair.sidecar).subscriptions}
    assert "not-mine" not in subscriptions
    declared = subscriptions["declared"]
    assert declared.type == DECLARATIVE_TYPE and declared.dead_letter_topic == "declared-dlq"
    assert [(r.match, r.path) for r in declared.rules.rules] == [
        ('event.type == "typed"', "typed"),
        ("", "fallback"),
    ]
    assert subscriptions["legacy"].type == DECLARATIVE_TYPE
    assert subscriptions["scores"].type == PROGRAMMATIC_TYPE


DECLARATIVE_TYPE, PROGRAMMATIC_TYPE = 1, 2  # metadata_pb2.PubsubSubscriptionType


# ---- start-up errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("yaml_text", "field"),
    [
        (SUBSCRIPTIONS_YAML.replace('event.type == "typed"', "event.type =="), "spec.routes.rules[0].match"),
        (SUBSCRIPTIONS_YAML.replace("  topic: legacy\n", ""), "spec.topic"),
        (SUBSCRIPTIONS_YAML.replace("dapr.io/v1alpha1", "dapr.io/v9"), "apiVersion"),
    ],
)
def test_an_invalid_subscription_stops_the_sidecar_with_one_line(
    tmp_path: Path, yaml_text: str, field: str
) -> None:
    components = embedded_components(tmp_path / "components")
    (components / "subscriptions.yaml").write_text(yaml_text)
    argv = [sys.executable, "-m", "chassis.sidecar", "--app-id", APP_ID, "--resources-path", str(components)]
    argv += ["--dapr-grpc-port", str(free_port()), "--dapr-http-port", str(free_port())]
    done = subprocess.run(argv, cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert "subscriptions.yaml#" in line and f": {field}: " in line


# ---- parsing and merging, directly ------------------------------------------------------------------


def test_parse_declarative_reads_bulk_metadata_and_scopes() -> None:
    doc = {
        "apiVersion": "dapr.io/v2alpha1", "kind": "Subscription", "metadata": {"name": "n"},
        "spec": {"pubsubname": "p", "topic": "t", "routes": {"default": "/d"},
                 "metadata": {"rawPayload": True}, "bulkSubscribe": {"enabled": True, "maxMessagesCount": 7}},
        "scopes": ["a"],
    }  # fmt: skip
    sub = parse_declarative("f.yaml", doc)
    assert sub.metadata == {"rawPayload": "true"} and sub.scopes == ("a",) and sub.type == DECLARATIVE
    assert sub.bulk is not None and (sub.bulk.max_count, sub.bulk.max_await) == (7, 1.0)
    assert sub.in_scope("a") and not sub.in_scope("b")
    doc["spec"]["bulkSubscribe"] = {"enabled": True, "maxMessagesCount": "many"}  # type: ignore[index]
    with pytest.raises(ResourceError, match=r"spec\.bulkSubscribe\.maxMessagesCount"):
        parse_declarative("f.yaml", doc)


def test_programmatic_subscriptions_win_over_declarative_ones_for_the_same_topic() -> None:
    declared = Subscription("p", "t", type=DECLARATIVE, dead_letter_topic="d")
    other = Subscription("p", "u", type=DECLARATIVE)
    programmatic = Subscription("p", "t", type=PROGRAMMATIC)
    assert merge([declared, other], [programmatic]) == [programmatic, other]


def test_http_subscribe_json_v1_route_and_v2_routes() -> None:
    v1 = from_http_json({"pubsubname": "p", "topic": "t", "route": "/orders", "deadLetterTopic": "d"})
    v2 = from_http_json(
        {"pubsubname": "p", "topic": "t", "routes": {"rules": [{"match": 'event.type == "a"', "path": "/a"}],
                                                     "default": "/rest"},
         "bulkSubscribe": {"enabled": True}, "metadata": {"rawPayload": "true"}}
    )  # fmt: skip
    assert [r.path for r in v1.routes] == ["/orders"] and v1.dead_letter_topic == "d"
    assert v2.route({"type": "a"}) == "/a" and v2.route({"type": "b"}) == "/rest"
    assert v2.bulk is not None and v2.bulk.max_count == 100 and v2.metadata == {"rawPayload": "true"}


def test_raw_payload_subscription_metadata_wraps_the_bytes_as_daprd_does() -> None:
    message = Message(seq=1, topic="t", data=b"\x00raw", metadata={}, attempts=1)
    delivery = prepare("p", Subscription("p", "t", metadata={"rawPayload": "true"}), message)
    assert isinstance(delivery, Delivery) and delivery.raw
    assert delivery.event["datacontenttype"] == "application/octet-stream"
    assert base64.b64decode(delivery.event["data_base64"]) == b"\x00raw"
    assert json.loads(delivery.body)["topic"] == "t"  # HTTP apps get the wrapper as JSON
    stored = Message(seq=2, topic="t", data=b'{"id":"1","data":{"a":1}}', metadata={}, attempts=1)
    plain = prepare("p", Subscription("p", "t"), stored)
    assert isinstance(plain, Delivery) and plain.body == stored.data and not plain.raw


def test_topic_scopes_follow_daprd() -> None:
    meta = {"subscriptionScopes": "a=t1, t2;b=", "allowedTopics": "t1,t2,t3", "ProtectedTopics": "t3"}
    assert scoped_topics(SUBSCRIPTION, "a", meta) == ["t1", "t2"] and scoped_topics(
        SUBSCRIPTION, "b", meta
    ) == [""]
    assert is_allowed("t1", meta, "a", SUBSCRIPTION) and not is_allowed("t3", meta, "a", SUBSCRIPTION)
    assert not is_allowed("t1", meta, "b", SUBSCRIPTION)  # `b=`: nothing
    assert is_allowed("t2", meta, "c", SUBSCRIPTION) and not is_allowed("t4", meta, "c", SUBSCRIPTION)
    assert not is_allowed("t3", meta, "c", SUBSCRIPTION)  # protected: only for apps scoped to it
    assert is_allowed("anything", {}, "c", PUBLISHING)
