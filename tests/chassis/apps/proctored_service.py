"""A service whose SubmitAssignment is proctored, for the proctoring tests.

PROCTORED_METHOD names the RPC to proctor (default SubmitAssignment); PROCTORED_GATE=1 gates it.
SubmitAssignment appends the learner to HANDLED_LOG when it runs, sleeps 0.2 s for a learner named
"slow-*", and refuses a learner named "invalid-*" (INVALID_ARGUMENT). GetSubmission is not proctored.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import grpc
from mooc.assessment.v1 import assessment_pb2 as api
from mooc.assessment.v1 import assessment_pb2_grpc as api_grpc

from chassis import Service

service = Service("proctored")
HANDLED_LOG = os.environ["HANDLED_LOG"]


def handled(learner: str) -> None:
    with open(HANDLED_LOG, "a") as log:
        log.write(learner + "\n")


class Assessment(api_grpc.AssessmentServiceServicer):
    async def SubmitAssignment(
        self, request: api.SubmitAssignmentRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> api.SubmitAssignmentResponse:
        handled(request.learner_id)
        if request.learner_id.startswith("slow-"):
            await asyncio.sleep(0.2)
        if request.learner_id.startswith("invalid-"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no such assignment")
        return api.SubmitAssignmentResponse(submission_id=f"{request.learner_id}-{request.assignment_id}")

    async def GetSubmission(
        self, request: api.GetSubmissionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> api.Submission:
        return api.Submission(submission_id=request.submission_id)


service.add_servicer(api_grpc.add_AssessmentServiceServicer_to_server, Assessment())
service.proctor(
    os.environ.get("PROCTORED_METHOD", "SubmitAssignment"), gate=os.environ.get("PROCTORED_GATE") == "1"
)

if __name__ == "__main__":
    service.run()
