"""Proctoring hooks in real processes: a proctored service and a proctoring service, each beside its sidecar.

The proctoring service (apps/proctoring_gate_service.py) answers CheckAction and records every signal it
receives on `proctoring.signals`, so what the tests read is what proctoring really got.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from mooc.assessment.v1 import assessment_pb2 as api
from mooc.assessment.v1 import assessment_pb2_grpc as api_grpc
from mooc.events.v1.proctoring_pb2 import EngagementSignal

from chassis import Service, ServiceSettings
from chassis._protogen import ensure_generated
from chassis.testing import AppProcess, Sidecar, StartService, wait_for

ROOT = Path(__file__).resolve().parents[2]
APPS = Path(__file__).parent / "apps"
SUBMIT = "/mooc.assessment.v1.AssessmentService/SubmitAssignment"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"

HOOK_MODULE = '''\
"""A third-party proctoring hook: appends each signal to RECORDING_LOG, RECORDING_DELAY seconds late."""

import asyncio
import json
import os

from google.protobuf import json_format


class RecordingHook:
    def __init__(self, context):
        self._app_id = context.app_id
        self._path = os.environ["RECORDING_LOG"]
        self._delay = float(os.environ.get("RECORDING_DELAY", "0"))

    async def on_signal(self, signal):
        await asyncio.sleep(self._delay)
        record = json_format.MessageToDict(signal, preserving_proto_field_name=True)
        with open(self._path, "a") as log:
            log.write(json.dumps({"hook_app": self._app_id, **record}) + "\\n")
'''


@dataclass
class Proctored:
    sidecar: Sidecar
    app: AppProcess
    handled: Path  # learners whose handler ran
    metrics: Path


@pytest.fixture
def plugins(tmp_path: Path) -> Path:
    """A folder holding an installed distribution whose entry point `recording` is a proctoring hook."""
    folder = tmp_path / "plugins"
    dist_info = folder / "recording_hooks-1.0.dist-info"
    dist_info.mkdir(parents=True)
    (folder / "recording_hook.py").write_text(HOOK_MODULE)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: recording-hooks\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(
        "[mooc_chassis.proctoring]\nrecording = recording_hook:RecordingHook\n"
    )
    return folder


@pytest.fixture
def start_proctoring(tmp_path: Path, chassis_service: StartService) -> Callable[..., Path]:
    """Start the proctoring service; returns the file of the signals it receives."""

    def start(**env: str) -> Path:
        signals = tmp_path / "signals.jsonl"
        chassis_service(
            "proctoring_gate_service",
            app_id="proctoring",
            pythonpath=[APPS],
            env={"SIGNALS_LOG": str(signals), **env},
        )
        return signals

    return start


@pytest.fixture
def start_proctored(tmp_path: Path, plugins: Path, chassis_service: StartService) -> Callable[..., Proctored]:
    """Start the proctored service; `env` adds CHASSIS_PROCTORING_* and the app's own switches."""

    def start(**env: str) -> Proctored:
        handled, metrics = tmp_path / "handled.txt", tmp_path / "metrics.jsonl"
        started = chassis_service(
            "proctored_service",
            app_id="proctored",
            pythonpath=[APPS, plugins],
            env={
                "HANDLED_LOG": str(handled),
                "CHASSIS_METRICS_FILE": str(metrics),
                "OTEL_METRIC_EXPORT_INTERVAL": "200",
                **env,
            },
        )
        return Proctored(started.sidecar, started.app, handled, metrics)

    return start


async def submit(
    port: int, learner: str, *metadata: tuple[str, str], app_id: str | None = "proctored"
) -> api.SubmitAssignmentResponse:
    """SubmitAssignment through a sidecar (`app_id` set) or straight to the app (`app_id=None`)."""
    routing = (("dapr-app-id", app_id),) if app_id else ()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = api_grpc.AssessmentServiceStub(channel)
        request = api.SubmitAssignmentRequest(learner_id=learner, assignment_id="exam-1")
        reply: api.SubmitAssignmentResponse = await stub.SubmitAssignment(
            request, metadata=(*routing, *metadata), timeout=10
        )
        return reply


