"""{{ cookiecutter.service_name }} as it runs: a real sidecar and the service as processes.

Calls go through the sidecar with `dapr-app-id` (Dapr gRPC proxying); records live in its state store.
"""

from __future__ import annotations

import grpc
import pytest
from chassis.testing import ServiceUnderTest, StartService
from mooc.{{ cookiecutter.service_slug }}.v1 import {{ cookiecutter.service_slug }}_pb2 as pb
from mooc.{{ cookiecutter.service_slug }}.v1 import {{ cookiecutter.service_slug }}_pb2_grpc as pb_grpc

Stub = pb_grpc.{{ cookiecutter.service_pascal }}ServiceStub


@pytest.fixture
def service(chassis_service: StartService) -> ServiceUnderTest:
    """`python -m {{ cookiecutter.service_slug }}` beside its own sidecar, stopped after the test."""
    return chassis_service("{{ cookiecutter.service_slug }}")


@pytest.fixture
def stub(service: ServiceUnderTest) -> Stub:
    """Talks to the sidecar, never to the service directly."""
    return service.stub(Stub)


async def test_a_record_put_is_read_back(service: ServiceUnderTest, stub: Stub) -> None:
    record = pb.Record(record_id="r-1", title="first", attributes={"course": "intro-python"})
    reply = await stub.PutRecord(pb.PutRecordRequest(record=record))
    assert reply.record_id == "r-1"
    assert await stub.GetRecord(pb.GetRecordRequest(record_id="r-1")) == record
    assert await service.wait_for_state(pb.Record, "r-1") == record  # in the state store, under its id


async def test_bad_requests_get_clear_statuses(stub: Stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.GetRecord(pb.GetRecordRequest(record_id="nope"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as invalid:
        await stub.PutRecord(pb.PutRecordRequest(record=pb.Record()))
    assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "record_id is required" in (invalid.value.details() or "")
