"""Several handlers on one topic: routing rules the sidecar evaluates, dispatch by the route's path.

Declarations are checked where they are made; deliveries go through a real sidecar to
tests/chassis/apps/consumer_service.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from consumer_kit import Consumer, start_consumer
from mooc.events.v1.assessment_pb2 import SubmissionCreated
from mooc.events.v1.grading_pb2 import GradeCompleted

from chassis import BulkEvent, ConfigError, EventContext, Service, ServiceSettings
from chassis.testing import AppProcess, Sidecar

GRADE_TYPE = "mooc.grading.grade.completed.v1"
SUBMISSION_TYPE = "mooc.assessment.submission.created.v1"


async def handle_grade(event: GradeCompleted, ctx: EventContext) -> None: ...


async def handle_submission(event: SubmissionCreated, ctx: EventContext) -> None: ...


async def handle_batch(batch: Sequence[BulkEvent[GradeCompleted]]) -> None: ...


@pytest.fixture
def service() -> Service:
    return Service("routes", ServiceSettings(app_id="routes"))


@pytest.fixture
def consumer(
    sidecar_factory: Callable[..., Sidecar], app_factory: Callable[..., AppProcess], tmp_path: Path
) -> Consumer:
    return start_consumer(sidecar_factory, app_factory, tmp_path)


def test_handlers_of_one_topic_are_declared_as_rules_in_order(service: Service) -> None:
    service.subscribe(topic="t", event=GradeCompleted, match="event.data.score > 3.0")(handle_grade)
    service.subscribe(topic="t", event=GradeCompleted)(handle_grade)
    service.subscribe(topic="t", event=SubmissionCreated, default=True)(handle_submission)
    service.subscribe(topic="alone", event=GradeCompleted, dead_letter_topic="alone-dead")(handle_grade)

    listed = {s.topic: s for s in service._subscriptions.as_response().subscriptions}

    assert [(r.match, r.path) for r in listed["t"].routes.rules] == [
        ("event.data.score > 3.0", "route-0"),
        (f'event.type == "{GRADE_TYPE}"', "route-1"),
    ]
    assert listed["t"].routes.default == "default"
    # A topic's only handler takes all its events: the default route, path "" for a gRPC app.
    assert (list(listed["alone"].routes.rules), listed["alone"].routes.default) == ([], "")
    assert listed["alone"].dead_letter_topic == "alone-dead"


def test_two_handlers_for_the_same_route_are_a_config_error(service: Service) -> None:
    service.subscribe(topic="t", event=GradeCompleted)(handle_grade)
    with pytest.raises(ConfigError, match=rf"already has a handler for 'event.type == \"{GRADE_TYPE}\"'"):
        service.subscribe(topic="t", event=GradeCompleted)(handle_grade)
    service.subscribe(topic="t", event=SubmissionCreated, default=True)(handle_submission)
    with pytest.raises(ConfigError, match="already has a handler for the default route"):
        service.subscribe(topic="t", event=GradeCompleted, default=True)(handle_grade)
    with pytest.raises(ConfigError, match="either the default route or has a match"):
        service.subscribe(topic="u", event=GradeCompleted, match="true", default=True)(handle_grade)
    with pytest.raises(ConfigError, match="different dead-letter topics"):
        service.subscribe(topic="t", event=GradeCompleted, match="true", dead_letter_topic="x")(handle_grade)
        service.subscribe(topic="t", event=GradeCompleted, match="false", dead_letter_topic="y")(handle_grade)


def test_a_bulk_handler_takes_its_topic_alone(service: Service) -> None:
    service.subscribe(topic="t", event=GradeCompleted)(handle_grade)
    with pytest.raises(ConfigError, match="a bulk handler takes all of a topic's events"):
        service.subscribe_bulk(topic="t", event=GradeCompleted)(handle_batch)
    service.subscribe_bulk(topic="b", event=GradeCompleted)(handle_batch)
    with pytest.raises(ConfigError, match="has a bulk handler"):
        service.subscribe(topic="b", event=GradeCompleted)(handle_grade)
    with pytest.raises(ConfigError, match="must be positive"):
        service.subscribe_bulk(topic="c", event=GradeCompleted, max_messages=0)(handle_batch)


async def test_events_reach_the_handler_of_their_type_or_rule(consumer: Consumer) -> None:
    await consumer.publish(GradeCompleted(submission_id="s1", score=95), topic="mixed", event_id="high")
    await consumer.publish(GradeCompleted(submission_id="s2", score=40), topic="mixed", event_id="low")
    await consumer.publish(SubmissionCreated(learner_id="l-1"), topic="mixed", event_id="sub")

    assert [r["handler"] for r in await consumer.wait_seen(1, id="high")] == ["high"]  # the first rule wins
    assert [r["handler"] for r in await consumer.wait_seen(1, id="low")] == ["grade"]
    [submission] = await consumer.wait_seen(1, id="sub")
    assert (submission["handler"], submission["learner"], submission["type"]) == (
        "submission",
        "l-1",
        SUBMISSION_TYPE,
    )


async def test_the_default_route_takes_what_no_rule_selects(consumer: Consumer) -> None:
    await consumer.publish(GradeCompleted(submission_id="s1"), topic="with-default", event_id="typed")
    await consumer.publish(
        SubmissionCreated(learner_id="l-1"),
        topic="with-default",
        event_id="other",
        event_type="mooc.other.v1",
    )

    assert [r["handler"] for r in await consumer.wait_seen(1, id="typed")] == ["grade"]
    assert [r["handler"] for r in await consumer.wait_seen(1, id="other")] == ["default"]


async def test_an_event_no_rule_selects_is_dropped_by_the_sidecar_to_the_dead_letter_topic(
    consumer: Consumer,
) -> None:
    await consumer.publish(
        SubmissionCreated(learner_id="l-1"), topic="typed-only", event_id="stray", event_type="mooc.other.v1"
    )
    await consumer.publish(GradeCompleted(submission_id="s1"), topic="typed-only", event_id="typed")

    [dead] = await consumer.wait_seen(1, id="stray")
    assert (dead["handler"], dead["topic"]) == ("dead", "typed-only-dead")  # no typed handler ran
    assert [r["handler"] for r in await consumer.wait_seen(1, id="typed")] == ["grade"]
    assert "no matching route for event stray" in consumer.sidecar.log() or consumer.seen(id="stray") == [
        dead
    ]


async def test_without_a_dead_letter_topic_an_event_no_rule_selects_reaches_no_handler(
    consumer: Consumer,
) -> None:
    await consumer.publish(
        SubmissionCreated(learner_id="l-1"), topic="mixed", event_id="lost", event_type="mooc.other.v1"
    )
    await consumer.publish(GradeCompleted(submission_id="s1"), topic="mixed", event_id="after")

    await consumer.wait_seen(1, id="after")
    await asyncio.sleep(1.5)  # a redelivery would come after 1s (redeliverInterval): it does not
    assert consumer.seen(id="lost") == []
