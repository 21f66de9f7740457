"""Sidecar metrics on `--metrics-port`: API calls and latency, deliveries, redeliveries, dead-letters.

A real sidecar with the test subscriber app; the numbers are read back from `GET /metrics` in the
Prometheus text format, as a Prometheus server would scrape them.
"""

from __future__ import annotations

import json
import re
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from dapr.clients import DaprClient
from sidecar_support import (
    Process,
    RunningSidecar,
    app_process,
    fast_components,
    free_port,
    port_accepts,
    read_jsonl,
    sidecar_process,
    stop_all,
    wait_until,
)


@pytest.fixture(scope="module")
def started(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningSidecar, int, Path]]:
    workdir = tmp_path_factory.mktemp("metrics")
    record, app_port, metrics_port = workdir / "events.jsonl", free_port(), free_port()
    processes: list[Process] = []
    try:
        app = app_process("subscriber.py", app_port, workdir, {"RECORD_FILE": str(record)})
        processes.append(app)
        app.spawn()
        app.wait_ready(lambda: port_accepts(app_port), "listening")
        sidecar = sidecar_process(
            "metrics-app", workdir, app_port=app_port, resources=[fast_components(workdir / "res")]
        )
        sidecar.argv += ["--metrics-port", str(metrics_port)]
        processes.append(sidecar)
        sidecar.spawn()
        sidecar.wait_ready(lambda: sidecar.healthy("/v1.0/healthz"), "subscribed")
        yield sidecar, metrics_port, record
    finally:
        stop_all(processes)


@pytest.fixture
def setup(
    started: tuple[RunningSidecar, int, Path], dapr_env: Callable[[RunningSidecar], None]
) -> tuple[int, Path]:
    dapr_env(started[0])
    return started[1], started[2]


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        return str(response.read().decode())


def _value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if match and all(f'{key}="{value}"' in match.group(1) for key, value in labels.items()):
            total += float(match.group(2))
    return total


def test_api_calls_are_counted_and_timed(setup: tuple[int, Path]) -> None:
    port, _ = setup
    with DaprClient() as client:
        for _ in range(3):
            client.get_state("statestore", "metrics-key")
        with pytest.raises(grpc.RpcError):
            client.get_state("nope", "k")
    calls = "dapr_grpc_io_server_completed_rpcs_total"

    def scraped() -> str | None:
        # grpc.aio sends an aborted call's status before the handler unwinds to record it
        text = _scrape(port)
        failed = _value(text, calls, grpc_server_method="GetState", grpc_server_status="INVALID_ARGUMENT")
        return text if failed >= 1 else None

    text = wait_until(scraped, what="the failed call's metric")
    assert _value(text, calls, grpc_server_method="GetState", grpc_server_status="OK") >= 3
    assert (
        _value(text, "dapr_grpc_io_server_server_latency_milliseconds_count", grpc_server_method="GetState")
        >= 4
    )


def test_deliveries_redeliveries_and_dead_letters_are_counted(setup: tuple[int, Path]) -> None:
    port, record = setup
    ids = {topic: uuid.uuid4().hex for topic in ("orders", "orders-retry", "drops")}
    with DaprClient() as client:
        for topic, event_id in ids.items():
            client.publish_event(
                "pubsub", topic, json.dumps({}), publish_metadata={"cloudevent.id": event_id}
            )
    wanted = {ids["orders"], ids["drops"]}
    wait_until(
        lambda: wanted <= {e["id"] for e in read_jsonl(record) if e["handler"] != "retry_once"}, what="events"
    )
    wait_until(
        lambda: sum(e["id"] == ids["orders-retry"] for e in read_jsonl(record)) >= 2, what="redelivery"
    )

    def scraped() -> str | None:
        text = _scrape(port)
        return text if _value(text, "chassis_pubsub_redeliveries_total", topic="orders-retry") >= 1 else None

    text = wait_until(scraped, what="metrics")
    ingress = "dapr_component_pubsub_ingress_count_total"
    assert _value(text, ingress, topic="orders", process_status="success") >= 1
    assert _value(text, ingress, topic="orders-retry", process_status="retry") >= 1
    assert _value(text, ingress, topic="drops", process_status="drop") >= 1
    assert (
        _value(text, "chassis_pubsub_dead_letters_total", topic="drops", dead_letter_topic="drops-dlq") >= 1
    )
