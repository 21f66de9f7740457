"""The whole platform for end-to-end tests: services, sidecars and broker as real processes in a tmp copy.

Each test gets its own copy of the project's services, contracts and embedded components, so the
SQLite files it fills are its own. An `audit` consumer group, registered in the real broker before
anything starts, sees every grade event, which is how the tests count what grading published.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from mooc.assessment.v1 import assessment_pb2 as assessment
from mooc.assessment.v1 import assessment_pb2_grpc as assessment_grpc

from chassis.sidecar.components.pubsub_sqlite import SqlitePubSub
from chassis.testing import ManagedProcess, free_port

REPO = Path(__file__).resolve().parents[2]
ASSIGNMENT = "intro-python-quiz-1"
GRADES_TOPIC = "grades"
AUDIT_GROUP = "audit"
# The embedded profile's broker file, relative to the sidecars' cwd (the run file's folder).
BROKER_DB = ".chassis/data/pubsub.db"


def copy_project(dest: Path) -> Path:
    """The parts of the repo a platform run needs, without anything a previous run left behind."""
    ignore = shutil.ignore_patterns(".chassis", "__pycache__", "*.db*", "*.log", ".pytest_cache")
    for part in ("proto", "services", "dapr/components/embedded"):
        shutil.copytree(REPO / part, dest / part, ignore=ignore)
    return dest


def learner_request(n: int) -> assessment.SubmitAssignmentRequest:
    """A submission of the bundled quiz: every third learner answers wrongly, so scores differ."""
    wrong = n % 3 == 0
    return assessment.SubmitAssignmentRequest(
        learner_id=f"learner-{n}",
        assignment_id=ASSIGNMENT,
        answers=[
            assessment.MultipleChoiceAnswer(question_id="q1", choice="a" if wrong else "b"),
            assessment.MultipleChoiceAnswer(question_id="q2", choice="b"),
            assessment.MultipleChoiceAnswer(question_id="q3", choice="c"),
        ],
        short_answer="It builds a list from an expression evaluated for each item of an iterable.",
    )


class Learner:
    """A client of the platform: typed stubs through a sidecar, routed by `dapr-app-id` (gRPC proxying)."""

    def __init__(self, dapr_grpc_port: int) -> None:
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{dapr_grpc_port}")
        self.assessment = assessment_grpc.AssessmentServiceStub(self.channel)
        self.metadata: tuple[tuple[str, str], ...] = (("dapr-app-id", "assessment"),)

    async def submit(self, n: int, traceparent: str | None = None) -> str:
        metadata = self.metadata + ((("traceparent", traceparent),) if traceparent else ())
        reply = await self.assessment.SubmitAssignment(learner_request(n), metadata=metadata, timeout=30)
        return str(reply.submission_id)

    async def submission(self, submission_id: str) -> assessment.Submission:
        request = assessment.GetSubmissionRequest(submission_id=submission_id)
        reply: assessment.Submission = await self.assessment.GetSubmission(
            request, metadata=self.metadata, timeout=10
        )
        return reply

    async def wait_graded(self, ids: list[str], timeout: float = 120.0) -> dict[str, assessment.Submission]:  # noqa: ASYNC109
        """Poll until every submission is GRADED; fail naming how many are still waiting."""
        pending, graded = set(ids), {}
        deadline = asyncio.get_running_loop().time() + timeout
        while pending:
            replies = await asyncio.gather(*(self.submission(i) for i in sorted(pending)))
            for reply in replies:
                if reply.status == assessment.Submission.STATUS_GRADED:
                    graded[reply.submission_id] = reply
                    pending.discard(reply.submission_id)
            if pending and asyncio.get_running_loop().time() > deadline:
                pytest.fail(f"{len(pending)} of {len(ids)} submissions still ungraded after {timeout:g}s")
            if pending:
                await asyncio.sleep(0.2)
        return graded

    async def close(self) -> None:
        await self.channel.close()


@dataclass
class GradeAudit:
    """Every grade event the broker carried, read through a consumer group of its own."""

    workdir: Path
    events: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))

    async def register(self) -> None:
        broker = await self._broker()
        try:
            await broker.subscribe(AUDIT_GROUP, GRADES_TOPIC)
        finally:
            await broker.close()

    async def collect(self) -> dict[str, list[dict[str, Any]]]:
        """Drain the audit group: submission id -> the CloudEvents (as JSON) that graded it."""
        broker = await self._broker()
        try:
            while batch := await broker.claim(AUDIT_GROUP, 500):
                for message in batch:
                    event = json.loads(message.data)
                    self.events[event["data"]["submissionId"]].append(event)
                    await broker.ack(AUDIT_GROUP, message)
        finally:
            await broker.close()
        return self.events

    async def _broker(self) -> SqlitePubSub:
        metadata = {"connectionString": BROKER_DB}
        return await SqlitePubSub.open("pubsub", metadata, app_id=AUDIT_GROUP, base_dir=self.workdir)


@dataclass
class Platform:
    """`chassis up -f dapr.yaml` over a tmp copy of the project, with every port fixed by the test."""

    workdir: Path
    ports: dict[str, dict[str, int]]
    trace_file: Path
    process: ManagedProcess | None = None

    @classmethod
    def prepare(cls, workdir: Path) -> Platform:
        copy_project(workdir)
        ports = {
            app: {"appPort": free_port(), "daprGRPCPort": free_port(), "daprHTTPPort": free_port()}
            for app in ("assessment", "grading")
        }
        apps = "".join(
            f"  - appID: {app}\n    appDirPath: ./services/{app}\n    appProtocol: grpc\n"
            f"    command: [python, -m, {app}]\n"
            + "".join(f"    {name}: {port}\n" for name, port in ports[app].items())
            for app in ports
        )
        run_file = f"version: 1\ncommon:\n  resourcesPath: ./dapr/components/embedded\napps:\n{apps}"
        (workdir / "dapr.yaml").write_text(run_file)
        return cls(workdir, ports, workdir / "spans.jsonl")

    def start(self) -> None:
        env = {**_base_env(), "CHASSIS_TRACE_FILE": str(self.trace_file)}
        argv = [str(Path(sys.executable).parent / "chassis"), "up", "-f", "dapr.yaml"]
        self.process = ManagedProcess("platform", argv, cwd=self.workdir, env=env)
        self.process.spawn()
        self.process.wait_until(lambda: "All apps are up." in self.log(), 60, "up (All apps are up.)")

    def log(self) -> str:
        return self.process.log() if self.process else ""

    def stop(self) -> int:
        return self.process.terminate() if self.process else 0

    def spans(self) -> list[dict[str, Any]]:
        if not self.trace_file.exists():
            return []
        return [json.loads(line) for line in self.trace_file.read_text().splitlines() if line.strip()]


def _base_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith(("DAPR_", "CHASSIS_", "OTEL_"))}
