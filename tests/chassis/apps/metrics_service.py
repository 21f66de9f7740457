"""A service whose event handler's outcome is chosen by the event, for the metrics and log tests.

Events on `outcomes` are SubmissionCreated; their learner_id says what the handler does: "ok" returns,
"drop" raises Drop, "retry" raises Retry on the first delivery of its submission id and then returns.
Every handler run logs "handled <submission_id>". SubmitAssignment logs "submitting <learner>" and
publishes its submission to `outcomes`; GetSubmission always answers NOT_FOUND.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
from mooc.assessment.v1 import assessment_pb2 as api
from mooc.assessment.v1 import assessment_pb2_grpc as api_grpc
from mooc.events.v1.assessment_pb2 import SubmissionCreated

from chassis import Drop, EventContext, Retry, Service

service = Service("metrics-probe")
announce = service.publisher(SubmissionCreated, topic="outcomes")
log = logging.getLogger("metrics-probe")
seen: set[str] = set()


class Assessment(api_grpc.AssessmentServiceServicer):
    async def SubmitAssignment(
        self, request: api.SubmitAssignmentRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> api.SubmitAssignmentResponse:
        log.info("submitting %s", request.learner_id)
        submission_id = f"{request.learner_id}-{request.assignment_id}"
        event = SubmissionCreated(
            submission_id=submission_id, learner_id=request.learner_id, assignment_id=request.assignment_id
        )
        await announce.publish(event)
        return api.SubmitAssignmentResponse(submission_id=submission_id)

    async def GetSubmission(
        self, request: api.GetSubmissionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> api.Submission:
        await context.abort(grpc.StatusCode.NOT_FOUND, f"no submission {request.submission_id}")


@service.subscribe(topic="outcomes", event=SubmissionCreated)
async def on_outcome(event: SubmissionCreated, ctx: EventContext) -> None:
    log.info("handled %s", event.submission_id)
    if event.learner_id == "drop":
        raise Drop("asked to drop")
    if event.learner_id == "retry" and event.submission_id not in seen:
        seen.add(event.submission_id)
        raise Retry("asked to retry once")


service.add_servicer(api_grpc.add_AssessmentServiceServicer_to_server, Assessment())

if __name__ == "__main__":
    service.run()
