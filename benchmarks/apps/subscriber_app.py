"""The pub/sub benchmarks' subscriber: a grpc.aio AppCallback servicer recording receive times.

$TOPIC on pubsub `pubsub`; with BULK=1 the subscription is bulkSubscribe (OnBulkTopicEvent).
Single events carry {"t": CLOCK_MONOTONIC ns at publish, "m": phase}; each delivery appends
`phase latency_ns monotonic_ns` to $RECORD_FILE; bulk deliveries append `count monotonic_ns` per
batch (CLOCK_MONOTONIC is system-wide, so times compare across processes).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

import grpc
from dapr.proto.runtime.v1 import appcallback_pb2 as cb
from dapr.proto.runtime.v1 import appcallback_pb2_grpc as cb_grpc
from google.protobuf import empty_pb2

TOPIC = os.environ["TOPIC"]
BULK = os.environ.get("BULK") == "1"
BULK_COUNT = int(os.environ.get("BULK_COUNT", "500"))
SUCCESS = cb.TopicEventResponse.TopicEventResponseStatus.SUCCESS


class Callback(cb_grpc.AppCallbackServicer):  # type: ignore[misc]
    """Lists one subscription and records every delivery."""

    def __init__(self, record: Any) -> None:
        self.record = record

    async def ListTopicSubscriptions(self, request: empty_pb2.Empty, context: Any) -> Any:
        sub = cb.TopicSubscription(pubsub_name="pubsub", topic=TOPIC)
        if BULK:
            sub.bulk_subscribe.enabled = True
            sub.bulk_subscribe.max_messages_count = BULK_COUNT
            sub.bulk_subscribe.max_await_duration_ms = 50
        return cb.ListTopicSubscriptionsResponse(subscriptions=[sub])

    async def OnTopicEvent(self, request: cb.TopicEventRequest, context: Any) -> Any:
        now = time.monotonic_ns()
        data = json.loads(request.data)
        self.record.write(f"{data.get('m', 0)} {now - data['t']} {now}\n")
        self.record.flush()
        return cb.TopicEventResponse(status=SUCCESS)

    async def OnBulkTopicEvent(self, request: cb.TopicEventBulkRequest, context: Any) -> Any:
        self.record.write(f"{len(request.entries)} {time.monotonic_ns()}\n")
        self.record.flush()
        statuses = [
            cb.TopicEventBulkResponseEntry(entry_id=e.entry_id, status=SUCCESS) for e in request.entries
        ]
        return cb.TopicEventBulkResponse(statuses=statuses)


async def serve(port: int, record: Any) -> None:
    server = grpc.aio.server()
    cb_grpc.add_AppCallbackServicer_to_server(Callback(record), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    with open(os.environ["RECORD_FILE"], "a") as out:
        asyncio.run(serve(int(os.environ["APP_PORT"]), out))
