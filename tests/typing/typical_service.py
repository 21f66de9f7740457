"""Typical service code, written against the chassis API only; `mypy --strict` must accept it as is.

A learner-progress service: it keeps a tally of each learner's grades, fed by `GradeCompleted`
events, reads a grade from the grading service through the sidecar, and announces nothing itself.
tests/typing/test_typing.py type-checks this file (and a copy with mistakes, which must fail).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from mooc.events.v1.assessment_pb2 import SubmissionCreated
from mooc.events.v1.grading_pb2 import GradeCompleted
from mooc.grading.v1.grading_pb2 import GetGradeRequest, GradeRecord
from mooc.grading.v1.grading_pb2_grpc import GradingServiceStub
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from chassis import (
    BulkEvent,
    Call,
    ConcurrencyError,
    Drop,
    EventContext,
    Next,
    Retry,
    Service,
    ServiceSettings,
    StateRepository,
    invoke,
    load_settings,
)

log = logging.getLogger("progress")


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="PROGRESS_", extra="ignore", populate_by_name=True)

    grades_topic: str = Field("grades", min_length=1)


def add_grade(tally: GradeRecord | None, grade: GradeCompleted) -> GradeRecord:
    """The learner's running total with `grade` added (a pure function: `update` may call it twice)."""
    total = GradeRecord() if tally is None else tally
    total.submission_id = grade.learner_id
    total.score += grade.score
    total.max_score += grade.max_score
    return total


async def record(tallies: StateRepository[GradeRecord], grade: GradeCompleted) -> float:
    if not grade.learner_id:
        raise Drop("a grade without a learner cannot be tallied")
    try:
        tally = await tallies.update(grade.learner_id, lambda current: add_grade(current, grade))
    except ConcurrencyError as err:
        raise Retry("the tally kept changing under us") from err
    return tally.score / tally.max_score if tally.max_score else 0.0


async def grade_of(submission_id: str) -> GradeRecord:
    async with invoke.channel("grading") as channel:
        stub = GradingServiceStub(channel)
        reply: GradeRecord = await stub.GetGrade(GetGradeRequest(submission_id=submission_id), timeout=5)
        return reply


async def audited(call: Call, call_next: Next) -> object:
    """Middleware: every consumed event is logged with its id before the handler sees it."""
    if call.kind == "consume" and call.event is not None:
        log.info("event %s on %s", call.event.id, call.name)
    return await call_next(call)


def build_service(settings: Settings | None = None) -> Service:
    settings = settings or load_settings(Settings)
    service = Service("progress", settings)
    service.use(audited)
    tallies = service.state(GradeRecord)
    resubmit = service.publisher(SubmissionCreated, topic="resubmissions")

    @service.subscribe(topic=settings.grades_topic, event=GradeCompleted)
    async def on_grade(event: GradeCompleted, ctx: EventContext) -> None:
        share = await record(tallies, event)
        log.info("learner %s is at %.0f%% after event %s", event.learner_id, share * 100, ctx.id)
        if event.max_score and event.score / event.max_score < 0.5:
            again = SubmissionCreated(learner_id=event.learner_id, assignment_id=event.assignment_id)
            await resubmit.publish(again, event_id=f"resubmit-{event.submission_id}")

    @service.subscribe_bulk(topic="grades-archive", event=GradeCompleted, max_messages=50)
    async def archive(batch: Sequence[BulkEvent[GradeCompleted]]) -> None:
        for item in batch:
            if not item.event.submission_id:
                item.drop("a grade without its submission cannot be archived")
                continue
            # Saved with the inbox marker of this event, in one transaction: once per event.
            record = GradeRecord(submission_id=item.event.submission_id, score=item.event.score)
            item.ctx.work.save(tallies, f"archived-{item.event.submission_id}", record)

    return service
