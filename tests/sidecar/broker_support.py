"""The end-to-end case every external broker's test file runs: an app written with the official
dapr.ext.grpc App behind a real sidecar on the broker's profile, events published through the SDK.

One copy, so the RabbitMQ, JetStream and MQTT files check delivery the same way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from conftest import SidecarStarter
from dapr.aio.clients import DaprClient as AsyncDaprClient
from sidecar_support import (
    Process,
    RunningSidecar,
    app_process,
    free_port,
    port_accepts,
    read_jsonl,
    wait_until,
)

UseSidecar = Callable[[RunningSidecar], None]

# Records every delivery; an event whose id starts with "retry" is answered RETRY the first time.
SUBSCRIBER = """
import json, os
from dapr.ext.grpc import App, SubscriptionMessage, TopicEventResponse

app = App()
seen = set()

@app.subscribe("pubsub", os.environ["TOPIC"])
def handle(event: SubscriptionMessage) -> TopicEventResponse:
    with open(os.environ["RECORD_FILE"], "a") as out:
        out.write(json.dumps({"id": event.id(), "data": event.raw_data().decode()}) + "\\n")
    first = event.id() not in seen
    seen.add(event.id())
    return TopicEventResponse("retry" if first and event.id().startswith("retry") else "success")

app.run(int(os.environ["APP_PORT"]), listen_address="127.0.0.1")
"""

# What a delivery through the sidecar must look like: RETRY brings the event back once.
EXPECTED = [("plain-1", "hello"), ("retry-1", "again"), ("retry-1", "again")]


async def deliver_through_sdk(
    tmp_path: Path,
    resources: Path,
    *,
    app_id: str,
    topic: str,
    started: list[Process],
    start_sidecar: SidecarStarter,
    dapr_env: UseSidecar,
    subscribed: Callable[[], Awaitable[bool]] | None = None,
) -> list[tuple[str, str]]:
    """Start the app and its sidecar, publish two events, return the (id, data) of each delivery.

    `subscribed` tells when the sidecar's subscription exists in the broker, for brokers that drop
    what is published before (RabbitMQ, MQTT).
    """
    records = tmp_path / "deliveries.jsonl"
    script = tmp_path / "subscriber.py"
    script.write_text(SUBSCRIBER)
    app_port = free_port()
    app = app_process(str(script), app_port, tmp_path, {"TOPIC": topic, "RECORD_FILE": str(records)})
    started.append(app)
    app.spawn()
    app.wait_ready(lambda: port_accepts(app_port), "listening")
    sidecar = start_sidecar(app_id, app_port=app_port, resources=[resources], ready="/v1.0/healthz")
    dapr_env(sidecar)
    if subscribed is not None:
        async with asyncio.timeout(15):
            while not await subscribed():  # noqa: ASYNC110 (the broker, another process, decides)
                await asyncio.sleep(0.05)
    async with AsyncDaprClient() as sdk:
        await sdk.publish_event("pubsub", topic, "hello", publish_metadata={"cloudevent.id": "plain-1"})
        await sdk.publish_event("pubsub", topic, "again", publish_metadata={"cloudevent.id": "retry-1"})

    def delivered() -> list[dict[str, Any]] | None:
        found = read_jsonl(records)
        return found if len(found) >= len(EXPECTED) else None

    deliveries = await asyncio.to_thread(wait_until, delivered, what=f"{len(EXPECTED)} deliveries")
    return sorted((d["id"], d["data"]) for d in deliveries)
