"""The grading service: scores each submission event once, keeps the grade, and announces it."""

from __future__ import annotations

import logging
from typing import Any

import grpc
from chassis import ConcurrencyError, EventContext, Retry, Service, StateRepository, load_settings
from mooc.events.v1.assessment_pb2 import SubmissionCreated
from mooc.events.v1.grading_pb2 import GradeCompleted
from mooc.grading.v1 import grading_pb2 as pb
from mooc.grading.v1 import grading_pb2_grpc as pb_grpc

from grading.scoring import grade_completed, grade_record
from grading.settings import Settings

APP_ID = "grading"
Context = grpc.aio.ServicerContext[Any, Any]
log = logging.getLogger(APP_ID)


class GradingServicer(pb_grpc.GradingServiceServicer):
    """Implements mooc.grading.v1.GradingService."""

    def __init__(self, grades: StateRepository[pb.GradeRecord]) -> None:
        self._grades = grades

    async def GetGrade(self, request: pb.GetGradeRequest, context: Context) -> pb.GradeRecord:
        stored = await self._grades.get(request.submission_id) if request.submission_id else None
        if stored is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"no grade for submission {request.submission_id!r}"
            )
        return stored.value


async def keep_first_grade(grades: StateRepository[pb.GradeRecord], record: pb.GradeRecord) -> pb.GradeRecord:
    """Store `record` unless a grade exists already (a redelivery); return the grade that stands."""
    try:
        await grades.save(record.submission_id, record, first_write=True)
        return record
    except ConcurrencyError:
        stored = await grades.get(record.submission_id)
        if stored is None:  # removed between the two calls: let the broker try again
            raise Retry(f"grade of {record.submission_id!r} vanished while being stored") from None
        return stored.value


def build_service(settings: Settings | None = None) -> Service:
    """The service with its servicer and its `submissions` subscription registered."""
    settings = settings or load_settings(Settings)
    service = Service(APP_ID, settings)
    grades = service.state(pb.GradeRecord)
    service.add_servicer(pb_grpc.add_GradingServiceServicer_to_server, GradingServicer(grades))
    announce = service.publisher(GradeCompleted, topic=settings.grades_topic)

    @service.subscribe(topic=settings.submissions_topic, event=SubmissionCreated)
    async def on_submission_created(event: SubmissionCreated, ctx: EventContext) -> None:
        record = await keep_first_grade(grades, grade_record(event, ctx.id, settings.short_answer_threshold))
        # Published again on redelivery, the same grade under the same id: consumers deduplicate by id.
        await announce.publish(grade_completed(record, event), event_id=f"grade-{record.submission_id}")
        log.info("submission %s graded %s/%s", record.submission_id, record.score, record.max_score)

    return service
