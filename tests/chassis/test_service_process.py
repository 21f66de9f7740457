"""A real service process beside a real sidecar: pub/sub with Retry, tracing across hops, invoke, drain."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from google.protobuf.message import Message
from mooc.assessment.v1 import assessment_pb2 as api
from mooc.assessment.v1 import assessment_pb2_grpc as api_grpc
from mooc.grading.v1.grading_pb2 import GradeRecord

from chassis import Dapr, ServiceSettings, StateRepository
from chassis.invoke import channel
from chassis.testing import AppProcess, Sidecar, free_port, wait_for

APPS = Path(__file__).parent / "apps"
M = TypeVar("M", bound=Message)


def start_probe(
    sidecar_factory: Callable[..., Sidecar], app_factory: Callable[..., AppProcess], **env: str
) -> tuple[Sidecar, AppProcess]:
    port = free_port()
    extra = {k: v for k, v in env.items() if k.startswith("CHASSIS_")}
    sidecar = sidecar_factory("probe", app_port=port, env=extra)
    app = app_factory(
        "probe_service", app_id="probe", app_port=port, sidecar=sidecar, pythonpath=[APPS], env=env
    )
    return sidecar, app


async def read_state(sidecar: Sidecar, key: str, model: type[M]) -> M:
    """Read what the app stored, through its own sidecar (keys are prefixed with the app id)."""
    settings = ServiceSettings(
        app_id="reader", dapr_grpc_port=sidecar.grpc_port, dapr_http_port=sidecar.http_port
    )
    async with Dapr(settings) as dapr:
        stored = await StateRepository(dapr, model, "statestore").get(key)
    assert stored is not None, f"nothing stored under {key!r}"
    return stored.value


def submit(learner: str) -> api.SubmitAssignmentRequest:
    return api.SubmitAssignmentRequest(learner_id=learner, assignment_id="a-1")


async def graded(stub: api_grpc.AssessmentServiceStub, submission_id: str) -> api.Submission | None:
    try:
        found: api.Submission = await stub.GetSubmission(
            api.GetSubmissionRequest(submission_id=submission_id)
        )
    except grpc.aio.AioRpcError as err:
        if err.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise
    return found if found.status == api.Submission.STATUS_GRADED else None


async def test_an_event_asked_to_retry_is_redelivered_until_handled(
    sidecar_factory: Callable[..., Sidecar], app_factory: Callable[..., AppProcess]
) -> None:
    sidecar, app = start_probe(sidecar_factory, app_factory, PROBE_FAIL_FIRST="2")

    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.app_port}") as ch:
        stub = api_grpc.AssessmentServiceStub(ch)
        reply = await stub.SubmitAssignment(submit("learner-1"))
        submission = await wait_for(lambda: graded(stub, reply.submission_id), timeout=30, what="graded")

    assert submission.learner_id == "learner-1"
    assert submission.grade.score == 3  # two RETRY answers, then SUCCESS on the third delivery
    seen = await read_state(sidecar, f"deliveries-{reply.submission_id}", GradeRecord)
    # The CloudEvent carried the declared type, the publisher's deterministic id and its app id.
    assert seen.source_event_id == "submitted-learner-1-a-1"
    assert list(seen.matched_keywords) == ["mooc.assessment.submission.created.v1", "probe"]


async def test_services_call_each_other_through_the_sidecar_by_app_id(
    sidecar_factory: Callable[..., Sidecar],
    app_factory: Callable[..., AppProcess],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    start_probe(sidecar_factory, app_factory, PROBE_FAIL_FIRST="0")
    # The caller has its own sidecar; both share the app registry in the test's folder.
    caller_sidecar = sidecar_factory("caller")
    monkeypatch.setenv("DAPR_GRPC_PORT", str(caller_sidecar.grpc_port))

    async with channel("probe") as ch:
        stub = api_grpc.AssessmentServiceStub(ch)
        reply = await stub.SubmitAssignment(submit("learner-3"))
        submission = await wait_for(lambda: graded(stub, reply.submission_id), timeout=20, what="graded")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetSubmission(api.GetSubmissionRequest(submission_id="no-such"))

    assert submission.submission_id == "learner-3-a-1"
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND  # the callee's status reaches the caller


async def test_the_handler_span_carries_the_callers_trace_id(
    tmp_path: Path, sidecar_factory: Callable[..., Sidecar], app_factory: Callable[..., AppProcess]
) -> None:
    trace_file = tmp_path / "trace.jsonl"
    _, app = start_probe(
        sidecar_factory, app_factory, PROBE_FAIL_FIRST="0", CHASSIS_TRACE_FILE=str(trace_file)
    )
    trace_id = secrets.token_hex(16)
    traceparent = f"00-{trace_id}-{secrets.token_hex(8)}-01"

    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.app_port}") as ch:
        stub = api_grpc.AssessmentServiceStub(ch)
        reply = await stub.SubmitAssignment(submit("learner-2"), metadata=(("traceparent", traceparent),))
        await wait_for(lambda: graded(stub, reply.submission_id), timeout=20, what="graded")

    def handler_spans() -> list[dict[str, object]]:
        spans = [json.loads(line) for line in trace_file.read_text().splitlines()]
        return [s for s in spans if s["name"] == "handle submissions" and s["service"] == "probe"]

    [handled] = await wait_for(handler_spans, timeout=5, what="a 'handle submissions' span")
    assert handled["trace_id"] == trace_id
    assert handled["kind"] == "CONSUMER"
    assert handled["attributes"]["chassis.outcome"] == "SUCCESS"  # type: ignore[index]
    publish = [
        s
        for s in (json.loads(x) for x in trace_file.read_text().splitlines())
        if s["name"] == "publish submissions"
    ]
    assert [s["trace_id"] for s in publish] == [trace_id]


async def test_sigterm_drains_an_in_flight_call_and_exits_zero(
    sidecar_factory: Callable[..., Sidecar], app_factory: Callable[..., AppProcess]
) -> None:
    _, app = start_probe(sidecar_factory, app_factory, PROBE_SLOW_SECONDS="1.5")

    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.app_port}") as ch:
        stub = api_grpc.AssessmentServiceStub(ch)
        in_flight = asyncio.ensure_future(stub.GetSubmission(api.GetSubmissionRequest(submission_id="none")))
        await wait_for(lambda: "slow call started" in app.log(), timeout=10, what="the slow call to start")

        exit_code = await asyncio.to_thread(app.terminate)

        # The call finished with the handler's own answer, not a cancellation.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await in_flight
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert exit_code == 0
