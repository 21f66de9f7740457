"""A tiny service built only from the public chassis API; the chassis tests run it as a real process.

SubmitAssignment publishes SubmissionCreated; the handler fails PROBE_FAIL_FIRST deliveries with Retry,
then stores the submission as graded with the number of deliveries it took (and, under
`deliveries-<id>`, the CloudEvent id, type and source it saw). GetSubmission reads it back
(after PROBE_SLOW_SECONDS, for the drain test).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc
from mooc.assessment.v1 import assessment_pb2 as api
from mooc.assessment.v1 import assessment_pb2_grpc as api_grpc
from mooc.events.v1.assessment_pb2 import SubmissionCreated
from mooc.grading.v1.grading_pb2 import GradeRecord
from pydantic_settings import SettingsConfigDict

from chassis import EventContext, Retry, Service, ServiceSettings, load_settings


class ProbeSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="PROBE_")

    fail_first: int = 1
    slow_seconds: float = 0.0


settings = load_settings(ProbeSettings)
service = Service("probe", settings)
submissions = service.state(api.Submission)
deliveries = service.state(GradeRecord)
announce = service.publisher(SubmissionCreated, topic="submissions")
log = logging.getLogger("probe")


class Assessment(api_grpc.AssessmentServiceServicer):
    async def SubmitAssignment(
        self, request: api.SubmitAssignmentRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> api.SubmitAssignmentResponse:
        submission_id = f"{request.learner_id}-{request.assignment_id}"
        event = SubmissionCreated(
            submission_id=submission_id, learner_id=request.learner_id, assignment_id=request.assignment_id
        )
        await announce.publish(event, event_id=f"submitted-{submission_id}")
        return api.SubmitAssignmentResponse(submission_id=submission_id)

    async def GetSubmission(
        self, request: api.GetSubmissionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> api.Submission:
        if settings.slow_seconds:
            log.info("slow call started")
            await asyncio.sleep(settings.slow_seconds)
        stored = await submissions.get(request.submission_id)
        if stored is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no submission {request.submission_id}")
        return stored.value


@service.subscribe(topic="submissions", event=SubmissionCreated)
async def on_submission_created(event: SubmissionCreated, ctx: EventContext) -> None:
    def count(current: GradeRecord | None) -> GradeRecord:
        seen = current.score if current else 0
        # What the delivery carried, for the tests to check: CloudEvent id, type and source.
        return GradeRecord(
            submission_id=event.submission_id,
            score=seen + 1,
            source_event_id=ctx.id,
            matched_keywords=[ctx.type, ctx.source],
        )

    attempt = await deliveries.update(f"deliveries-{event.submission_id}", count)
    if attempt.score <= settings.fail_first:
        raise Retry(f"delivery {attempt.score:g} of {event.submission_id}: asked to fail")
    graded = api.Submission(
        submission_id=event.submission_id,
        learner_id=event.learner_id,
        assignment_id=event.assignment_id,
        status=api.Submission.STATUS_GRADED,
        grade=api.Grade(score=attempt.score),
    )
    await submissions.save(event.submission_id, graded)


service.add_servicer(api_grpc.add_AssessmentServiceServicer_to_server, Assessment())

if __name__ == "__main__":
    service.run()
