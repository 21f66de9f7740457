"""A tiny service that trusts its input: SubmitAssignment stores whatever reaches it, under its learner and
assignment ids, so a request refused at the edge provably never reached it. GetSubmission reads one back.

Every chassis service checks requests against their protovalidate rules before its handlers run.
"""

from __future__ import annotations

from typing import Any

import grpc
from mooc.assessment.v1 import assessment_pb2 as api
from mooc.assessment.v1 import assessment_pb2_grpc as api_grpc

from chassis import Service

service = Service("validated")
submissions = service.state(api.Submission)


class TrustingAssessment(api_grpc.AssessmentServiceServicer):
    async def SubmitAssignment(
        self, request: api.SubmitAssignmentRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> api.SubmitAssignmentResponse:
        submission_id = f"{request.learner_id}-{request.assignment_id}"
        submission = api.Submission(
            submission_id=submission_id,
            learner_id=request.learner_id,
            assignment_id=request.assignment_id,
            answers=request.answers,
            short_answer=request.short_answer,
        )
        await submissions.save(submission_id, submission)
        return api.SubmitAssignmentResponse(submission_id=submission_id)

    async def GetSubmission(
        self, request: api.GetSubmissionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> api.Submission:
        stored = await submissions.get(request.submission_id)
        if stored is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no submission {request.submission_id}")
        return stored.value


service.add_servicer(api_grpc.add_AssessmentServiceServicer_to_server, TrustingAssessment())

if __name__ == "__main__":
    service.run()
