"""Middleware, one shape for RPCs, consumed and published events, in a real service behind a real sidecar."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import pytest
from mooc.assessment.v1 import assessment_pb2 as api
from mooc.assessment.v1 import assessment_pb2_grpc as api_grpc

from chassis.testing import Sidecar, StartService, wait_for

APPS = Path(__file__).parent / "apps"
SUBMIT = "/mooc.assessment.v1.AssessmentService/SubmitAssignment"


@pytest.fixture
async def service(tmp_path: Path, chassis_service: StartService) -> tuple[Sidecar, Path]:
    log = tmp_path / "middleware.jsonl"
    started = chassis_service(
        "middleware_service", app_id="middleware", pythonpath=[APPS], env={"MIDDLEWARE_LOG": str(log)}
    )
    return started.sidecar, log


def entries(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


async def submit(sidecar: Sidecar, learner: str, *extra: tuple[str, str]) -> api.SubmitAssignmentResponse:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.grpc_port}") as channel:
        stub = api_grpc.AssessmentServiceStub(channel)
        request = api.SubmitAssignmentRequest(learner_id=learner, assignment_id="a-1")
        reply: api.SubmitAssignmentResponse = await stub.SubmitAssignment(
            request, metadata=(("dapr-app-id", "middleware"), *extra), timeout=10
        )
        return reply


def around(log: Path, kind: str, name: str) -> list[str]:
    return [e["at"] for e in entries(log) if e["kind"] == kind and e["name"] == name]


async def test_rpc_middleware_wraps_the_handler_in_the_order_added(service: tuple[Sidecar, Path]) -> None:
    sidecar, log = service
    await submit(sidecar, "ada")

    rpc = [e for e in entries(log) if e["kind"] == "rpc"]
    assert [e["at"] for e in rpc] == ["outer-before", "inner-before", "handler", "inner-after", "outer-after"]
    first = rpc[0]
    assert first["name"] == SUBMIT
    assert first["message"] == "SubmitAssignmentRequest"
    assert first["metadata"]["dapr-caller-app-id"] == "middleware"  # what the sidecar added on the way


async def test_rpc_middleware_can_refuse_a_call_before_the_handler(service: tuple[Sidecar, Path]) -> None:
    sidecar, log = service
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await submit(sidecar, "mallory", ("x-blocked", "1"))

    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "gate middleware" in (refused.value.details() or "")
    assert "handler" not in [e["at"] for e in entries(log) if e["kind"] == "rpc"]


async def test_publish_and_consume_pass_through_the_same_middleware(service: tuple[Sidecar, Path]) -> None:
    sidecar, log = service
    reply = await submit(sidecar, "grace")

    consumed_it = lambda: "handler" in around(log, "consume", reply.submission_id)  # noqa: E731
    await wait_for(consumed_it, timeout=20, what="the published event consumed")
    published = [e for e in entries(log) if e["kind"] == "publish"]
    assert [e["at"] for e in published] == ["outer-before", "inner-before", "inner-after", "outer-after"]
    assert published[0]["name"] == "submissions"
    assert published[0]["message"] == "SubmissionCreated"
    consumed = [e for e in entries(log) if e["kind"] == "consume"]
    assert consumed[0]["name"] == "submissions"
    assert consumed[0]["message"] == "SubmissionCreated"
    assert [e["at"] for e in consumed][:3] == ["outer-before", "inner-before", "handler"]


async def test_a_consume_middleware_outcome_is_the_deliverys_outcome(service: tuple[Sidecar, Path]) -> None:
    sidecar, log = service
    await submit(sidecar, "retry-bob")

    handled = await wait_for(
        lambda: [e for e in entries(log) if e["at"] == "handler" and e["kind"] == "consume"],
        timeout=30,
        what="the redelivered event handled",
    )
    # The gate raised Retry on the first delivery: the handler ran once, on the redelivery.
    assert [e["name"] for e in handled] == ["retry-bob-a-1"]
    starts = [e for e in entries(log) if e["kind"] == "consume" and e["at"] == "outer-before"]
    assert len(starts) == 2
