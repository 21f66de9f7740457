"""Grading as it runs: a real sidecar and the service as processes. Submission events go in through
the sidecar's pub/sub, grades are read back through it (`dapr-app-id`), and a watcher app beside its
own sidecar receives the `grades` events.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import pytest
from chassis import Publisher, Service, ServiceSettings
from chassis.testing import AppProcess, Sidecar, free_port, wait_for
from mooc.events.v1.assessment_pb2 import SubmissionCreated
from mooc.grading.v1 import grading_pb2 as pb
from mooc.grading.v1 import grading_pb2_grpc as pb_grpc

from grading.service import APP_ID

SERVICE_DIR = Path(__file__).resolve().parents[1]
TESTS_DIR = Path(__file__).resolve().parent
METADATA = (("dapr-app-id", APP_ID),)


def sees_the_app(sidecar: Sidecar) -> bool:
    """The sidecar's full healthz: 204 once it has connected to its app (and subscribed for it)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{sidecar.http_port}/v1.0/healthz", timeout=1) as reply:
            return bool(reply.status == 204)
    except OSError:
        return False


@dataclass
class Platform:
    stub: pb_grpc.GradingServiceStub
    publisher: Publisher[SubmissionCreated]
    watched: Path

    def grades_seen(self) -> list[dict[str, Any]]:
        if not self.watched.exists():
            return []
        return [json.loads(line) for line in self.watched.read_text().splitlines()]


@pytest.fixture
async def platform(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    sidecar_factory: Callable[..., Sidecar],
    app_factory: Callable[..., AppProcess],
) -> AsyncIterator[Platform]:
    grading_port, watcher_port = free_port(), free_port()
    sidecar = sidecar_factory(APP_ID, app_port=grading_port)
    app_factory("grading", app_id=APP_ID, app_port=grading_port, pythonpath=[SERVICE_DIR], sidecar=sidecar)
    watched = tmp_path / "grades.jsonl"
    watcher_sidecar = sidecar_factory("grade-watcher", app_port=watcher_port)
    app_factory(
        "grade_watcher",
        app_id="grade-watcher",
        app_port=watcher_port,
        pythonpath=[TESTS_DIR],
        sidecar=watcher_sidecar,
        env={"GRADE_WATCHER_OUT": str(watched)},
    )
    for name, value in sidecar.app_env().items():  # the Dapr SDK reads its ports from the environment
        monkeypatch.setenv(name, value)
    settings = ServiceSettings(
        app_id="assessment", dapr_grpc_port=sidecar.grpc_port, dapr_http_port=sidecar.http_port
    )
    for each in (sidecar, watcher_sidecar):
        each.wait_until(partial(sees_the_app, each), 30, "connected to the app (GET /v1.0/healthz)")
    assessment = Service("assessment", settings)
    publisher = assessment.publisher(SubmissionCreated, topic="submissions")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.grpc_port}") as channel:
        yield Platform(pb_grpc.GradingServiceStub(channel), publisher, watched)
    await assessment.dapr.close()


def submission(short_answer: str) -> SubmissionCreated:
    return SubmissionCreated(
        submission_id="sub-1",
        learner_id="learner-1",
        assignment_id="intro-python-quiz-1",
        choices={"q1": "b", "q2": "a"},
        answer_key={"q1": "b", "q2": "b", "q3": "c"},
        short_answer=short_answer,
        rubric_keywords=["list", "expression", "iterable", "condition"],
    )


async def get_grade(stub: pb_grpc.GradingServiceStub, submission_id: str) -> pb.GradeRecord | None:
    try:
        return await stub.GetGrade(
            pb.GetGradeRequest(submission_id=submission_id), metadata=METADATA, timeout=10
        )
    except grpc.aio.AioRpcError as err:
        if err.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise


async def test_a_submission_is_graded_once_and_announced(platform: Platform) -> None:
    assert await get_grade(platform.stub, "sub-1") is None  # NOT_FOUND until graded
    await platform.publisher.publish(submission("a list from an expression"), event_id="sub-1")
    record = await wait_for(lambda: get_grade(platform.stub, "sub-1"), timeout=20, what="grade stored")
    assert (record.score, record.max_score, record.source_event_id) == (2, 4, "sub-1")
    assert list(record.matched_keywords) == ["list", "expression"]
    seen = await wait_for(platform.grades_seen, timeout=20, what="GradeCompleted received")
    assert seen[0]["id"] == "grade-sub-1"
    assert seen[0]["event"]["score"] == 2

    # Redelivered (here: sent again under another id, with an answer that would score differently).
    await platform.publisher.publish(submission("nothing relevant"), event_id="sub-1-again")
    seen = await wait_for(lambda: platform.grades_seen()[1:], timeout=20, what="grade announced again")
    assert seen[0]["id"] == "grade-sub-1"
    assert seen[0]["event"] == platform.grades_seen()[0]["event"]
    assert await get_grade(platform.stub, "sub-1") == record
