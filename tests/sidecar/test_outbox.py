"""The transactional outbox through the official SDK: state and event commit together or not at all.

A `dapr.ext.grpc.App` subscriber (apps/subscriber.py, topic `orders`) sits behind a real sidecar whose
state store (SQLite, and PostgreSQL when it is up) declares `outboxPublishPubsub` /
`outboxPublishTopic: orders`; transactions go through `execute_state_transaction` exactly as an app
would send them.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from dapr.aio.clients import DaprClient as AsyncDaprClient
from dapr.clients import DaprClient
from dapr.clients.exceptions import DaprGrpcError
from dapr.clients.grpc._request import TransactionalStateOperation, TransactionOperationType
from postgres_support import CONNECTION_STRING, drop_tables, require_postgres, unique_table
from sidecar_support import (
    FAST_PUBSUB_YAML,
    Process,
    RunningSidecar,
    app_process,
    free_port,
    port_accepts,
    read_jsonl,
    sidecar_process,
    stop_all,
    wait_until,
)

from chassis.sidecar import _cloudevents as ce
from chassis.sidecar._outbox import LATER, RETRY_START, Outbox, OutboxConfig, _published, outbox_configs
from chassis.sidecar._resources import Resources, load_specs

APP_ID = "orders-app"
UPSERT, DELETE = TransactionOperationType.upsert, TransactionOperationType.delete
UseSidecar = Callable[[RunningSidecar], None]

OUTBOX_STATE_YAML = """\
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: statestore
spec:
  type: state.sqlite
  version: v1
  metadata:
  - {name: connectionString, value: "data/state.db"}
  - {name: outboxPublishPubsub, value: pubsub}
  - {name: outboxPublishTopic, value: orders}
