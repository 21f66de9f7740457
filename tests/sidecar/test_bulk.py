"""Bulk publish (BulkPublishEvent and its Alpha1 name) and bulk subscribe (OnBulkTopicEvent).

Publishing goes through the official SDK's `publish_events` (sync and async); bulk delivery reaches the
`dapr.ext.grpc.App` of tests/sidecar/apps/router.py through a declarative `bulkSubscribe` subscription;
the OnBulkTopicEventAlpha1 fallback is checked against an in-process gRPC app with only that method.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator

import grpc
import pytest
from dapr.aio.clients import DaprClient as AsyncDaprClient
from dapr.clients import BulkPublishEntry, DaprClient
from dapr.clients.exceptions import DaprGrpcError
from dapr.proto.runtime.v1 import appcallback_pb2, appcallback_pb2_grpc, dapr_pb2_grpc, pubsub_pb2
from sidecar_support import Process, RunningSidecar, stop_all, wait_until
from subscription_support import Pair, start_pair

from chassis.sidecar._app_grpc import GrpcApp
from chassis.sidecar._outcomes import Delivery, Outcome

APP_ID = "bulky"
BULK_YAML = """\
apiVersion: dapr.io/v2alpha1
kind: Subscription
metadata: {name: bulk}
spec:
  pubsubname: pubsub
  topic: bulk-in
  routes: {default: bulk_target}
  bulkSubscribe: {enabled: true, maxMessagesCount: 5, maxAwaitDurationMs: 300}
"""


@pytest.fixture(scope="module")
def started_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    started: list[Process] = []
    try:
        yield start_pair(
            tmp_path_factory.mktemp("bulk"), started, script="router.py", app_id=APP_ID,
            resources={"bulk.yaml": BULK_YAML},
        )  # fmt: skip
    finally:
        stop_all(started)


@pytest.fixture
def pair(started_pair: Pair, dapr_env: Callable[[RunningSidecar], None]) -> Pair:
    """The app and its sidecar, with the SDK pointed at the sidecar."""
    dapr_env(started_pair.sidecar)
    return started_pair


def _entries(count: int, **data: object) -> tuple[list[BulkPublishEntry], list[str]]:
    ids = [str(uuid.uuid4()) for _ in range(count)]
    entries = [
        BulkPublishEntry(json.dumps({"n": n, **data}), metadata={"cloudevent.id": event_id})
        for n, event_id in enumerate(ids)
    ]
    return entries, ids


def test_bulk_published_events_are_delivered_in_bulk(pair: Pair) -> None:
    entries, ids = _entries(5)
    with DaprClient() as client:
        response = client.publish_events("pubsub", "bulk-in", entries, data_content_type="application/json")
    assert response.failed_entries == []
    for event_id in ids:
        (delivery,) = pair.wait_deliveries(1, id=event_id)
        assert delivery["handler"] == "bulk_target" and delivery["topic"] == "bulk-in"
    assert sorted(r["data"]["n"] for r in pair.deliveries() if r["id"] in ids) == [0, 1, 2, 3, 4]
    assert "delivering a bulk of" in pair.sidecar.log()


async def test_a_retried_entry_is_redelivered_and_the_others_are_not(pair: Pair) -> None:
    retried, ids = _entries(1, answer="retry-once")
    others, other_ids = _entries(3)
    async with AsyncDaprClient() as client:
        response = await client.publish_events(
            "pubsub", "bulk-in", retried + others, data_content_type="application/json"
        )
    assert response.failed_entries == []
    first, second = pair.wait_deliveries(2, id=ids[0])
    assert first["data"] == second["data"]
    for event_id in other_ids:
        pair.wait_deliveries(1, id=event_id)
    wait_until(lambda: len(pair.deliveries(id=ids[0])) == 2)
    assert all(len(pair.deliveries(id=event_id)) == 1 for event_id in other_ids)


def test_duplicate_entry_ids_fail_the_whole_call(pair: Pair) -> None:
    entries = [BulkPublishEntry("a", entry_id="same"), BulkPublishEntry("b", entry_id="same")]
    with DaprClient() as client, pytest.raises(DaprGrpcError) as caught:
        client.publish_events("pubsub", "bulk-in", entries)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "entryId is duplicated or not present" in (caught.value.details() or "")


def test_alpha1_name_and_unknown_pubsub(pair: Pair) -> None:
    request = pubsub_pb2.BulkPublishRequest(
        pubsub_name="pubsub", topic="bulk-alpha",
        entries=[pubsub_pb2.BulkPublishRequestEntry(entry_id="1", event=b"x", content_type="text/plain")],
    )  # fmt: skip
    with grpc.insecure_channel(f"127.0.0.1:{pair.sidecar.grpc_port}") as channel:
        stub = dapr_pb2_grpc.DaprStub(channel)  # type: ignore[no-untyped-call]
        assert list(stub.BulkPublishEventAlpha1(request, timeout=5).failedEntries) == []
        request.pubsub_name = "nope"
        with pytest.raises(grpc.RpcError) as caught:
            stub.BulkPublishEvent(request, timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert "pubsub nope is not found" in caught.value.details()  # type: ignore[attr-defined]


# ---- the gRPC app channel against an app that only has the Alpha1 bulk method ------------------------


class _AlphaOnlyApp(appcallback_pb2_grpc.AppCallbackAlphaServicer):
    """An app built with an older SDK: OnBulkTopicEvent is UNIMPLEMENTED, the Alpha1 name answers."""

    def __init__(self) -> None:
        self.requests: list[appcallback_pb2.TopicEventBulkRequest] = []

    async def OnBulkTopicEventAlpha1(
        self, request: appcallback_pb2.TopicEventBulkRequest, context: object
    ) -> appcallback_pb2.TopicEventBulkResponse:
        self.requests.append(request)
        drop = appcallback_pb2.TopicEventResponse.TopicEventResponseStatus.DROP
        first = request.entries[0].entry_id  # answers for the first entry only: the rest count as RETRY
        return appcallback_pb2.TopicEventBulkResponse(
            statuses=[appcallback_pb2.TopicEventBulkResponseEntry(entry_id=first, status=drop)]
        )


async def test_bulk_falls_back_to_alpha1_and_a_missing_status_is_retry() -> None:
    server = grpc.aio.server()
    alpha = _AlphaOnlyApp()
    appcallback_pb2_grpc.add_AppCallbackServicer_to_server(  # type: ignore[no-untyped-call]
        appcallback_pb2_grpc.AppCallbackServicer(), server
    )
    appcallback_pb2_grpc.add_AppCallbackAlphaServicer_to_server(alpha, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    app = GrpcApp(f"127.0.0.1:{port}")
    try:
        batch = [
            Delivery("pubsub", "t", "/p", {"id": str(n), "specversion": "1.0", "data": n,
                                           "datacontenttype": "application/json"}, b"", entry_id=f"e{n}")
            for n in range(3)
        ]  # fmt: skip
        assert await app.deliver_bulk(batch) == [Outcome.DROP, Outcome.RETRY, Outcome.RETRY]
        assert await app.deliver_bulk(batch[:1]) == [Outcome.DROP]  # remembered: straight to Alpha1
    finally:
        await app.close()
        await server.stop(None)
    (first, _) = alpha.requests
    assert [e.entry_id for e in first.entries] == ["e0", "e1", "e2"]
    assert first.path == "/p" and first.type == "com.dapr.event.sent.bulk"
    assert first.entries[1].cloud_event.data == b"1" and first.entries[1].cloud_event.id == "1"
