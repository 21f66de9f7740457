"""Metrics and trace-stamped logs of a real service process beside a real sidecar.

Events go in through the SDK (a Publisher on the app's own sidecar); what the service measured is read
back the way an operator would: its Prometheus endpoint, or the CHASSIS_METRICS_FILE it appends to.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import secrets
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from mooc.assessment.v1 import assessment_pb2 as api
from mooc.assessment.v1 import assessment_pb2_grpc as api_grpc
from mooc.events.v1.assessment_pb2 import SubmissionCreated
from prometheus_client.parser import text_string_to_metric_families

from chassis import Dapr, Publisher, ServiceSettings
from chassis.testing import AppProcess, Sidecar, free_port, wait_for

APPS = Path(__file__).parent / "apps"
APP_ID = "metrics-probe"
HANDLED = "messaging_process_duration_seconds_count"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def start_app(
    sidecar_factory: Callable[..., Sidecar], app_factory: Callable[..., AppProcess], **env: str
) -> tuple[Sidecar, AppProcess]:
    port = free_port()
    sidecar = sidecar_factory(APP_ID, app_port=port, env={k: v for k, v in env.items() if "CHASSIS" in k})
    app = app_factory(
        "metrics_service", app_id=APP_ID, app_port=port, sidecar=sidecar, pythonpath=[APPS], env=env
    )
    return sidecar, app


async def publish(sidecar: Sidecar, *learners: str) -> None:
    """Publish one SubmissionCreated per learner to `outcomes`, through the SDK and the app's sidecar."""
    settings = ServiceSettings(
        app_id="publisher", dapr_grpc_port=sidecar.grpc_port, dapr_http_port=sidecar.http_port
    )
    async with Dapr(settings) as dapr:
        outcomes = Publisher(dapr, SubmissionCreated, pubsub=settings.pubsub, topic="outcomes")
        for learner in learners:
            await outcomes.publish(SubmissionCreated(submission_id=f"{learner}-s", learner_id=learner))


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset((k, v) for k, v in sample.labels.items() if not k.startswith("otel_"))): (
            sample.value
        )
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name` over the samples whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(value for (key, got), value in samples.items() if key == name and wanted <= got)


async def test_handler_outcomes_lag_and_rpcs_are_served_to_prometheus(
    sidecar_factory: Callable[..., Sidecar], app_factory: Callable[..., AppProcess]
) -> None:
    metrics_port = free_port()
    sidecar, app = start_app(
        sidecar_factory,
        app_factory,
        OTEL_METRICS_EXPORTER="prometheus",
        OTEL_EXPORTER_PROMETHEUS_HOST="127.0.0.1",
        OTEL_EXPORTER_PROMETHEUS_PORT=str(metrics_port),
    )

    await publish(sidecar, "ok", "retry", "drop")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.app_port}") as ch:
        with pytest.raises(grpc.aio.AioRpcError):
            await api_grpc.AssessmentServiceStub(ch).GetSubmission(
                api.GetSubmissionRequest(submission_id="x")
            )

    # "ok" and the second delivery of "retry" succeed; the first "retry" and the "drop" do not.
    def settled() -> Samples:
        samples = scrape(metrics_port)
        return samples if total(samples, HANDLED, chassis_outcome="SUCCESS") == 2 else {}

    samples = await wait_for(settled, timeout=30, what="two successful handler runs on /metrics")
    topic = {"messaging_destination_name": "outcomes"}
    assert total(samples, HANDLED, chassis_outcome="RETRY", **topic) == 1
    assert total(samples, HANDLED, chassis_outcome="DROP", **topic) == 1
    assert total(samples, "chassis_event_retries_total", **topic) == 1
    assert total(samples, "chassis_event_drops_total", **topic) == 1
    assert total(samples, "chassis_event_lag_seconds_count", **topic) == 4  # one per delivery
    # daprd's `time` has second precision: a delivery made at once lags less than a second and a bit.
    assert 0 <= total(samples, "chassis_event_lag_seconds_sum", **topic) < 4 * 2.5
    # rpc.server.duration comes from the grpc instrumentation's server spans, Dapr callbacks included.
    rpcs = "rpc_server_duration_milliseconds_count"
    assert total(samples, rpcs, rpc_method="GetSubmission", rpc_grpc_status_code="5") == 1
    assert (
        total(samples, rpcs, rpc_service="dapr.proto.runtime.v1.AppCallback", rpc_method="OnTopicEvent") == 4
    )
    assert total(samples, "rpc_server_duration_milliseconds_sum", rpc_method="GetSubmission") > 0


def _points(record: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return next((m["points"] for m in record["metrics"] if m["name"] == name), [])


async def test_the_metrics_file_ends_with_the_totals_when_the_service_stops(
    tmp_path: Path, sidecar_factory: Callable[..., Sidecar], app_factory: Callable[..., AppProcess]
) -> None:
    metrics_file = tmp_path / "metrics.jsonl"
    sidecar, app = start_app(
        sidecar_factory,
        app_factory,
        CHASSIS_METRICS_FILE=str(metrics_file),
        OTEL_METRIC_EXPORT_INTERVAL="200",
    )

    await publish(sidecar, "ok", "drop")
    await wait_for(lambda: app.log().count('"handled ') == 2, timeout=20, what="two handler runs")
    assert await asyncio.to_thread(app.terminate) == 0

    records = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    assert len(records) > 1  # periodic exports while it ran, then the last one at shutdown
    assert {r["service"] for r in records} == {APP_ID}  # the sidecar, given the same variable, meters apart
    last = records[-1]
    handled = {p["attributes"]["chassis.outcome"]: p for p in _points(last, "messaging.process.duration")}
    assert handled.keys() == {"SUCCESS", "DROP"}
    assert handled["SUCCESS"]["count"] == handled["DROP"]["count"] == 1
    assert 0 < handled["SUCCESS"]["sum"] < 5
    assert [p["value"] for p in _points(last, "chassis.event.drops")] == [1]
    assert _points(last, "chassis.event.retries") == []


def _service_start(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    script = "from chassis import Service; Service('probe').run()"
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "APP_ID": "probe", "APP_PORT": "0", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_an_unknown_metrics_exporter_stops_the_service_with_one_line(tmp_path: Path) -> None:
    result = _service_start(tmp_path, OTEL_METRICS_EXPORTER="statsd")

    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "config error: OTEL_METRICS_EXPORTER: unknown exporter 'statsd'; "
        "use console, otlp, prometheus or none"
    ]


def test_a_taken_prometheus_port_stops_the_service_with_one_line(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = _service_start(
            tmp_path,
            OTEL_METRICS_EXPORTER="prometheus",
            OTEL_EXPORTER_PROMETHEUS_HOST="127.0.0.1",
            OTEL_EXPORTER_PROMETHEUS_PORT=str(port),
        )

    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith(
        f"config error: OTEL_EXPORTER_PROMETHEUS_PORT: cannot serve Prometheus metrics on 127.0.0.1:{port}: "
    )


@pytest.mark.skipif(
    importlib.util.find_spec("opentelemetry.exporter.otlp") is not None,
    reason="an OTLP exporter is installed here, so its absence cannot be shown",
)
def test_otlp_metrics_without_the_package_say_what_to_install(tmp_path: Path) -> None:
    result = _service_start(tmp_path, OTEL_METRICS_EXPORTER="otlp")

    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith(
        "config error: OTEL_METRICS_EXPORTER: 'otlp' needs the package opentelemetry-exporter-otlp-proto-grpc"
    )


async def test_log_lines_carry_the_trace_and_span_of_the_rpc_and_of_the_handler(
    tmp_path: Path, sidecar_factory: Callable[..., Sidecar], app_factory: Callable[..., AppProcess]
) -> None:
    trace_file = tmp_path / "trace.jsonl"
    _, app = start_app(sidecar_factory, app_factory, CHASSIS_TRACE_FILE=str(trace_file))
    trace_id = secrets.token_hex(16)

    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.app_port}") as ch:
        stub = api_grpc.AssessmentServiceStub(ch)
        metadata = (("traceparent", f"00-{trace_id}-{secrets.token_hex(8)}-01"),)
        await stub.SubmitAssignment(
            api.SubmitAssignmentRequest(learner_id="ok", assignment_id="a"), metadata=metadata
        )

    def logged() -> dict[str, dict[str, Any]]:
        lines = [json.loads(x) for x in app.log().splitlines() if x.startswith("{")]
        wanted = {"submitting ok", "handled ok-a"}
        found = {line["message"]: line for line in lines if line["message"] in wanted}
        return found if len(found) == 2 else {}

    lines = await wait_for(logged, timeout=20, what="both log lines")
    spans = {
        s["name"]: s for s in map(json.loads, trace_file.read_text().splitlines()) if s["service"] == APP_ID
    }
    rpc_span = spans["/mooc.assessment.v1.AssessmentService/SubmitAssignment"]
    handler_span = spans["handle outcomes"]
    assert lines["submitting ok"]["trace_id"] == lines["handled ok-a"]["trace_id"] == trace_id
    assert lines["submitting ok"]["span_id"] == rpc_span["span_id"]
    assert lines["handled ok-a"]["span_id"] == handler_span["span_id"]
    assert lines["handled ok-a"]["service"] == APP_ID
