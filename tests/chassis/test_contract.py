"""Service contracts: the RPCs a service leaves unimplemented and events without a schema are found."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from mooc.assessment.v1 import assessment_pb2 as pb
from mooc.assessment.v1 import assessment_pb2_grpc as pb_grpc
from mooc.events.v1.assessment_pb2 import SubmissionCreated
from mooc.events.v1.grading_pb2 import GradeCompleted
from mooc.grading.v1.grading_pb2 import GradeRecord

from chassis import ContractError, EventContext, Service, ServiceSettings

Context = grpc.aio.ServicerContext[Any, Any]


class HalfDone(pb_grpc.AssessmentServiceServicer):
    async def SubmitAssignment(
        self, request: pb.SubmitAssignmentRequest, context: Context
    ) -> pb.SubmitAssignmentResponse:
        return pb.SubmitAssignmentResponse()


class NotGenerated:
    async def SubmitAssignment(self, request: Any, context: Any) -> Any: ...


@pytest.fixture
def service() -> Service:
    return Service("contract-probe", ServiceSettings(app_id="contract-probe"))


def test_a_complete_service_keeps_its_contract(service: Service) -> None:
    class Done(HalfDone):
        async def GetSubmission(self, request: pb.GetSubmissionRequest, context: Context) -> pb.Submission:
            return pb.Submission()

    service.add_servicer(pb_grpc.add_AssessmentServiceServicer_to_server, Done())
    grades = service.publisher(GradeCompleted, topic="grades")

    @service.subscribe(topic="submissions", event=SubmissionCreated)
    async def handle(event: SubmissionCreated, ctx: EventContext) -> None: ...

    contract = service.contract()
    assert contract.problems() == []
    assert [api.service for api in contract.apis] == ["mooc.assessment.v1.AssessmentService"]
    assert [(flow.topic, flow.message) for flow in contract.consumes] == [("submissions", SubmissionCreated)]
    assert [(flow.topic, flow.message) for flow in contract.publishes] == [("grades", GradeCompleted)]
    assert grades.event_type == "mooc.grading.grade.completed.v1"


def test_an_rpc_left_unimplemented_is_named(service: Service) -> None:
    service.add_servicer(pb_grpc.add_AssessmentServiceServicer_to_server, HalfDone())
    assert service.contract().problems() == [
        "contract-probe: HalfDone leaves mooc.assessment.v1.AssessmentService.GetSubmission unimplemented"
    ]


def test_an_event_outside_proto_mooc_events_is_named(service: Service) -> None:
    @service.subscribe(topic="grade-records", event=GradeRecord)
    async def handle(event: GradeRecord, ctx: EventContext) -> None: ...

    [problem] = service.contract().problems()
    assert problem.startswith("contract-probe consumes 'grade-records': mooc.grading.v1.GradeRecord")
    assert "is not declared under proto/mooc/events/" in problem


def test_publishing_a_message_without_an_event_type_fails_when_declared(service: Service) -> None:
    with pytest.raises(ContractError, match=r"mooc\.assessment\.v1\.Submission declares no event type"):
        service.publisher(pb.Submission, topic="submissions")


def test_a_servicer_not_generated_from_a_proto_is_a_contract_error(service: Service) -> None:
    service.add_servicer(pb_grpc.add_AssessmentServiceServicer_to_server, NotGenerated())
    with pytest.raises(ContractError, match="NotGenerated does not derive from a generated"):
        service.contract()
