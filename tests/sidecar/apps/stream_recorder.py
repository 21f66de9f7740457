"""A subscriber for the fault-stream tests: every delivered CloudEvent id is recorded durably.

One line per delivery (the event id) is appended to $RECORD_FILE, flushed and fsynced before the
handler answers SUCCESS, so an acknowledged delivery is on disk whatever crashes next. Written with
the official `dapr.ext.grpc.App`; subscribes to $TOPIC on $PUBSUB (default `pubsub`); port $APP_PORT.
"""

from __future__ import annotations

import os
import threading

from dapr.ext.grpc import App, SubscriptionMessage, TopicEventResponse

app = App()
_lock = threading.Lock()
_out = open(os.environ["RECORD_FILE"], "a")  # noqa: SIM115  # held open for the app's lifetime


@app.subscribe(os.environ.get("PUBSUB", "pubsub"), os.environ["TOPIC"])
def record(event: SubscriptionMessage) -> TopicEventResponse:
    with _lock:
        _out.write(event.id() + "\n")
        _out.flush()
        os.fsync(_out.fileno())
    return TopicEventResponse("success")


if __name__ == "__main__":
    app.run(int(os.environ["APP_PORT"]), listen_address="127.0.0.1")
