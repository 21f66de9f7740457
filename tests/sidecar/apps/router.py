"""A subscriber for routing, declarative and bulk tests, written with the official `dapr.ext.grpc.App`.

Every delivery is appended to $RECORD_FILE as one JSON line {handler, id, type, topic, data}. The SDK
finds a handler by route path too, so the declarative subscriptions of the tests (Subscription YAML)
route to these handlers by naming them in `path`:
  scores      rule `event.data.score > 3` -> high, rule `has(event.data.important)` -> flagged,
              no default (unmatched events are dead-lettered to scores-dlq)
  scores-dlq  -> scores_dead
  typed, fallback, bulk_target   handlers for declarative routes (their own topics are never used)
A `data.answer` of "retry-once" answers RETRY the first time an id is seen, "drop" answers DROP.
The health check fails while the file $RECORD_FILE.unhealthy exists.
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


def handle(handler: str, event: SubscriptionMessage) -> TopicEventResponse:
    data = event.data()
    line = {"handler": handler, "id": event.id(), "type": event.type(), "topic": event.topic(), "data": data}
    with _lock, open(RECORD_FILE, "a") as out:
        out.write(json.dumps(line) + "\n")
    answer = data.get("answer") if isinstance(data, dict) else None
    if answer == "drop":
        return TopicEventResponse("drop")
    if answer == "retry-once":
        with _lock:
            first = event.id() not in _seen
            _seen.add(event.id())
        if first:
            return TopicEventResponse("retry")
    return TopicEventResponse("success")


@app.subscribe(PUBSUB, "scores", dead_letter_topic="scores-dlq", rule=Rule("event.data.score > 3", 1))
def high(event: SubscriptionMessage) -> TopicEventResponse:
    return handle("high", event)


@app.subscribe(PUBSUB, "scores", rule=Rule("has(event.data.important)", 2))
def flagged(event: SubscriptionMessage) -> TopicEventResponse:
    return handle("flagged", event)


@app.subscribe(PUBSUB, "scores-dlq")
def scores_dead(event: SubscriptionMessage) -> TopicEventResponse:
    return handle("scores_dead", event)


@app.subscribe(PUBSUB, "declared-dlq")
def declared_dead(event: SubscriptionMessage) -> TopicEventResponse:
    return handle("declared_dead", event)


# Handlers reached only through declarative routes (path = the handler's name).
@app.subscribe(PUBSUB, "unused-typed", rule=Rule("false", 1))
def typed(event: SubscriptionMessage) -> TopicEventResponse:
    return handle("typed", event)


@app.subscribe(PUBSUB, "unused-fallback", rule=Rule("false", 1))
def fallback(event: SubscriptionMessage) -> TopicEventResponse:
    return handle("fallback", event)


@app.subscribe(PUBSUB, "unused-bulk", rule=Rule("false", 1))
def bulk_target(event: SubscriptionMessage) -> TopicEventResponse:
    return handle("bulk_target", event)


def health() -> None:
    """AppCallbackHealthCheck: unhealthy while the file $RECORD_FILE.unhealthy exists."""
    if os.path.exists(RECORD_FILE + ".unhealthy"):
        raise RuntimeError("unhealthy")


app.register_health_check(health)


if __name__ == "__main__":
    app.run(int(os.environ["APP_PORT"]), listen_address="127.0.0.1")
