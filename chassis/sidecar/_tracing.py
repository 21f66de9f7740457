"""Tracing for the sidecar: the chassis' OpenTelemetry setup, W3C context in and out of gRPC metadata.

The sidecar is its own process with its own TracerProvider (service `<app-id>-sidecar`) exported by
`chassis._telemetry` (OTEL_* variables, CHASSIS_TRACE_FILE), so one trace file holds a request's spans
across apps and sidecars. daprd speaks both `traceparent` and the binary `grpc-trace-bin`; so do we.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from chassis._telemetry import flush_telemetry, setup_telemetry

_PROPAGATOR = TraceContextTextMapPropagator()
# OpenCensus binary trace context (daprd's `grpc-trace-bin`): version, then tagged fields.
_BIN_LEN = 29


def setup_tracing(app_id: str) -> trace.Tracer:
    """Install the chassis' TracerProvider as service `<app-id>-sidecar`; ConfigError on bad OTEL_* vars."""
    setup_telemetry(f"{app_id}-sidecar")
    return trace.get_tracer("chassis.sidecar")


def flush_tracing() -> None:
    """Export what is still buffered before the process exits."""
    flush_telemetry()


def metadata_pairs(metadata: object) -> list[tuple[str, str | bytes]]:
    """gRPC metadata in any of grpc's shapes (tuples, aio Metadata, _Metadatum) as (key, value) pairs."""
    if metadata is None:
        return []
    return [(str(key), value) for key, value in cast(Iterable[tuple[str, str | bytes]], metadata)]


def context_from_metadata(metadata: object) -> Context:
    """The caller's trace context: `traceparent`/`tracestate`, else daprd's `grpc-trace-bin`."""
    carrier: dict[str, str] = {}
    binary: bytes | None = None
    for key, value in metadata_pairs(metadata):
        if isinstance(value, bytes):
            binary = value if key.lower() == "grpc-trace-bin" else binary
        else:
            carrier[key.lower()] = value
    ctx = _PROPAGATOR.extract(carrier)
    if trace.get_current_span(ctx).get_span_context().is_valid or binary is None:
        return ctx
    span_context = decode_grpc_trace_bin(binary)
    return trace.set_span_in_context(NonRecordingSpan(span_context)) if span_context else ctx


def context_from_traceparent(traceparent: str, tracestate: str = "") -> Context:
    """A context whose parent is the given W3C traceparent (e.g. one stored in a CloudEvent)."""
    return _PROPAGATOR.extract({"traceparent": traceparent, "tracestate": tracestate})


def traceparent(ctx: SpanContext) -> str:
    """W3C `traceparent` header value of a span context."""
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def tracestate(ctx: SpanContext) -> str:
    """W3C `tracestate` header value of a span context ('' when empty)."""
    return ctx.trace_state.to_header() if ctx.trace_state else ""


def grpc_trace_bin(ctx: SpanContext) -> bytes:
    """daprd's `grpc-trace-bin`: 0x00 | 0x00 trace-id[16] | 0x01 span-id[8] | 0x02 flags."""
    return (
        b"\x00\x00"
        + ctx.trace_id.to_bytes(16, "big")
        + b"\x01"
        + ctx.span_id.to_bytes(8, "big")
        + b"\x02"
        + bytes([int(ctx.trace_flags)])
    )


def decode_grpc_trace_bin(data: bytes) -> SpanContext | None:
    """Parse `grpc-trace-bin`; None when it is not the 29-byte form daprd sends."""
    if len(data) != _BIN_LEN or data[0] != 0 or data[1] != 0 or data[18] != 1 or data[27] != 2:
        return None
    return SpanContext(
        trace_id=int.from_bytes(data[2:18], "big"),
        span_id=int.from_bytes(data[19:27], "big"),
        is_remote=True,
        trace_flags=TraceFlags(data[28]),
    )
