"""State through a real embedded sidecar: typed round trip, ETags, first write, transactions, update()."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable

import pytest
from dapr.clients import DaprClient as SyncDaprClient
from mooc.grading.v1.grading_pb2 import GradeRecord
from pydantic import BaseModel

from chassis import (
    ConcurrencyError,
    Dapr,
    Delete,
    ServiceSettings,
    StateError,
    StateRepository,
    Upsert,
)
from chassis._events import message_to_json
from chassis.testing import Sidecar


@pytest.fixture
def sidecar(sidecar_factory: Callable[..., Sidecar]) -> Sidecar:
    return sidecar_factory("grading")


@pytest.fixture
async def dapr(sidecar: Sidecar) -> AsyncIterator[Dapr]:
    # No DAPR_* variables: the settings alone must lead the SDK client (and its health probe) there.
    settings = ServiceSettings(
        app_id="grading", dapr_grpc_port=sidecar.grpc_port, dapr_http_port=sidecar.http_port
    )
    async with Dapr(settings) as opened:
        yield opened


@pytest.fixture
def grades(dapr: Dapr) -> StateRepository[GradeRecord]:
    return StateRepository(dapr, GradeRecord, "statestore")


def record(submission: str, score: float = 1.0) -> GradeRecord:
    return GradeRecord(submission_id=submission, score=score, max_score=3, matched_keywords=["light"])


async def test_a_saved_message_reads_back_equal_with_an_etag(grades: StateRepository[GradeRecord]) -> None:
    assert await grades.get("s-1") is None

    await grades.save("s-1", record("s-1"))
    stored = await grades.get("s-1")

    assert stored is not None
    assert stored.value == record("s-1")
    assert stored.etag


async def test_records_are_stored_as_json_with_proto_field_names(
    grades: StateRepository[GradeRecord], sidecar: Sidecar, monkeypatch: pytest.MonkeyPatch
) -> None:
    await grades.save("s-json", record("s-json", 2))
    monkeypatch.setenv("DAPR_HTTP_PORT", str(sidecar.http_port))  # the blocking client's health probe

    with SyncDaprClient(address=f"127.0.0.1:{sidecar.grpc_port}") as reader:
        raw = reader.get_state("statestore", "s-json").data

    assert json.loads(raw) == {
        "submission_id": "s-json",
        "score": 2.0,
        "max_score": 3.0,
        "matched_keywords": ["light"],
    }


async def test_a_stale_etag_is_a_concurrency_error_and_changes_nothing(
    grades: StateRepository[GradeRecord],
) -> None:
    await grades.save("s-2", record("s-2", 1))
    first = await grades.get("s-2")
    assert first is not None
    await grades.save("s-2", record("s-2", 2), etag=first.etag)

    with pytest.raises(ConcurrencyError, match="s-2"):
        await grades.save("s-2", record("s-2", 3), etag=first.etag)

    current = await grades.get("s-2")
    assert current is not None and current.value.score == 2


async def test_first_write_only_creates(grades: StateRepository[GradeRecord]) -> None:
    await grades.save("s-3", record("s-3", 1), first_write=True)

    with pytest.raises(ConcurrencyError):
        await grades.save("s-3", record("s-3", 2), first_write=True)


async def test_delete_honours_the_etag(grades: StateRepository[GradeRecord]) -> None:
    await grades.save("s-4", record("s-4"))
    stored = await grades.get("s-4")
    assert stored is not None
    await grades.save("s-4", record("s-4", 2))

    with pytest.raises(ConcurrencyError):
        await grades.delete("s-4", etag=stored.etag)
    await grades.delete("s-4")

    assert await grades.get("s-4") is None


async def test_a_transaction_applies_all_or_nothing(grades: StateRepository[GradeRecord]) -> None:
    await grades.save("old", record("old"))
    await grades.transact([Upsert("t-1", record("t-1")), Upsert("t-2", record("t-2")), Delete("old")])
    assert [await grades.get(k) is not None for k in ("t-1", "t-2", "old")] == [True, True, False]

    with pytest.raises(ConcurrencyError):
        await grades.transact(
            [Upsert("t-3", record("t-3")), Upsert("t-1", record("t-1", 9), first_write=True)]
        )

    assert await grades.get("t-3") is None
    stored = await grades.get("t-1")
    assert stored is not None and stored.value.score == 1


async def test_concurrent_updates_all_land(grades: StateRepository[GradeRecord]) -> None:
    def add_point(current: GradeRecord | None) -> GradeRecord:
        base = current or GradeRecord(submission_id="u-1")
        return GradeRecord(submission_id=base.submission_id, score=base.score + 1)

    await asyncio.gather(*(grades.update("u-1", add_point, attempts=20) for _ in range(8)))

    stored = await grades.get("u-1")
    assert stored is not None and stored.value.score == 8


async def test_update_gives_up_after_its_attempts(
    grades: StateRepository[GradeRecord], sidecar: Sidecar, monkeypatch: pytest.MonkeyPatch
) -> None:
    await grades.save("u-2", record("u-2", 0))
    calls = 0
    monkeypatch.setenv("DAPR_HTTP_PORT", str(sidecar.http_port))  # the blocking client's health probe
    # Another writer (a second, blocking SDK client) changes the record between every read and write.
    with SyncDaprClient(address=f"127.0.0.1:{sidecar.grpc_port}") as other_writer:

        def always_loses_the_race(current: GradeRecord | None) -> GradeRecord:
            nonlocal calls
            calls += 1
            other_writer.save_state("statestore", "u-2", message_to_json(record("u-2", 100 + calls)))
            assert current is not None
            return GradeRecord(submission_id="u-2", score=current.score + 1)

        with pytest.raises(ConcurrencyError):
            await grades.update("u-2", always_loses_the_race, attempts=3)

    assert calls == 3
    stored = await grades.get("u-2")
    assert stored is not None and stored.value.score == 103


class Enrolment(BaseModel):
    """A pydantic record: repositories store pydantic models as well as proto messages."""

    learner_id: str
    course_id: str
    progress: float = 0.0


async def test_pydantic_models_round_trip_and_update(dapr: Dapr) -> None:
    enrolments = StateRepository(dapr, Enrolment, "statestore")
    await enrolments.save("e-1", Enrolment(learner_id="l-1", course_id="py-101"))
    stored = await enrolments.get("e-1")
    assert stored is not None and stored.value == Enrolment(learner_id="l-1", course_id="py-101")
    moved = await enrolments.update("e-1", lambda e: (e or stored.value).model_copy(update={"progress": 0.5}))
    assert moved.progress == 0.5
    again = await enrolments.get("e-1")
    assert again is not None and again.value == moved


async def test_a_record_of_another_shape_is_a_state_error(
    dapr: Dapr, grades: StateRepository[GradeRecord]
) -> None:
    await grades.save("not-an-enrolment", record("s-1"))
    with pytest.raises(StateError, match="'not-an-enrolment' in 'statestore' is not a Enrolment"):
        await StateRepository(dapr, Enrolment, "statestore").get("not-an-enrolment")


async def test_get_many_reads_what_exists_in_one_call(grades: StateRepository[GradeRecord]) -> None:
    await grades.save("bulk-1", record("bulk-1", 1.0))
    await grades.save("bulk-2", record("bulk-2", 2.0))
    found = await grades.get_many(["bulk-1", "bulk-2", "bulk-missing"])
    assert sorted(found) == ["bulk-1", "bulk-2"]
    assert found["bulk-2"].value.score == 2.0 and found["bulk-2"].etag
    assert await grades.get_many([]) == {}


async def test_ttl_makes_the_store_forget_a_record(grades: StateRepository[GradeRecord]) -> None:
    await grades.save("short-lived", record("short-lived"), ttl_seconds=1)
    assert await grades.get("short-lived") is not None
    await asyncio.sleep(1.5)
    assert await grades.get("short-lived") is None
    with pytest.raises(StateError, match="ttl_seconds must be positive"):
        await grades.save("never", record("never"), ttl_seconds=0)
    await grades.transact([Upsert("tx-short", record("tx-short"), ttl_seconds=1)])
    await asyncio.sleep(1.5)
    assert await grades.get("tx-short") is None