"""


def postgres_state_yaml(table: str, meta: str) -> str:
    """The same store on PostgreSQL, in tables of its own."""
    return (
        OUTBOX_STATE_YAML.replace("type: state.sqlite", "type: state.postgresql")
        .replace("version: v1", "version: v2")
        .replace('"data/state.db"', f'"{CONNECTION_STRING}"')
        + f"  - {{name: tableName, value: {table}}}\n  - {{name: metadataTableName, value: {meta}}}\n"
    )


@dataclass
class Pair:
    """The subscriber app and its sidecar, sharing a tmp directory."""

    sidecar: RunningSidecar
    records: Path
    workdir: Path

    def events(self, marker: str) -> list[dict[str, Any]]:
        """Deliveries on `orders` whose payload mentions `marker`."""
        found = []
        for record in read_jsonl(self.records):
            data = bytes.fromhex(record["data"]).decode(errors="replace")
            if record["handler"] == "orders" and marker in data:
                found.append(record | {"text": data})
        return found

    def wait_events(self, marker: str, count: int = 1) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = wait_until(
            lambda: (events := self.events(marker)) and len(events) >= count and events,
            what=f"{count} outbox event(s) carrying {marker}",
        )
        return found


def components(folder: Path, state_yaml: str = OUTBOX_STATE_YAML) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "statestore.yaml").write_text(state_yaml)
    (folder / "pubsub.yaml").write_text(FAST_PUBSUB_YAML)
    return folder


def start_pair(
    workdir: Path, started: list[Process], state_yaml: str = OUTBOX_STATE_YAML, **ports: int
) -> Pair:
    """The subscriber app, then its sidecar; ready once the app is subscribed (/v1.0/healthz 204)."""
    records = workdir / "deliveries.jsonl"
    app_port = free_port()
    app = app_process("subscriber.py", app_port, workdir, {"RECORD_FILE": str(records)})
    started.append(app)
    app.spawn()
    app.wait_ready(lambda: port_accepts(app_port), "listening")
    sidecar = sidecar_process(
        APP_ID,
        workdir,
        app_port=app_port,
        resources=[components(workdir / "components", state_yaml)],
        **ports,
    )
    started.append(sidecar)
    sidecar.spawn()
    sidecar.wait_ready(lambda: sidecar.healthy("/v1.0/healthz"), "subscribed (/v1.0/healthz 204)")
    return Pair(sidecar, records, workdir)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    started: list[Process] = []
    tables: list[str] = []
    state_yaml = OUTBOX_STATE_YAML
    if request.param == "postgresql":
        require_postgres()
        tables = [unique_table("outbox"), unique_table("meta")]
        state_yaml = postgres_state_yaml(*tables)
    try:
        yield start_pair(tmp_path_factory.mktemp("outbox"), started, state_yaml)
    finally:
        stop_all(started)
        drop_tables(tables)


@pytest.fixture
def outbox(pair: Pair, dapr_env: UseSidecar) -> Pair:
    dapr_env(pair.sidecar)
    return pair


def marker() -> str:
    return f"m-{uuid.uuid4().hex[:12]}"


async def test_each_upsert_is_published_after_commit(outbox: Pair) -> None:
    mark = marker()
    order = json.dumps({"order": mark, "total": 12})
    async with AsyncDaprClient() as client:
        await client.save_state("statestore", f"gone-{mark}", "x")
        await client.execute_state_transaction(
            "statestore",
            [
                TransactionalStateOperation(
                    f"order-{mark}", order, metadata={"contentType": "application/json"}
                ),
                TransactionalStateOperation(f"gone-{mark}", operation_type=DELETE),
            ],
        )
        stored = await client.get_state("statestore", f"order-{mark}")
    [event] = outbox.wait_events(mark)
    assert stored.data == order.encode()
    assert json.loads(event["text"]) == {"order": mark, "total": 12}
    assert (event["source"], event["type"], event["datacontenttype"]) == (
        APP_ID,
        "com.dapr.event.sent",
        "application/json",
    )
    assert event["id"].startswith("outbox-")  # daprd publishes under the marker's key
    assert (event["topic"], event["pubsubname"]) == ("orders", "pubsub")
    assert event["extensions"]["contentType"] == "application/json"  # op metadata is copied in
    # The marker state (its key is the event id) is deleted once the event is out.
    with DaprClient() as client:
        wait_until(lambda: client.get_state("statestore", event["id"]).data == b"", what="marker deleted")


def test_a_failing_etag_commits_nothing_and_publishes_nothing(outbox: Pair) -> None:
    failed, later = marker(), marker()
    with DaprClient() as client:
        client.save_state("statestore", f"guarded-{failed}", "v1")
        with pytest.raises(DaprGrpcError) as aborted:
            client.execute_state_transaction(
                "statestore",
                [
                    TransactionalStateOperation(f"new-{failed}", failed),
                    TransactionalStateOperation(f"guarded-{failed}", failed, etag=str(uuid.uuid4())),
                ],
            )
        client.execute_state_transaction("statestore", [TransactionalStateOperation(f"k-{later}", later)])
        assert client.get_state("statestore", f"new-{failed}").data == b""
    assert aborted.value.code() == grpc.StatusCode.ABORTED
    outbox.wait_events(later)  # a later event went through the same topic and relay...
    assert outbox.events(failed) == []  # ...the failed transaction's never will (its marker never existed)
    # The internal event was settled (dropped), not left to be retried forever.
    wait_until(lambda: "its event is dropped" in outbox.sidecar.log(), what="internal event dropped")


def test_projection_publishes_the_projected_value_and_stores_the_original(outbox: Pair) -> None:
    mark = marker()
    with DaprClient() as client:
        client.execute_state_transaction(
            "statestore",
            [
                TransactionalStateOperation(f"user-{mark}", f"full record {mark} with secrets"),
                TransactionalStateOperation(
                    f"user-{mark}",
                    f"public view {mark}",
                    metadata={"outbox.projection": "true", "cloudevent.type": "user.viewed"},
                ),
            ],
        )
        stored = client.get_state("statestore", f"user-{mark}")
    [event] = outbox.wait_events(mark)
    assert stored.data == f"full record {mark} with secrets".encode()
    assert (event["text"], event["type"]) == (f"public view {mark}", "user.viewed")


def test_projection_without_a_matching_upsert_fails_the_transaction(outbox: Pair) -> None:
    mark = marker()
    with DaprClient() as client:
        with pytest.raises(DaprGrpcError) as failed:
            client.execute_state_transaction(
                "statestore",
                [
                    TransactionalStateOperation(f"a-{mark}", mark),
                    TransactionalStateOperation(f"b-{mark}", mark, metadata={"outbox.projection": "true"}),
                ],
            )
        assert client.get_state("statestore", f"a-{mark}").data == b""
    assert failed.value.code() == grpc.StatusCode.INTERNAL
    assert "projection" in (failed.value.details() or "")
    assert outbox.events(mark) == []


def test_cloudevent_metadata_overrides_the_published_event(outbox: Pair) -> None:
    mark = marker()
    metadata = {"cloudevent.type": "order.created", "outbox.cloudevent.subject": f"orders/{mark}"}
    with DaprClient() as client:
        client.execute_state_transaction(
            "statestore", [TransactionalStateOperation(f"o-{mark}", mark, metadata=metadata)]
        )
    [event] = outbox.wait_events(mark)
    assert event["type"] == "order.created"
    assert event["extensions"]["subject"] == f"orders/{mark}"


def test_committed_events_are_relayed_after_a_sidecar_crash(tmp_path: Path, dapr_env: UseSidecar) -> None:
    started: list[Process] = []
    try:
        pair = start_pair(tmp_path, started)
        dapr_env(pair.sidecar)
        marks = [marker() for _ in range(5)]
        with DaprClient() as client:
            for mark in marks:
                client.execute_state_transaction("statestore", [TransactionalStateOperation(mark, mark)])
        pair.sidecar.kill()  # SIGKILL right after the commits: relays may not have happened yet
        restarted = sidecar_process(
            APP_ID,
            tmp_path,
            app_port=int(pair.sidecar.argv[pair.sidecar.argv.index("--app-port") + 1]),
            resources=[tmp_path / "components"],
            label="sidecar-restarted",
        )
        started.append(restarted)
        restarted.spawn()
        for mark in marks:
            pair.wait_events(mark)
    finally:
        stop_all(started)


def test_outbox_metadata_is_read_as_daprd_reads_it(tmp_path: Path) -> None:
    (tmp_path / "state.yaml").write_text(
        OUTBOX_STATE_YAML
        + "  - {name: outboxPubsub, value: internal}\n"
        + "  - {name: outboxDiscardWhenMissingState, value: 'true'}\n"
    )
    (tmp_path / "other.yaml").write_text(
        OUTBOX_STATE_YAML.replace("name: statestore", "name: half").replace(
            "  - {name: outboxPublishTopic, value: orders}\n", ""
        )
    )
    configs = outbox_configs(load_specs([tmp_path]))
    assert list(configs) == ["statestore"]  # both pubsub and topic are needed
    config = configs["statestore"]
    assert (config.publish_pubsub, config.publish_topic, config.outbox_pubsub) == (
        "pubsub",
        "orders",
        "internal",
    )
    assert config.discard_when_missing_state
    assert config.internal_topic("app", "ns") == "nsappordersoutbox"


def test_published_event_is_the_internal_one_retargeted() -> None:
    internal = {
        "id": "outbox-1",
        "topic": "appordersoutbox",
        "pubsubname": "internal",
        "type": "com.dapr.event.sent",
        "data_base64": base64.b64encode(b"\x00").decode(),
        "cloudevent.id": "business-id",
    }
    published = _published(OutboxConfig("s", "pubsub", "orders", "internal", False), internal)
    assert published == internal | {"topic": "orders", "pubsubname": "pubsub", "id": "business-id"}


@pytest.mark.parametrize(("discard", "expected"), [(True, None), (False, LATER)])
def test_a_marker_missing_past_the_grace_follows_outbox_discard_when_missing_state(
    discard: bool, expected: float | None
) -> None:
    outbox = Outbox(Resources(), {}, app_id="app")
    config = OutboxConfig("s", "pubsub", "orders", "pubsub", discard)
    old = {"id": "outbox-1", "time": "2000-01-01T00:00:00Z"}
    fresh = {"id": "outbox-2", "time": ce.rfc3339(datetime.now(UTC))}
    assert outbox._missing(config, "outbox-1", old, attempts=1) == expected
    assert outbox._missing(config, "outbox-2", fresh, attempts=1) == RETRY_START  # not committed yet?
    outbox._remember_aborted(["outbox-2"])
    assert outbox._missing(config, "outbox-2", fresh, attempts=2) is None  # this process saw it fail
