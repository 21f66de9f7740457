"""`chassis trace TRACE_ID`: the span file drawn as a waterfall, from a hand-written file and a real run."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from mooc.assessment.v1 import assessment_pb2 as api
from mooc.assessment.v1 import assessment_pb2_grpc as api_grpc

from chassis.cli import main
from chassis.testing import AppProcess, Sidecar, free_port, wait_for

PROBE_APPS = Path(__file__).parents[1] / "chassis" / "apps"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
MS = 1_000_000
T0 = 1_764_000_000_000_000_000


def span(
    span_id: int, parent: int | None, service: str, name: str, start_ms: int, end_ms: int, **extra: object
) -> str:
    record = {
        "trace_id": extra.pop("trace_id", TRACE),
        "span_id": f"{span_id:016x}",
        "parent_id": f"{parent:016x}" if parent is not None else None,
        "name": name,
        "service": service,
        "kind": "INTERNAL",
        "start": T0 + start_ms * MS,
        "end": T0 + end_ms * MS,
        "status": extra.pop("status", "UNSET"),
        "attributes": {},
    }
    return json.dumps(record) + "\n"


@pytest.fixture
def trace_file(tmp_path: Path) -> Path:
    """Children before parents (they end first), an orphan, another trace, and a torn line."""
    path = tmp_path / "traces.jsonl"
    path.write_text(
        span(3, 2, "db", "SELECT", 20, 30, status="ERROR")
        + span(2, 1, "web", "load course", 10, 40)
        + span(9, None, "web", "other trace", 0, 5, trace_id="f" * 32)
        + span(4, 1, "grading", "grade", 50, 100)
        + span(5, 0xFF, "worker", "late", 60, 70)  # its parent never reached the file
        + span(1, None, "web", "GET /course", 0, 100)
        + '{"trace_id": "4bf92f3577b'  # a writer killed mid-line
    )
    return path


WATERFALL = [
    f"trace {TRACE}: 5 spans, 100.0 ms",
    "service  span           start ms     ms",
    "web      GET /course         0.0  100.0  ████████████████████",
    "web        load course      10.0   30.0    ██████",
    "db           SELECT !       20.0   10.0      ██",
    "grading    grade            50.0   50.0            ██████████",
    "worker   late               60.0   10.0              ██",
]


def test_the_waterfall_indents_by_parent_and_scales_bars_to_the_terminal(
    trace_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # 61 columns leave 20 for the bars: one cell per 5 ms of a 100 ms trace.
    monkeypatch.setenv("COLUMNS", "61")

    assert main(["trace", TRACE, "--file", str(trace_file)]) == 0

    assert capsys.readouterr().out.splitlines() == WATERFALL


def test_a_wider_terminal_gets_longer_bars_and_a_narrow_one_shortens_names(
    trace_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "81")
    assert main(["trace", TRACE.upper(), "--file", str(trace_file)]) == 0
    wide = capsys.readouterr().out.splitlines()
    assert wide[2].endswith("  " + "█" * 40) and len(wide[2]) == 81
    assert wide[5].endswith(" " * 20 + "█" * 20)  # grade: the second half

    with trace_file.open("a") as out:
        out.write("\n" + span(6, 4, "grading", "a span name much longer than the terminal allows", 90, 95))
    monkeypatch.setenv("COLUMNS", "60")
    assert main(["trace", TRACE, "--file", str(trace_file)]) == 0
    narrow = capsys.readouterr().out.splitlines()
    assert all(len(line) <= 60 for line in narrow)
    assert narrow[6] == "grading      a span name much…       90.0    5.0           █"


def test_the_default_file_is_the_variable_else_dot_chassis(
    trace_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "61")
    project = tmp_path / "project"
    (project / ".chassis").mkdir(parents=True)
    (project / ".chassis" / "traces.jsonl").write_text(trace_file.read_text())
    monkeypatch.chdir(project)
    assert main(["trace", TRACE]) == 0
    assert capsys.readouterr().out.splitlines() == WATERFALL

    monkeypatch.setenv("CHASSIS_TRACE_FILE", str(tmp_path / "elsewhere.jsonl"))
    assert main(["trace", TRACE]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"chassis trace: no trace file at {tmp_path / 'elsewhere.jsonl'} "
        "(set CHASSIS_TRACE_FILE or pass --file)"
    ]


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chassis.cli", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_an_unknown_trace_or_a_missing_file_exits_1_with_one_line(trace_file: Path, tmp_path: Path) -> None:
    unknown = run_cli("trace", "0" * 32, "--file", str(trace_file), cwd=tmp_path)
    missing = run_cli("trace", TRACE, cwd=tmp_path)

    assert (unknown.returncode, unknown.stdout) == (1, "")
    assert unknown.stderr.splitlines() == [f"chassis trace: trace {'0' * 32} is not in {trace_file}"]
    assert (missing.returncode, missing.stdout) == (1, "")
    assert missing.stderr.splitlines() == [
        "chassis trace: no trace file at .chassis/traces.jsonl (set CHASSIS_TRACE_FILE or pass --file)"
    ]


def subtree(lines: list[str], name: str, name_column: int) -> list[str]:
    """The lines drawn under the span `name` (deeper indentation in the span column)."""

    def depth(line: str) -> int:
        return len(line[name_column:]) - len(line[name_column:].lstrip())

    [start] = [i for i, line in enumerate(lines) if line[name_column:].lstrip().startswith(name + " ")]
    below = []
    for line in lines[start + 1 :]:
        if depth(line) <= depth(lines[start]):
            break
        below.append(line)
    return below


async def test_a_real_run_draws_every_hop_under_the_callers_request(
    tmp_path: Path, sidecar_factory: Callable[..., Sidecar], app_factory: Callable[..., AppProcess]
) -> None:
    traces = tmp_path / "traces.jsonl"
    port = free_port()
    sidecar = sidecar_factory("probe", app_port=port, env={"CHASSIS_TRACE_FILE": str(traces)})
    app = app_factory(
        "probe_service",
        app_id="probe",
        app_port=port,
        sidecar=sidecar,
        pythonpath=[PROBE_APPS],
        env={"CHASSIS_TRACE_FILE": str(traces), "PROBE_FAIL_FIRST": "0"},
    )
    trace_id = secrets.token_hex(16)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.app_port}") as ch:
        request = api.SubmitAssignmentRequest(learner_id="learner-9", assignment_id="a-1")
        metadata = (("traceparent", f"00-{trace_id}-{secrets.token_hex(8)}-01"),)
        await api_grpc.AssessmentServiceStub(ch).SubmitAssignment(request, metadata=metadata)

    def spans() -> list[dict[str, object]]:
        found = [json.loads(line) for line in traces.read_text().splitlines()]
        mine = [s for s in found if s["trace_id"] == trace_id]
        return mine if any(s["name"] == "handle submissions" for s in mine) else []

    recorded = await wait_for(spans, timeout=20, what="the handler's span in the trace file")
    shown = run_cli(
        "trace", trace_id, cwd=tmp_path, env={"CHASSIS_TRACE_FILE": str(traces), "COLUMNS": "120"}
    )

    assert shown.returncode == 0, shown.stderr
    title, header, *lines = shown.stdout.splitlines()
    assert title.startswith(f"trace {trace_id}: {len(recorded)} spans, ")
    assert len(lines) == len(recorded) and all(len(line) <= 120 for line in lines)
    assert {line.split()[0] for line in lines} == {"probe", "probe-sidecar"}
    name_column = header.index("span")
    # The caller's own span is not in the file, so the app's server span is the root.
    assert lines[0][name_column:].startswith("/mooc.assessment.v1.AssessmentService/SubmitAssignment")
    below_publish = subtree(lines, "publish submissions", name_column)
    assert any("handle submissions" in line for line in below_publish)
    assert any(line.startswith("probe-sidecar") for line in below_publish)
