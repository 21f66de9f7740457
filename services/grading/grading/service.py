"""The grading service: scores each submission event once, keeps the grade, and announces it."""

from __future__ import annotations

import logging
from typing import Any

import grpc
from chassis import EventContext, Service, StateRepository, load_settings
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


def build_service(settings: Settings | None = None) -> Service:
    """The service with its servicer and its `submissions` subscription registered."""
    settings = settings or load_settings(Settings)
    service = Service(APP_ID, settings)
    grades = service.state(pb.GradeRecord)
    service.add_servicer(pb_grpc.add_GradingServiceServicer_to_server, GradingServicer(grades))
    announce = service.publisher(GradeCompleted, topic=settings.grades_topic)

    @service.subscribe(topic=settings.submissions_topic, event=SubmissionCreated)
    async def on_submission_created(event: SubmissionCreated, ctx: EventContext) -> None:
        # The chassis' inbox runs this once per event id; a second SubmissionCreated for the same
        # submission finds the grade that stands and announces that one again.
        stored = await grades.get(event.submission_id)
        record = stored.value if stored else grade_record(event, ctx.id, settings.short_answer_threshold)
        # Announced before the chassis commits ctx.work: a crash in between announces it again under
        # the same id, which consumers' inboxes drop. After the commit it would be lost.
        await announce.publish(grade_completed(record, event), event_id=f"grade-{record.submission_id}")
        if stored is None:  # first-write: a grade stored meanwhile aborts the commit, and the retry reads it
            ctx.work.save(grades, record.submission_id, record, first_write=True)
        log.info("submission %s graded %s/%s", record.submission_id, record.score, record.max_score)

    return service
