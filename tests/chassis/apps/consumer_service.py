"""A consumer built from the public chassis API, run as a real process by the routing, bulk and inbox tests.

Every handler run is appended to RECORD_FILE (one JSON object a line: handler, id, topic, type, ...),
so tests see which handler ran and how often. Topics:

- `mixed`: a custom CEL rule (high grades) first, then one handler per event type;
- `with-default`: a GradeCompleted handler and a default route;
- `typed-only`: two typed handlers and a dead-letter topic (an event of a third type is dead-lettered);
- `bulk-grades`: a bulk handler; learner "retry-once" is retried once, "drop" is dropped;
- `inbox-grades`: counts each grade in `count-<submission>` through ctx.work (effects once);
- `outbox-grades` (with CONSUMER_OUTBOX_STORE): saves a record and publishes its event through ctx.work on
  an outbox store; `outbox-out` records what that store's outbox published; `outbox-misuse` saves
  there without an event, which the chassis refuses.

CONSUMER_HANG=complete (or =mark) makes the first delivery hang right after its effects commit (or,
on an outbox store, right after the commit and before the marker), for the test to SIGKILL the app there.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Sequence
from pathlib import Path

from mooc.events.v1.assessment_pb2 import SubmissionCreated
from mooc.events.v1.grading_pb2 import GradeCompleted
from mooc.grading.v1.grading_pb2 import GradeRecord

from chassis import BulkEvent, EventContext, Service, ServiceSettings, load_settings
from chassis._inbox import Inbox, InboxMarker

settings = load_settings(ServiceSettings)
service = Service("consumer", settings)
records = service.state(GradeRecord)
RECORD_FILE = Path(os.environ["RECORD_FILE"])
HANG = os.environ.get("CONSUMER_HANG", "")
OUTBOX_STORE = os.environ.get("CONSUMER_OUTBOX_STORE", "")
HIGH = 'event.type == "mooc.grading.grade.completed.v1" && has(event.data.score) && event.data.score >= 90.0'


def record(handler: str, ctx: EventContext, **extra: object) -> None:
    write({"handler": handler, "id": ctx.id, "topic": ctx.topic, "type": ctx.type, **extra})


def write(line: dict[str, object]) -> None:
    with RECORD_FILE.open("a") as out:
        out.write(json.dumps(line) + "\n")


# ---- routes -----------------------------------------------------------------------------------------


@service.subscribe(topic="mixed", event=GradeCompleted, match=HIGH)
async def on_high_grade(event: GradeCompleted, ctx: EventContext) -> None:
    record("high", ctx, score=event.score)


@service.subscribe(topic="mixed", event=GradeCompleted)
async def on_grade(event: GradeCompleted, ctx: EventContext) -> None:
    record("grade", ctx, score=event.score)


@service.subscribe(topic="mixed", event=SubmissionCreated)
async def on_submission(event: SubmissionCreated, ctx: EventContext) -> None:
    record("submission", ctx, learner=event.learner_id)


@service.subscribe(topic="with-default", event=GradeCompleted)
async def on_default_topic_grade(event: GradeCompleted, ctx: EventContext) -> None:
    record("grade", ctx)


@service.subscribe(topic="with-default", event=SubmissionCreated, default=True)
async def on_anything_else(event: SubmissionCreated, ctx: EventContext) -> None:
    record("default", ctx)


@service.subscribe(topic="typed-only", event=GradeCompleted, dead_letter_topic="typed-only-dead")
async def on_typed_grade(event: GradeCompleted, ctx: EventContext) -> None:
    record("grade", ctx)


@service.subscribe(topic="typed-only", event=SubmissionCreated)
async def on_typed_submission(event: SubmissionCreated, ctx: EventContext) -> None:
    record("submission", ctx)


@service.subscribe(topic="typed-only-dead", event=SubmissionCreated)
async def on_dead(event: SubmissionCreated, ctx: EventContext) -> None:
    record("dead", ctx)


# ---- bulk -------------------------------------------------------------------------------------------

retried: set[str] = set()


@service.subscribe_bulk(topic="bulk-grades", event=GradeCompleted, max_messages=5, max_await_ms=300)
async def on_grades(batch: Sequence[BulkEvent[GradeCompleted]]) -> None:
    for entry in batch:
        record("bulk", entry.ctx, batch=len(batch), learner=entry.event.learner_id)
        if entry.event.learner_id == "retry-once" and entry.ctx.id not in retried:
            retried.add(entry.ctx.id)
            entry.retry("asked to retry once")
        elif entry.event.learner_id == "drop":
            entry.drop("asked to drop")
        else:
            count = GradeRecord(submission_id=entry.event.submission_id, score=1)
            entry.ctx.work.save(records, f"bulk-{entry.event.submission_id}", count, first_write=True)


# ---- inbox ------------------------------------------------------------------------------------------


@service.subscribe(topic="inbox-grades", event=GradeCompleted)
async def on_inbox_grade(event: GradeCompleted, ctx: EventContext) -> None:
    key = f"count-{event.submission_id}"
    current = await records.get(key)
    counted = GradeRecord(
        submission_id=event.submission_id, score=(current.value.score if current else 0) + 1
    )
    record("inbox", ctx, count=counted.score)
    ctx.work.save(records, key, counted, etag=current.etag if current else None, first_write=current is None)


if OUTBOX_STORE:
    outbox_records = service.state(GradeRecord, store=OUTBOX_STORE)
    announce = service.publisher(GradeCompleted, topic="outbox-out")

    @service.subscribe(topic="outbox-grades", event=GradeCompleted, store=OUTBOX_STORE)
    async def on_outbox_grade(event: GradeCompleted, ctx: EventContext) -> None:
        key = f"graded-{event.submission_id}"
        exists = await outbox_records.get(key) is not None
        record("outbox", ctx, exists=exists)
        if exists:  # a repeat after a crash between commit and marker: the effects are there
            return
        ctx.work.save(outbox_records, key, GradeRecord(submission_id=event.submission_id), first_write=True)
        ctx.work.publish(announce, event, for_key=key)

    @service.subscribe(topic="outbox-misuse", event=GradeCompleted, store=OUTBOX_STORE)
    async def on_misuse(event: GradeCompleted, ctx: EventContext) -> None:
        record("misuse", ctx)
        ctx.work.save(outbox_records, f"silent-{event.submission_id}", GradeRecord())  # no event: refused

    @service.subscribe(topic="outbox-out", event=GradeCompleted)
    async def on_outbox_out(event: GradeCompleted, ctx: EventContext) -> None:
        record("outbox-out", ctx)


# ---- fault injection: hang where a crash would leave the work done and the delivery unanswered --------

_complete, _save_alone = Inbox.complete, Inbox._save_alone


async def _complete_then_hang(self: Inbox, ctx: EventContext) -> bool:
    done = await _complete(self, ctx)
    if ctx.topic != "inbox-grades":
        return done
    record("committed", ctx)
    await asyncio.sleep(3600)
    return done


async def _hang_before_mark(self: Inbox, ctx: EventContext, marker: InboxMarker) -> bool:
    if ctx.topic != "outbox-grades":
        return await _save_alone(self, ctx, marker)
    write({"handler": "committed", "id": ctx.id})
    await asyncio.sleep(3600)
    return await _save_alone(self, ctx, marker)


if HANG == "complete":
    Inbox.complete = _complete_then_hang  # type: ignore[method-assign]
elif HANG == "mark":
    Inbox._save_alone = _hang_before_mark  # type: ignore[method-assign]


if __name__ == "__main__":
    service.run()
