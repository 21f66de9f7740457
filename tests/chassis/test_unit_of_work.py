"""Units of work against a real sidecar: a saved record and its event commit together or not at all
(Dapr's outbox), a store without the outbox is refused before any event could be lost, and misuse is
a ContractError naming the fix. Events are watched with the SDK's streaming subscription."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from dapr.aio.clients import DaprClient
from mooc.events.v1.grading_pb2 import GradeCompleted
from mooc.grading.v1.grading_pb2 import GradeRecord

from chassis import ConcurrencyError, ConfigError, ContractError, Service, ServiceSettings
from chassis.testing import Sidecar
from chassis.testing._processes import write_default_resources

TOPIC = "grades-outbox"
OUTBOX_STORE = f"""\
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: outbox
spec:
  type: state.sqlite
  version: v1
  metadata:
  - {{name: connectionString, value: state.db}}
  - {{name: outboxPublishPubsub, value: pubsub}}
  - {{name: outboxPublishTopic, value: {TOPIC}}}
"""


@pytest.fixture
async def service(
    sidecar_factory: Callable[..., Sidecar], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Service]:
    resources = write_default_resources(tmp_path / "components")
    (resources / "outbox.yaml").write_text(OUTBOX_STORE)
    sidecar = sidecar_factory("grader", resources=[resources])
    for name, value in sidecar.app_env().items():
        monkeypatch.setenv(name, value)
    grader = Service(
        "grader",
        ServiceSettings(app_id="grader", dapr_grpc_port=sidecar.grpc_port, dapr_http_port=sidecar.http_port),
    )
    yield grader
    await grader.dapr.close()


def grade(submission: str) -> GradeRecord:
    return GradeRecord(submission_id=submission, score=3, max_score=4)


async def test_a_record_and_its_event_commit_together(service: Service) -> None:
    grades = service.state(GradeRecord, store="outbox")
    announce = service.publisher(GradeCompleted, topic=TOPIC)
    async with DaprClient() as client:
        stream = await client.subscribe("pubsub", TOPIC)
        try:
            work = service.unit_of_work(store="outbox")
            work.save(grades, "s-1", grade("s-1"), first_write=True)
            work.publish(
                announce, GradeCompleted(submission_id="s-1", score=3), for_key="s-1", event_id="g-1"
            )
            await work.commit()
            message = await asyncio.wait_for(stream.next_message(), 10)
            assert (message.id(), message.type()) == ("g-1", "mooc.grading.grade.completed.v1")
            assert message.data() == {"submissionId": "s-1", "score": 3.0}
            await stream.respond_success(message)
            stored = await grades.get("s-1")
            assert stored is not None and stored.value == grade("s-1")  # the record, not the event

            # A unit that fails (first write of an existing record) stores nothing and publishes nothing.
            again = service.unit_of_work(store="outbox")
            again.save(grades, "s-1", grade("s-1"), first_write=True)
            again.publish(announce, GradeCompleted(submission_id="s-1"), for_key="s-1", event_id="g-2")
            with pytest.raises(ConcurrencyError):
                await again.commit()
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(stream.next_message(), 2)
        finally:
            await stream.close()


async def test_a_store_without_the_outbox_is_refused_before_committing(service: Service) -> None:
    grades = service.state(GradeRecord)  # `statestore`: no outbox metadata
    work = service.unit_of_work()
    work.save(grades, "s-2", grade("s-2"))
    work.publish(service.publisher(GradeCompleted, topic=TOPIC), GradeCompleted(), for_key="s-2")
    with pytest.raises(ConfigError, match="'statestore' does not enable Dapr's transactional outbox"):
        await work.commit()
    assert await grades.get("s-2") is None  # nothing written, not even the probe's record


async def test_misuse_is_a_contract_error_that_says_what_to_do(service: Service) -> None:
    outbox, plain = service.state(GradeRecord, store="outbox"), service.state(GradeRecord)
    announce = service.publisher(GradeCompleted, topic=TOPIC)
    work = service.unit_of_work(store="outbox")
    with pytest.raises(ContractError, match="save 's-3' in this unit of work first"):
        work.publish(announce, GradeCompleted(), for_key="s-3")
    with pytest.raises(ContractError, match="cannot change records in 'statestore'"):
        work.save(plain, "s-3", grade("s-3"))
    work.save(outbox, "s-3", grade("s-3"))
    work.save(outbox, "s-4", grade("s-4"))
    work.publish(announce, GradeCompleted(), for_key="s-3")
    with pytest.raises(ContractError, match="one event per saved record"):
        work.publish(announce, GradeCompleted(), for_key="s-3")
    with pytest.raises(ContractError, match="'s-4' saved without an event"):
        await work.commit()
    with pytest.raises(ContractError, match="committed already"):
        await work.commit()
