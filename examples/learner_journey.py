"""The core learner journey against a running platform: submit an assignment to `assessment` through a
sidecar, wait until `grading` has scored it, and print the grade and the trace id that followed it.

    chassis up -f dapr.yaml                 # terminal 1 (or `chassis demo`, which does all of this)
    python examples/learner_journey.py      # terminal 2: finds the ports `chassis up` recorded
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
from opentelemetry import propagate, trace

from chassis import setup_telemetry

ASSIGNMENT = "intro-python-quiz-1"
ANSWERS = {"q1": "b", "q2": "b", "q3": "c"}
SHORT_ANSWER = "A list comprehension builds a new list by applying an expression to each item of an iterable."
UP_STATE = Path(".chassis") / "up.json"


def import_contracts() -> Any:
    """The generated assessment stubs; compiled with `chassis protoc` when not on the path already."""
    try:
        from mooc.assessment.v1 import assessment_pb2, assessment_pb2_grpc
    except ImportError:
        here = Path(__file__).resolve().parent
        cmd = [sys.executable, "-m", "chassis.cli", "protoc", "--project-dir", str(here)]
        sys.path.insert(0, subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip())
        from mooc.assessment.v1 import assessment_pb2, assessment_pb2_grpc
    return assessment_pb2, assessment_pb2_grpc


def recorded_port(app_id: str) -> int | None:
    """The sidecar port of `app_id` (else of any app) that a running `chassis up` recorded."""
    for start in (Path.cwd(), Path(__file__).resolve().parent):
        for folder in (start, *start.parents):
            state = folder / UP_STATE
            if state.is_file():
                apps = json.loads(state.read_text())["apps"]
                preferred = [app for app in apps if app["appID"] == app_id] or apps
                return int(preferred[0]["daprGRPCPort"]) if preferred else None
    return None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--dapr-grpc-port",
        type=int,
        help="any sidecar's gRPC port (default: DAPR_GRPC_PORT, else the ports `chassis up` recorded)",
    )
    parser.add_argument("--learner-id", default=f"learner-{uuid.uuid4().hex[:8]}")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the grade")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """0 once the submission is graded (grade and trace id printed); 1 if it is not graded in time."""
    args = parse_args(argv)
    port = args.dapr_grpc_port or int(os.environ.get("DAPR_GRPC_PORT") or 0) or recorded_port("assessment")
    if not port:
        print(
            "no sidecar to talk to: start the platform (`chassis up -f dapr.yaml`) or pass --dapr-grpc-port"
        )
        return 2
    pb, pb_grpc = import_contracts()
    setup_telemetry("learner-journey")
    tracer = trace.get_tracer("examples.learner_journey")
    with (
        tracer.start_as_current_span("learner journey") as span,
        grpc.insecure_channel(f"127.0.0.1:{port}") as ch,
    ):
        carrier: dict[str, str] = {}
        propagate.inject(carrier)  # W3C traceparent of this span: every hop joins this trace
        metadata = (("dapr-app-id", "assessment"), *carrier.items())
        stub = pb_grpc.AssessmentServiceStub(ch)
        submission = submit(pb, stub, metadata, args.learner_id)
        graded = wait_until_graded(pb, stub, metadata, submission, args.timeout)
        trace_id = trace.format_trace_id(span.get_span_context().trace_id)
    if graded is None:
        print(f"submission {submission} was not graded within {args.timeout:g}s")
        print(f"trace id: {trace_id}")
        return 1
    keywords = ", ".join(graded.grade.matched_keywords) or "none"
    print(f"grade: {graded.grade.score:g}/{graded.grade.max_score:g} (matched keywords: {keywords})")
    print(f"trace id: {trace_id}")
    return 0


def submit(pb: Any, stub: Any, metadata: Any, learner_id: str) -> str:
    answers = [pb.MultipleChoiceAnswer(question_id=q, choice=c) for q, c in ANSWERS.items()]
    request = pb.SubmitAssignmentRequest(
        learner_id=learner_id, assignment_id=ASSIGNMENT, answers=answers, short_answer=SHORT_ANSWER
    )
    reply = stub.SubmitAssignment(request, metadata=metadata, timeout=10)
    print(f"{learner_id} submitted {ASSIGNMENT}: submission {reply.submission_id}")
    return str(reply.submission_id)


def wait_until_graded(pb: Any, stub: Any, metadata: Any, submission_id: str, timeout: float) -> Any:
    """Poll GetSubmission until it is GRADED; None if `timeout` seconds pass first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = stub.GetSubmission(
            pb.GetSubmissionRequest(submission_id=submission_id), metadata=metadata, timeout=10
        )
        if found.status == pb.Submission.STATUS_GRADED:
            return found
        time.sleep(0.2)
    return None


if __name__ == "__main__":
    sys.exit(main())
