"""Traces, metrics and structured logs: one OpenTelemetry setup shared by services and the embedded sidecar.

Exporters come from the standard OTEL_* variables, plus CHASSIS_TRACE_FILE, a JSON-lines file that
several processes can append to, so tests and developers can follow one trace across every hop
(`chassis trace TRACE_ID` draws it). Service metrics are in `chassis._metrics`.
"""

from __future__ import annotations

import fcntl
import importlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from chassis._errors import ConfigError

TRACE_FILE_ENV = "CHASSIS_TRACE_FILE"
EXPORTERS_ENV = "OTEL_TRACES_EXPORTER"
LOG_LEVEL_ENV = "CHASSIS_LOG_LEVEL"

_W3C = TraceContextTextMapPropagator()
_provider: TracerProvider | None = None
_meter_provider: MeterProvider | None = None


def setup_telemetry(service_name: str, *, metrics: bool = False) -> None:
    """Install the process' TracerProvider (and, with `metrics`, MeterProvider); later calls change nothing.

    Services meter (OTEL_METRICS_EXPORTER, CHASSIS_METRICS_FILE); the sidecar does not: it serves
    daprd's metrics on its own port, and sharing the app's environment it would fight it for a port.
    """
    global _provider, _meter_provider
    if _provider is not None:
        return
    resource = Resource.create({"service.name": service_name})
    provider = TracerProvider(resource=resource)
    for processor in _processors_from_env():
        provider.add_span_processor(processor)
    if metrics:
        # Imported here, not at the top: chassis._metrics builds on this module.
        from chassis._metrics import RpcMetricsSpanProcessor, setup_metrics

        _meter_provider = setup_metrics(resource)
        provider.add_span_processor(RpcMetricsSpanProcessor())
    trace.set_tracer_provider(provider)
    _provider = provider


def flush_telemetry() -> None:
    """Export what is still buffered (called when a service stops; atexit covers the rest)."""
    if _provider is not None:
        _provider.force_flush()
    if _meter_provider is not None:
        _meter_provider.force_flush()


def _processors_from_env() -> list[SpanProcessor]:
    processors: list[SpanProcessor] = []
    for name in exporter_names(EXPORTERS_ENV):
        if name == "console":
            processors.append(SimpleSpanProcessor(ConsoleSpanExporter()))
        elif name == "otlp":
            processors.append(BatchSpanProcessor(otlp_exporter("traces", EXPORTERS_ENV, "console or none")))
        elif name != "none":
            raise ConfigError(f"{EXPORTERS_ENV}: unknown exporter {name!r}; use console, otlp or none")
    trace_file = os.environ.get(TRACE_FILE_ENV)
    if trace_file:
        # Simple (not batch): a span is on disk as soon as it ends, so a SIGKILL loses nothing already ended.
        processors.append(SimpleSpanProcessor(JsonLinesSpanExporter(Path(trace_file))))
    return processors


def exporter_names(variable: str) -> list[str]:
    """The exporters an OTEL_*_EXPORTER variable names; unset means none (OTel's default is otlp), so a
    service never fails for lack of a collector."""
    raw = os.environ.get(variable, "none")
    return [part.strip().lower() for part in raw.split(",") if part.strip()]


def otlp_exporter(signal: str, variable: str, others: str) -> Any:
    """An OTLP exporter for `signal` ("traces" or "metrics"), over the protocol OTEL_* asks for.

    The OTLP exporters are optional packages, not dependencies of the chassis: a missing one is one
    ConfigError line saying what to install or which exporters (`others`) need nothing.
    """
    protocol = os.environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL") or os.environ.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"
    )
    package = "grpc" if protocol == "grpc" else "http"
    module_name = {"traces": "trace_exporter", "metrics": "metric_exporter"}[signal]
    try:
        module = importlib.import_module(f"opentelemetry.exporter.otlp.proto.{package}.{module_name}")
    except ImportError as err:
        raise ConfigError(
            f"{variable}: 'otlp' needs the package opentelemetry-exporter-otlp-proto-{package}; "
            f"install it (pip install opentelemetry-exporter-otlp) or choose {others}"
        ) from err
    return module.OTLPSpanExporter() if signal == "traces" else module.OTLPMetricExporter()


class JsonLinesSpanExporter(SpanExporter):
    """Appends one JSON object per finished span to a file shared by several processes."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        payload = "".join(json.dumps(span_record(span)) + "\n" for span in spans).encode()
        try:
            _append_locked(self._path, payload)
        except OSError:
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        """Nothing is buffered: every export is already on disk."""

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def _append_locked(path: Path, payload: bytes) -> None:
    """O_APPEND plus an exclusive lock, so lines from concurrent processes never interleave."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)  # closing releases the lock


def span_record(span: ReadableSpan) -> dict[str, Any]:
    """The trace-file form of a span: hex ids, nanosecond times."""
    ctx = span.get_span_context()
    return {
        "trace_id": trace.format_trace_id(ctx.trace_id) if ctx else None,
        "span_id": trace.format_span_id(ctx.span_id) if ctx else None,
        "parent_id": trace.format_span_id(span.parent.span_id) if span.parent else None,
        "name": span.name,
        "service": span.resource.attributes.get("service.name"),
        "kind": span.kind.name,
        "start": span.start_time,
        "end": span.end_time,
        "status": span.status.status_code.name,
        "attributes": dict(span.attributes or {}),
    }


def current_traceparent() -> str | None:
    """The W3C traceparent of the current span, or None outside any sampled-or-not valid span."""
    carrier: dict[str, str] = {}
    _W3C.inject(carrier)
    return carrier.get("traceparent")


def context_from_traceparent(traceparent: str | None) -> Context:
    """A context whose parent is the remote span named by `traceparent` (empty when it is invalid)."""
    return _W3C.extract({"traceparent": traceparent} if traceparent else {})


def trace_id_of(traceparent: str | None) -> str | None:
    """The 32-hex trace id inside a traceparent, if it parses."""
    span_ctx = trace.get_current_span(context_from_traceparent(traceparent)).get_span_context()
    return trace.format_trace_id(span_ctx.trace_id) if span_ctx.is_valid else None


class JsonLogFormatter(logging.Formatter):
    """One JSON object per log line, carrying the trace and span ids of the current span."""

    def __init__(self, service_name: str) -> None:
        super().__init__()
        self._service = service_name

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "service": self._service,
            "message": record.getMessage(),
        }
        span_ctx = trace.get_current_span().get_span_context()
        if span_ctx.is_valid:
            line["trace_id"] = trace.format_trace_id(span_ctx.trace_id)
            line["span_id"] = trace.format_span_id(span_ctx.span_id)
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line)


def setup_logging(service_name: str) -> None:
    """Route the root logger to stderr as JSON lines (level from CHASSIS_LOG_LEVEL, default INFO)."""
    root = logging.getLogger()
    if any(isinstance(h.formatter, JsonLogFormatter) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter(service_name))
    root.addHandler(handler)
    root.setLevel(os.environ.get(LOG_LEVEL_ENV, "INFO").upper())
