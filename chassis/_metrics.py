"""Service metrics: RPC count and latency, event handling latency by outcome, event lag, retries, drops.

Instruments come from the OpenTelemetry metrics API, so they cost nothing until `setup_metrics` installs a
MeterProvider whose readers OTEL_METRICS_EXPORTER chooses, plus CHASSIS_METRICS_FILE, a JSON-lines file
that several processes can append to (one line per export: cumulative totals so far).
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    HistogramDataPoint,
    MetricExporter,
    MetricExportResult,
    MetricReader,
    MetricsData,
    NumberDataPoint,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.trace import SpanKind

from chassis._errors import ConfigError
from chassis._telemetry import _append_locked, exporter_names, otlp_exporter

EXPORTERS_ENV = "OTEL_METRICS_EXPORTER"
METRICS_FILE_ENV = "CHASSIS_METRICS_FILE"
PROMETHEUS_HOST_ENV = "OTEL_EXPORTER_PROMETHEUS_HOST"
PROMETHEUS_PORT_ENV = "OTEL_EXPORTER_PROMETHEUS_PORT"

# Seconds: the SDK's default buckets are made for milliseconds and would put every event in the first.
_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

_meter = metrics.get_meter("chassis")
_rpc_duration = _meter.create_histogram(
    "rpc.server.duration", unit="ms", description="gRPC calls served (count and latency)"
)
_process_duration = _meter.create_histogram(
    "messaging.process.duration",
    unit="s",
    description="Event handler runs, by topic and outcome",
    explicit_bucket_boundaries_advisory=_SECONDS_BUCKETS,
)
_event_lag = _meter.create_histogram(
    "chassis.event.lag",
    unit="s",
    description="From the CloudEvent's time to the start of its handler",
    explicit_bucket_boundaries_advisory=_SECONDS_BUCKETS,
)
_retries = _meter.create_counter(
    "chassis.event.retries", unit="{event}", description="Deliveries answered RETRY (to be redelivered)"
)
_drops = _meter.create_counter(
    "chassis.event.drops", unit="{event}", description="Deliveries answered DROP (dead-lettered where set)"
)
_duplicates = _meter.create_counter(
    "chassis.event.duplicates", unit="{event}", description="Deliveries of events the inbox had seen handled"
)
_proctoring_signals = _meter.create_counter(
    "chassis.proctoring.signals",
    unit="{signal}",
    description="Engagement signals of proctored RPCs: delivered to a hook, failed in one, or dropped",
)
_proctoring_gate = _meter.create_counter(
    "chassis.proctoring.gate",
    unit="{call}",
    description="Proctoring gate answers: ALLOW, HOLD, FAIL_OPEN or FAIL_CLOSED (no answer in time)",
)


def record_event_lag(topic: str, event_time: object) -> None:
    """Lag of one delivery, from the CloudEvent `time` extension (skipped when absent or unparsable)."""
    if not isinstance(event_time, str):
        return
    try:
        sent = datetime.fromisoformat(event_time.replace("Z", "+00:00"))
    except ValueError:
        return
    if sent.tzinfo is None:
        return
    # daprd writes `time` at second precision, so the lag of a fast delivery reads up to a second high.
    _event_lag.record(max(0.0, time.time() - sent.timestamp()), {"messaging.destination.name": topic})


def record_handled(topic: str, outcome: str, seconds: float) -> None:
    """One handler run and Dapr's answer to it: SUCCESS, RETRY or DROP."""
    attributes = {
        "messaging.system": "dapr",
        "messaging.destination.name": topic,
        "chassis.outcome": outcome,
    }
    _process_duration.record(seconds, attributes)
    # The sidecar tells a gRPC app nothing about attempts, so retries are the RETRY answers it gave.
    if outcome == "RETRY":
        _retries.add(1, {"messaging.destination.name": topic})
    elif outcome == "DROP":
        _drops.add(1, {"messaging.destination.name": topic})


def record_undeliverable(topic: str) -> None:
    """A delivery dropped before any handler ran (no handler for the topic, or data not of its type)."""
    _drops.add(1, {"messaging.destination.name": topic})


def record_duplicate(topic: str) -> None:
    """A delivery acknowledged without its handler: the inbox had seen the event handled."""
    _duplicates.add(1, {"messaging.destination.name": topic})


def record_proctoring_signal(outcome: str, *, hook: str | None = None) -> None:
    """One signal's fate: `delivered`/`failed` (per hook) or `dropped` (the queue was full)."""
    attributes = {"chassis.outcome": outcome}
    if hook is not None:
        attributes["chassis.proctoring.hook"] = hook
    _proctoring_signals.add(1, attributes)


