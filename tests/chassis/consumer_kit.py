"""tests/chassis/apps/consumer_service.py beside a real sidecar: events published to it, its records read."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dapr.aio.clients import DaprClient
from google.protobuf.message import Message

from chassis import Dapr, ServiceSettings, event_type_of
from chassis._events import event_to_json
from chassis.testing import AppProcess, Sidecar, free_port, wait_for, write_default_resources

APPS = Path(__file__).parent / "apps"
APP_ID = "consumer"
OUTBOX_STORE = "consumer-outbox"
# A second store in the same file, with Dapr's outbox on: what it saves in a transaction is published.
OUTBOX_STORE_YAML = f"""\
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: {OUTBOX_STORE}
spec:
  type: state.sqlite
  version: v1
  metadata:
  - name: connectionString
    value: "outbox-state.db"
  - name: outboxPublishPubsub
    value: "pubsub"
  - name: outboxPublishTopic
    value: "outbox-out"
"""


@dataclass
class Consumer:
    sidecar: Sidecar
    app: AppProcess
    records: Path
    start_app: Callable[..., AppProcess]
    env: dict[str, str] = field(default_factory=dict)

    def seen(self, **match: Any) -> list[dict[str, Any]]:
        if not self.records.exists():
            return []
        lines = [json.loads(line) for line in self.records.read_text().splitlines() if line]
        return [r for r in lines if all(r.get(k) == v for k, v in match.items())]

    async def wait_seen(self, count: int, timeout: float = 20, **match: Any) -> list[dict[str, Any]]:  # noqa: ASYNC109
        def enough() -> list[dict[str, Any]]:
            found = self.seen(**match)
            return found if len(found) >= count else []

        found: list[dict[str, Any]] = await wait_for(enough, timeout=timeout, what=f"{count} x {match}")
        return found

    def restart(self, **env: str) -> None:
        """A new app process on the same port (after a kill), as a supervisor would start it."""
        assert self.sidecar.app_port is not None
        self.app = self.start_app(
            "consumer_service", app_id=APP_ID, app_port=self.sidecar.app_port, sidecar=self.sidecar,
            pythonpath=[APPS], env={**self.env, **env},
        )  # fmt: skip

    async def publish(
        self, event: Message, *, topic: str, event_id: str, event_type: str | None = None
    ) -> None:
        """Publish through the consumer's sidecar with a fixed CloudEvent id (and type, when given)."""
        metadata = {"cloudevent.id": event_id, "cloudevent.type": event_type or event_type_of(event)}
        settings = ServiceSettings(
            app_id="publisher", dapr_grpc_port=self.sidecar.grpc_port, dapr_http_port=self.sidecar.http_port
        )

        async def send(client: DaprClient) -> object:
            return await client.publish_event(
                pubsub_name="pubsub", topic_name=topic, data=event_to_json(event),
                publish_metadata=metadata, data_content_type="application/json",
            )  # fmt: skip

        async with Dapr(settings) as dapr:
            await dapr.call(send)


def start_consumer(
    sidecar_factory: Callable[..., Sidecar],
    app_factory: Callable[..., AppProcess],
    tmp_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    outbox: bool = False,
) -> Consumer:
    resources = write_default_resources(tmp_path / "components")
    app_env = {"RECORD_FILE": str(tmp_path / "records.jsonl"), **(env or {})}
    if outbox:
        (resources / "outbox.yaml").write_text(OUTBOX_STORE_YAML)
        app_env["CONSUMER_OUTBOX_STORE"] = OUTBOX_STORE
    port = free_port()
    sidecar = sidecar_factory(APP_ID, app_port=port, resources=[resources])
    app = app_factory(
        "consumer_service", app_id=APP_ID, app_port=port, sidecar=sidecar, pythonpath=[APPS], env=app_env
    )
    restart_env = {k: v for k, v in app_env.items() if k != "CONSUMER_HANG"}
    return Consumer(sidecar, app, tmp_path / "records.jsonl", app_factory, restart_env)
