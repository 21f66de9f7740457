"""A subscriber app for the sidecar's tests, written with the official `dapr.ext.grpc.App` (as users do).

Every delivery is appended to $RECORD_FILE as one JSON line. The topic decides the answer:
  orders            SUCCESS
  orders-retry      RETRY the first time an event id is seen, SUCCESS afterwards
  drops             DROP (the subscription has dead-letter topic drops-dlq)
  drops-dlq         SUCCESS
  routed            only a rule `event.type == "special"` (path = the handler's name)
Port from $APP_PORT.
"""

from __future__ import annotations

import json
import os
import threading

from dapr.ext.grpc import App, Rule, SubscriptionMessage, TopicEventResponse

PUBSUB = "pubsub"
RECORD_FILE = os.environ["RECORD_FILE"]
app = App()
_lock = threading.Lock()
_seen: set[str] = set()


def record(handler: str, event: SubscriptionMessage) -> None:
    metadata = event.metadata()
    line = {
        "handler": handler,
        "id": event.id(),
        "source": event.source(),
        "type": event.type(),
        "specversion": event.spec_version(),
        "datacontenttype": event.data_content_type(),
        "topic": event.topic(),
        "pubsubname": event.pubsub_name(),
        "data": event.raw_data().hex(),
        "extensions": event.extensions(),
        "metadata": {k: v for k, v in metadata.items() if isinstance(v, str)},
        "binary_metadata": sorted(k for k, v in metadata.items() if isinstance(v, bytes)),
    }
    with _lock, open(RECORD_FILE, "a") as out:
        out.write(json.dumps(line) + "\n")


@app.subscribe(PUBSUB, "orders")
def orders(event: SubscriptionMessage) -> TopicEventResponse:
    record("orders", event)
    return TopicEventResponse("success")


@app.subscribe(PUBSUB, "orders-retry")
def retry_once(event: SubscriptionMessage) -> TopicEventResponse:
    record("retry_once", event)
    with _lock:
        first = event.id() not in _seen
        _seen.add(event.id())
    return TopicEventResponse("retry" if first else "success")


@app.subscribe(PUBSUB, "drops", dead_letter_topic="drops-dlq")
def drops(event: SubscriptionMessage) -> TopicEventResponse:
    record("drops", event)
    return TopicEventResponse("drop")


@app.subscribe(PUBSUB, "drops-dlq")
def dead_letters(event: SubscriptionMessage) -> None:
    record("dead_letters", event)  # returning nothing answers an empty message, read as SUCCESS


@app.subscribe(PUBSUB, "routed", rule=Rule('event.type == "special"', 1))
def special(event: SubscriptionMessage) -> TopicEventResponse:
    record("special", event)
    return TopicEventResponse("success")


if __name__ == "__main__":
    app.run(int(os.environ["APP_PORT"]), listen_address="127.0.0.1")