def record_proctoring_gate(outcome: str, method: str) -> None:
    """One gate decision for a call of `method`."""
    _proctoring_gate.add(1, {"chassis.outcome": outcome, "rpc.method": method})


class RpcMetricsSpanProcessor(SpanProcessor):
    """Records `rpc.server.duration` from the server spans of opentelemetry-instrumentation-grpc.

    That instrumentation traces but does not meter; timing its spans keeps one source of truth for
    both. A call whose caller asked not to sample it makes no span, and so is not counted either.
    """

    def on_end(self, span: ReadableSpan) -> None:
        attributes = span.attributes or {}
        if span.kind is not SpanKind.SERVER or attributes.get("rpc.system") != "grpc":
            return
        if span.start_time is None or span.end_time is None:
            return
        labels = {
            key: value
            for key in ("rpc.system", "rpc.service", "rpc.method", "rpc.grpc.status_code")
            if isinstance(value := attributes.get(key), str | int)
        }
        _rpc_duration.record((span.end_time - span.start_time) / 1e6, labels)


def setup_metrics(resource: Resource) -> MeterProvider:
    """Install the process' MeterProvider with the readers the environment asks for."""
    provider = MeterProvider(resource=resource, metric_readers=_readers_from_env(resource))
    metrics.set_meter_provider(provider)
    return provider


def _readers_from_env(resource: Resource) -> list[MetricReader]:
    readers: list[MetricReader] = []
    for name in exporter_names(EXPORTERS_ENV):
        if name == "console":
            readers.append(PeriodicExportingMetricReader(ConsoleMetricExporter()))
        elif name == "otlp":
            readers.append(
                PeriodicExportingMetricReader(
                    otlp_exporter("metrics", EXPORTERS_ENV, "console, prometheus or none")
                )
            )
        elif name == "prometheus":
            readers.append(_prometheus_reader())
        elif name != "none":
            raise ConfigError(
                f"{EXPORTERS_ENV}: unknown exporter {name!r}; use console, otlp, prometheus or none"
            )
    metrics_file = os.environ.get(METRICS_FILE_ENV)
    if metrics_file:
        service = str(resource.attributes.get("service.name", ""))
        readers.append(PeriodicExportingMetricReader(JsonLinesMetricExporter(Path(metrics_file), service)))
    return readers


def _prometheus_reader() -> MetricReader:
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from prometheus_client import start_http_server

    host = os.environ.get(PROMETHEUS_HOST_ENV, "localhost")
    port_text = os.environ.get(PROMETHEUS_PORT_ENV, "9464")
    try:
        port = int(port_text)
        start_http_server(port=port, addr=host)
    except (ValueError, OSError) as err:
        raise ConfigError(
            f"{PROMETHEUS_PORT_ENV}: cannot serve Prometheus metrics on {host}:{port_text}: {err}"
        ) from err
    # Created after the server is up, so a taken port leaves no collector behind in the registry.
    return PrometheusMetricReader()


class JsonLinesMetricExporter(MetricExporter):
    """Appends one JSON object per export (every metric point so far) to a file shared by processes."""

    def __init__(self, path: Path, service: str) -> None:
        super().__init__()
        self._path = path
        self._service = service

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        record = {"service": self._service, "time": time.time_ns(), "metrics": metric_records(metrics_data)}
        try:
            _append_locked(self._path, (json.dumps(record) + "\n").encode())
        except OSError:
            return MetricExportResult.FAILURE
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        """Nothing is buffered: every export is already on disk."""


def metric_records(metrics_data: MetricsData) -> list[dict[str, Any]]:
    """The metrics-file form of an export: name, unit and points (value, or count/sum/min/max)."""
    found = []
    for resource_metrics in metrics_data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                points = [_point_record(point) for point in metric.data.data_points]
                found.append({"name": metric.name, "unit": metric.unit, "points": points})
    return found


def _point_record(point: object) -> dict[str, Any]:
    if isinstance(point, HistogramDataPoint):
        summary = {"count": point.count, "sum": point.sum, "min": point.min, "max": point.max}
        return {"attributes": dict(point.attributes or {}), **summary}
    if isinstance(point, NumberDataPoint):
        return {"attributes": dict(point.attributes or {}), "value": point.value}
    return {"attributes": dict(getattr(point, "attributes", None) or {})}
