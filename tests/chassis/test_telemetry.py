"""Telemetry: the shared JSON-lines trace file, W3C traceparent helpers, exporter choice, JSON logs."""

from __future__ import annotations

import importlib.util
import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from chassis import context_from_traceparent, current_traceparent
from chassis._telemetry import JsonLinesSpanExporter, JsonLogFormatter

FIELDS = {"trace_id", "span_id", "parent_id", "name", "service", "kind", "start", "end", "attributes"}


def _tracer(path: Path, service: str = "grading") -> trace.Tracer:
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(path)))
    return provider.get_tracer("test")


def _records(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_each_finished_span_is_one_json_line_with_hex_ids_and_ns_times(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    tracer = _tracer(path)

    with (
        tracer.start_as_current_span("parent", kind=trace.SpanKind.SERVER) as parent,
        tracer.start_as_current_span("child", attributes={"messaging.destination.name": "grades"}),
    ):
        pass

    child, root = _records(path)  # a child ends first, so it is written first
    assert child.keys() >= FIELDS
    assert (child["name"], root["name"]) == ("child", "parent")
    assert child["trace_id"] == root["trace_id"] == f"{parent.get_span_context().trace_id:032x}"
    assert child["parent_id"] == root["span_id"] and root["parent_id"] is None
    assert (root["kind"], child["kind"], child["service"]) == ("SERVER", "INTERNAL", "grading")
    assert child["attributes"] == {"messaging.destination.name": "grades"}
    assert (
        isinstance(child["start"], int) and isinstance(child["end"], int) and child["start"] <= child["end"]
    )


def test_several_processes_append_to_one_file_without_tearing_lines(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    script = textwrap.dedent(
        """
        import sys
        from opentelemetry import trace
        from chassis import setup_telemetry

        setup_telemetry(sys.argv[1])
        setup_telemetry("ignored: the first call wins")
        tracer = trace.get_tracer("test")
        for i in range(100):
            with tracer.start_as_current_span(f"span-{i}", attributes={"padding": "x" * 2000}):
                pass
        """
    )
    env = {"PATH": "/usr/bin:/bin", "CHASSIS_TRACE_FILE": str(path)}
    writers = [
        subprocess.Popen([sys.executable, "-c", script, f"svc-{n}"], env=env, stderr=subprocess.PIPE)
        for n in range(4)
    ]
    for writer in writers:
        _, err = writer.communicate(timeout=60)
        assert writer.returncode == 0, err.decode()

    records = _records(path)  # json.loads fails on any torn or interleaved line
    assert len(records) == 400
    assert {r["service"] for r in records} == {f"svc-{n}" for n in range(4)}


def test_traceparent_helpers_round_trip_the_current_span(tmp_path: Path) -> None:
    tracer = _tracer(tmp_path / "trace.jsonl")
    assert current_traceparent() is None

    with tracer.start_as_current_span("work") as span:
        traceparent = current_traceparent()

    ctx = span.get_span_context()
    assert traceparent is not None
    assert traceparent.startswith(f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-")  # then the sampled flags
    remote = trace.get_current_span(context_from_traceparent(traceparent)).get_span_context()
    assert (remote.trace_id, remote.span_id, remote.is_remote) == (ctx.trace_id, ctx.span_id, True)
    assert not trace.get_current_span(context_from_traceparent("garbage")).get_span_context().is_valid


def _service_start(tmp_path: Path, exporter: str) -> subprocess.CompletedProcess[str]:
    script = "from chassis import Service; Service('probe').run()"
    env = {"PATH": "/usr/bin:/bin", "APP_ID": "probe", "APP_PORT": "0", "OTEL_TRACES_EXPORTER": exporter}
    return subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )


def test_an_unknown_exporter_stops_the_service_with_one_line(tmp_path: Path) -> None:
    result = _service_start(tmp_path, "zipkin-v0")

    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "config error: OTEL_TRACES_EXPORTER: unknown exporter 'zipkin-v0'; use console, otlp or none"
    ]


@pytest.mark.skipif(
    importlib.util.find_spec("opentelemetry.exporter.otlp") is not None,
    reason="an OTLP exporter is installed here, so its absence cannot be shown",
)
def test_otlp_without_its_package_says_what_to_install(tmp_path: Path) -> None:
    result = _service_start(tmp_path, "otlp")

    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith(
        "config error: OTEL_TRACES_EXPORTER: 'otlp' needs the package opentelemetry-exporter-otlp"
    )


def test_log_lines_are_json_with_the_current_trace_and_span_ids(tmp_path: Path) -> None:
    tracer = _tracer(tmp_path / "trace.jsonl")
    record = logging.LogRecord("chassis.test", logging.INFO, __file__, 1, "graded %s", ("s-1",), None)

    with tracer.start_as_current_span("work") as span:
        line = json.loads(JsonLogFormatter("grading").format(record))

    ctx = span.get_span_context()
    assert line["message"] == "graded s-1"
    assert (line["level"], line["service"], line["logger"]) == ("INFO", "grading", "chassis.test")
    assert (line["trace_id"], line["span_id"]) == (f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}")