async def timed_submit(port: int, learner: str, **options: Any) -> float:
    started = time.perf_counter()
    await submit(port, learner, **options)
    return time.perf_counter() - started


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def signals_of(path: Path, *learners: str) -> dict[str, dict[str, Any]]:
    """The recorded signal of each of `learners`, once all have arrived."""

    def arrived() -> dict[str, dict[str, Any]] | None:
        found = {s["learner_id"]: s for s in lines(path) if s.get("learner_id") in learners}
        return found if len(found) == len(learners) else None

    found: dict[str, dict[str, Any]] = await wait_for(arrived, timeout=20, what=f"signals of {learners}")
    return found


def counter(metrics: Path, name: str, **attributes: str) -> float:
    """The latest total of counter `name` over the points carrying `attributes`."""
    total = 0.0
    for record in lines(metrics):
        points = [p for m in record["metrics"] if m["name"] == name for p in m["points"]]
        total = sum(p["value"] for p in points if attributes.items() <= p["attributes"].items()) or total
    return total


@contextmanager
def frozen(process: Sidecar) -> Iterator[None]:
    """The process stopped (SIGSTOP) for the block: it holds its connections and answers nothing."""
    os.kill(process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(process.pid, signal.SIGCONT)


def run_proctored_alone(plugins: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m proctored_service` without a sidecar: for what stops it before it talks to Dapr."""
    full_env = {
        **os.environ,
        "APP_ID": "proctored",
        "APP_PORT": "0",
        "HANDLED_LOG": os.devnull,
        "PYTHONPATH": os.pathsep.join([str(APPS), str(plugins), str(ensure_generated(ROOT))]),
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "proctored_service"], env=full_env, capture_output=True, text=True, timeout=60
    )


async def test_a_proctored_call_publishes_its_timings_client_signals_and_trace(
    start_proctoring: Callable[..., Path], start_proctored: Callable[..., Proctored]
) -> None:
    signals = start_proctoring()
    proctored = start_proctored()
    before = time.time()
    port = proctored.sidecar.grpc_port
    metadata = [("x-proctoring-focus-lost", "3"), ("x-proctoring-notes", "n" * 300)]
    await submit(port, "slow-ada", *metadata, ("traceparent", TRACEPARENT))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await submit(port, "invalid-bob")
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    found = await signals_of(signals, "slow-ada", "invalid-bob")
    ada, bob = found["slow-ada"], found["invalid-bob"]
    assert ada["app_id"] == "proctored"
    assert ada["method"] == SUBMIT
    assert ada["status_code"] == "OK"
    assert bob["status_code"] == "INVALID_ARGUMENT"
    assert ada["client_signals"] == {"focus-lost": "3", "notes": "n" * 256}  # bounded, as the gate's proto
    assert "client_signals" not in bob
    assert 0.2 <= float(ada["duration"].removesuffix("s")) < 5  # the handler slept 0.2 s
    started_at = datetime.fromisoformat(ada["started_at"])
    assert before - 1 <= started_at.timestamp() <= time.time()
    # One trace: the caller's trace id is in the signal, and the signal's CloudEvent continues it.
    assert ada["trace_id"] == TRACE_ID
    assert ada["cloudevent_traceparent"].split("-")[1] == TRACE_ID
    assert "gate_outcome" not in ada  # not gated


async def test_the_learners_call_is_not_slowed_when_publishing_blocks_and_the_queue_drops_the_newest(
    start_proctoring: Callable[..., Path], start_proctored: Callable[..., Proctored]
) -> None:
    signals = start_proctoring()
    proctored = start_proctored(CHASSIS_PROCTORING_QUEUE="2")
    await submit(proctored.sidecar.grpc_port, "warm-up")
    await signals_of(signals, "warm-up")

    learners = [f"l{n}" for n in range(1, 7)]
    with frozen(proctored.sidecar):  # the signal publisher waits on a sidecar that answers nothing
        # The learners reach the app directly (their path does not need the frozen sidecar).
        took = [await timed_submit(proctored.app.app_port, learners[0], app_id=None)]
        await asyncio.sleep(0.3)  # the publisher takes l1 and blocks on it; l2 and l3 fill the queue
        took += [await timed_submit(proctored.app.app_port, who, app_id=None) for who in learners[1:]]
        assert max(took) < 2.0, took  # the publisher stays blocked for as long as the sidecar is frozen
        assert proctored.handled.read_text().split() == ["warm-up", *learners]  # none failed

    await signals_of(signals, "l1", "l2", "l3")  # the queue has room again
    await submit(proctored.sidecar.grpc_port, "after")  # published after anything still queued
    await signals_of(signals, "after")
    received = list(dict.fromkeys(s["learner_id"] for s in lines(signals)))  # at-least-once: no repeats
    assert received == ["warm-up", "l1", "l2", "l3", "after"]  # l4..l6, the newest, were dropped
    dropped = {"chassis.outcome": "dropped"}
    await wait_for(
        lambda: counter(proctored.metrics, "chassis.proctoring.signals", **dropped) == 3,
        timeout=10,
        what="3 dropped signals counted",
    )
    warnings = [line for line in proctored.app.log().splitlines() if "signal queue full" in line]
    assert len(warnings) == 1, warnings  # rate-limited: one warning for the three drops
    assert "dropped 1 newest signal(s)" in warnings[0]


async def test_gate_allows_and_holds(
    start_proctoring: Callable[..., Path], start_proctored: Callable[..., Proctored]
) -> None:
    signals = start_proctoring()
    proctored = start_proctored(PROCTORED_GATE="1")
    port = proctored.sidecar.grpc_port

    reply = await submit(port, "ada")
    assert reply.submission_id == "ada-exam-1"
    with pytest.raises(grpc.aio.AioRpcError) as held:
        await submit(port, "held-mallory")

    assert held.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert held.value.details() == "held by proctoring: second device detected"
    assert proctored.handled.read_text().split() == ["ada"]  # the held call never reached the handler
    found = await signals_of(signals, "ada", "held-mallory")
    assert found["ada"]["gate_outcome"] == "ALLOW"
    assert found["held-mallory"]["gate_outcome"] == "HOLD"
    assert found["held-mallory"]["status_code"] == "FAILED_PRECONDITION"


async def test_gate_timeout_fails_open_by_default(
    start_proctoring: Callable[..., Path], start_proctored: Callable[..., Proctored]
) -> None:
    signals = start_proctoring(GATE_DELAY="5")
    proctored = start_proctored(PROCTORED_GATE="1", CHASSIS_PROCTORING_GATE_TIMEOUT="0.3")

    took = await timed_submit(proctored.sidecar.grpc_port, "late-ada")

    assert took < 2.0  # the gate waited 0.3 s, not proctoring's 5 s
    assert proctored.handled.read_text().split() == ["late-ada"]
    found = await signals_of(signals, "late-ada")
    assert found["late-ada"]["gate_outcome"] == "FAIL_OPEN"
    assert found["late-ada"]["status_code"] == "OK"


async def test_gate_fails_closed_when_configured_on_timeout_and_when_proctoring_is_down(
    start_proctoring: Callable[..., Path], start_proctored: Callable[..., Proctored]
) -> None:
    proctored = start_proctored(
        PROCTORED_GATE="1", CHASSIS_PROCTORING_FAIL="closed", CHASSIS_PROCTORING_GATE_TIMEOUT="0.3"
    )
    port = proctored.sidecar.grpc_port
    with pytest.raises(grpc.aio.AioRpcError) as down:  # no proctoring service at all yet
        await submit(port, "ada")
    assert down.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "proctoring (proctoring) did not decide" in (down.value.details() or "")

    signals = start_proctoring(GATE_DELAY="5")
    started = time.perf_counter()
    with pytest.raises(grpc.aio.AioRpcError) as late:
        await submit(port, "late-bob")
    assert time.perf_counter() - started < 2.0
    assert late.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "CHASSIS_PROCTORING_FAIL=closed: DEADLINE_EXCEEDED" in (late.value.details() or "")
    assert not proctored.handled.exists()  # neither call reached the handler
    found = await signals_of(signals, "late-bob")
    assert found["late-bob"]["gate_outcome"] == "FAIL_CLOSED"
    assert found["late-bob"]["status_code"] == "UNAVAILABLE"


@pytest.mark.parametrize("hook", ["recording", "recording_hook:RecordingHook"])
async def test_a_custom_hook_by_entry_point_or_import_path_and_the_queue_flushed_on_shutdown(
    hook: str, tmp_path: Path, start_proctored: Callable[..., Proctored]
) -> None:
    recorded = tmp_path / "recorded.jsonl"
    proctored = start_proctored(
        CHASSIS_PROCTORING_HOOKS=hook, RECORDING_LOG=str(recorded), RECORDING_DELAY="0.3"
    )
    learners = ["ada", "bob", "cy"]
    for learner in learners:
        await submit(proctored.sidecar.grpc_port, learner, ("x-proctoring-typing-cadence", "212"))

    assert proctored.app.terminate() == 0  # SIGTERM: drained, and the queued signals flushed
    records = lines(recorded)
    assert [r["learner_id"] for r in records] == learners  # 0.9 s of hook work, within the flush
    assert records[0]["hook_app"] == "proctored"
    assert records[0]["client_signals"] == {"typing-cadence": "212"}


@pytest.mark.parametrize(
    ("env", "line"),
    [
        (
            {"CHASSIS_PROCTORING_HOOKS": "publish,nope"},
            "config error: CHASSIS_PROCTORING_HOOKS: unknown hook 'nope'; "
            "installed: publish, recording (or give module:attribute)",
        ),
        (
            {"CHASSIS_PROCTORING_FAIL": "maybe"},
            "config error: CHASSIS_PROCTORING_FAIL: Input should be 'open' or 'closed' (got 'maybe')",
        ),
        (
            {"PROCTORED_METHOD": "SubmitAssigment"},
            "config error: proctor('SubmitAssigment'): the service serves no such RPC "
            "(it serves: GetSubmission, SubmitAssignment)",
        ),
        (
            {"PROCTORED_METHOD": "GetSubmission"},
            "config error: proctor('GetSubmission'): mooc.assessment.v1.GetSubmissionRequest has no field "
            "'learner_id'; pass learner_field= the field naming the learner, or None",
        ),
    ],
    ids=["unknown-hook", "bad-policy", "unknown-rpc", "no-learner-field"],
)
def test_a_bad_proctoring_setting_stops_the_service_with_one_line(
    env: dict[str, str], line: str, plugins: Path
) -> None:
    result = run_proctored_alone(plugins, **env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == line


def test_proctoring_declares_its_signal_publication_in_the_contract() -> None:
    class Assessment(api_grpc.AssessmentServiceServicer):
        async def SubmitAssignment(self, request: Any, context: Any) -> api.SubmitAssignmentResponse:
            return api.SubmitAssignmentResponse()

        async def GetSubmission(self, request: Any, context: Any) -> api.Submission:
            return api.Submission()

    service = Service("proctored", ServiceSettings(app_id="proctored"))
    service.add_servicer(api_grpc.add_AssessmentServiceServicer_to_server, Assessment())
    service.proctor("SubmitAssignment")
    service.proctor("GetSubmission", learner_field=None)  # a second mark declares nothing new

    contract = service.contract()
    assert [(flow.topic, flow.message) for flow in contract.publishes] == [
        ("proctoring.signals", EngagementSignal)
    ]
    assert contract.problems() == []
