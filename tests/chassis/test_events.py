"""Event contracts: the CloudEvent type comes from the proto option; data is JSON with proto field names."""

from __future__ import annotations

import json

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from mooc.assessment.v1 import assessment_pb2
from mooc.events.v1 import assessment_pb2 as events_assessment
from mooc.events.v1 import grading_pb2 as events_grading
from mooc.events.v1 import options_pb2

from chassis import ContractError, event_type_of
from chassis._events import event_to_json, message_from_json, message_to_json


def test_event_type_is_read_from_the_message_option_for_classes_and_instances() -> None:
    assert event_type_of(events_assessment.SubmissionCreated) == "mooc.assessment.submission.created.v1"
    assert event_type_of(events_grading.GradeCompleted(score=1)) == "mooc.grading.grade.completed.v1"


def test_a_message_without_the_option_is_a_contract_error_that_says_how_to_fix_it() -> None:
    with pytest.raises(
        ContractError, match=r"mooc.assessment.v1.Submission declares no event type.*event_type"
    ):
        event_type_of(assessment_pb2.Submission)


def test_the_option_is_found_on_messages_the_chassis_never_imported() -> None:
    # A message built at run time from a descriptor: proves the lookup is generic, not a registry.
    pool = descriptor_pool.Default()
    proto = descriptor_pb2.FileDescriptorProto(
        name="tests/chassis/dynamic_event.proto",
        package="tests.dynamic",
        dependency=["mooc/events/v1/options.proto"],
    )
    message = proto.message_type.add(name="CourseArchived")
    message.field.add(name="course_id", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING)
    message.options.Extensions[options_pb2.event_type] = "mooc.catalog.course.archived.v1"
    if not _known(pool, "tests.dynamic.CourseArchived"):
        pool.Add(proto)
    cls = message_factory.GetMessageClass(pool.FindMessageTypeByName("tests.dynamic.CourseArchived"))

    assert event_type_of(cls) == "mooc.catalog.course.archived.v1"


def _known(pool: descriptor_pool.DescriptorPool, name: str) -> bool:
    try:
        pool.FindMessageTypeByName(name)
    except KeyError:
        return False
    return True


def test_event_data_is_canonical_proto3_json_and_state_keeps_field_names() -> None:
    event = events_assessment.SubmissionCreated(
        submission_id="s-1", learner_id="l-1", choices={"q1": "b"}, rubric_keywords=["photosynthesis"]
    )

    as_event, as_state = json.loads(event_to_json(event)), json.loads(message_to_json(event))

    assert as_event == {
        "submissionId": "s-1",
        "learnerId": "l-1",
        "choices": {"q1": "b"},
        "rubricKeywords": ["photosynthesis"],
    }
    assert as_state == {
        "submission_id": "s-1",
        "learner_id": "l-1",
        "choices": {"q1": "b"},
        "rubric_keywords": ["photosynthesis"],
    }
    for text in (event_to_json(event), message_to_json(event)):
        assert message_from_json(text.encode(), events_assessment.SubmissionCreated) == event


def test_readers_ignore_fields_a_newer_writer_added() -> None:
    data = b'{"submission_id": "s-2", "added_in_v1_1": true}'

    assert message_from_json(data, events_assessment.SubmissionCreated).submission_id == "s-2"
