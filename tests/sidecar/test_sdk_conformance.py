"""The official Dapr SDK against the embedded sidecar: state, errors, metadata and lifecycle as daprd.

Every case runs once per component profile (dapr/components/embedded, dapr/components/redis).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
import yaml
from conftest import SidecarStarter
from dapr.aio.clients import DaprClient as AsyncDaprClient
from dapr.clients import DaprClient
from dapr.clients.exceptions import DaprGrpcError
from dapr.clients.grpc._request import TransactionalStateOperation, TransactionOperationType
from dapr.clients.grpc._state import Concurrency, StateItem, StateOptions
from dapr.proto import api_service_v1, api_v1, common_v1
from redis_support import delete_containing, require_redis, unique
from sidecar_support import REPO, RunningSidecar, http_status, wait_until

UseSidecar = Callable[[RunningSidecar], None]


def redis_components(folder: Path, key_prefix: str) -> Path:
    """The dapr/components/redis profile, its state keys under `key_prefix` (the server is shared)."""
    folder.mkdir()
    for source in (REPO / "dapr" / "components" / "redis").glob("*.yaml"):
        doc = yaml.safe_load(source.read_text())
        if doc["spec"]["type"].startswith("state."):
            doc["spec"]["metadata"].append({"name": "keyPrefix", "value": key_prefix})
        (folder / source.name).write_text(yaml.safe_dump(doc))
    return folder


@pytest.fixture(params=["embedded", "redis"])
def sidecar(
    request: pytest.FixtureRequest, start_sidecar: SidecarStarter, dapr_env: UseSidecar, tmp_path: Path
) -> Iterator[RunningSidecar]:
    if request.param == "embedded":
        running = start_sidecar("conformance")
        dapr_env(running)
        yield running
        return
    require_redis()
    prefix = unique("conformance")
    try:
        running = start_sidecar("conformance", resources=[redis_components(tmp_path / "redis", prefix)])
        dapr_env(running)
        yield running
    finally:
        delete_containing(prefix)


async def test_state_round_trip_and_missing_key(sidecar: RunningSidecar) -> None:
    async with AsyncDaprClient() as client:
        await client.save_state("statestore", "course-1", b'{"title":"Intro"}')
        found = await client.get_state("statestore", "course-1")
        missing = await client.get_state("statestore", "no-such-key")
        await client.delete_state("statestore", "course-1", etag=found.etag)
        gone = await client.get_state("statestore", "course-1")
    assert found.data == b'{"title":"Intro"}' and found.etag
    assert (missing.data, missing.etag) == (b"", "")  # daprd: missing is empty, not an error
    assert gone.data == b""


def test_etag_mismatch_is_aborted(sidecar: RunningSidecar) -> None:
    with DaprClient() as client:
        client.save_state("statestore", "k", "v1")
        etag = client.get_state("statestore", "k").etag
        client.save_state("statestore", "k", "v2", etag=etag)
        with pytest.raises(DaprGrpcError) as stale:
            client.save_state("statestore", "k", "v3", etag=etag)
        with pytest.raises(DaprGrpcError) as stale_delete:
            client.delete_state("statestore", "k", etag=etag)
        assert client.get_state("statestore", "k").data == b"v2"
    assert stale.value.code() == grpc.StatusCode.ABORTED
    assert stale.value.details().startswith("failed saving state in state store statestore: ")
    assert stale_delete.value.code() == grpc.StatusCode.ABORTED


def test_first_write_without_etag_is_create_only(sidecar: RunningSidecar) -> None:
    first_write = StateOptions(concurrency=Concurrency.first_write)
    with DaprClient() as client:
        client.save_state("statestore", "once", "a", options=first_write)
        with pytest.raises(DaprGrpcError) as again:
            client.save_state("statestore", "once", "b", options=first_write)
        assert client.get_state("statestore", "once").data == b"a"
    assert again.value.code() == grpc.StatusCode.ABORTED


def test_bulk_save_is_atomic(sidecar: RunningSidecar) -> None:
    with DaprClient() as client:
        client.save_bulk_state("statestore", [StateItem("b1", "x"), StateItem("b2", "y")])
        with pytest.raises(DaprGrpcError):
            client.save_bulk_state("statestore", [StateItem("b3", "z"), StateItem("b1", "w", etag="bogus")])
        values = [client.get_state("statestore", key).data for key in ("b1", "b2", "b3")]
    assert values == [b"x", b"y", b""]


async def test_transaction_is_atomic(sidecar: RunningSidecar) -> None:
    upsert, delete = TransactionOperationType.upsert, TransactionOperationType.delete
    async with AsyncDaprClient() as client:
        await client.save_state("statestore", "t-old", "old")
        await client.execute_state_transaction(
            "statestore",
            [
                TransactionalStateOperation("t-new", "new", operation_type=upsert),
                TransactionalStateOperation("t-old", operation_type=delete),
            ],
        )
        with pytest.raises(DaprGrpcError) as failed:
            await client.execute_state_transaction(
                "statestore",
                [
                    TransactionalStateOperation("t-partial", "never", operation_type=upsert),
                    # Numeric, so that Redis (integer ETags) sees a stale ETag rather than a malformed one.
                    TransactionalStateOperation("t-new", "x", etag="999999", operation_type=upsert),
                ],
            )
        assert (await client.get_state("statestore", "t-new")).data == b"new"
        assert (await client.get_state("statestore", "t-old")).data == b""
        assert (await client.get_state("statestore", "t-partial")).data == b""  # nothing of it was written
    assert failed.value.code() == grpc.StatusCode.ABORTED
    assert failed.value.details().startswith("error while executing state transaction: ")


def test_illegal_key_has_daprd_rich_details(sidecar: RunningSidecar) -> None:
    with DaprClient() as client, pytest.raises(DaprGrpcError) as illegal:
        client.save_state("statestore", "a||b", "v")
    error = illegal.value
    details = error.status_details()
    message = "input key/keyPrefix 'a||b' can't contain '||'"
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details() == message
    assert error.error_code() == "DAPR_STATE_ILLEGAL_KEY"
    assert details.error_info["domain"] == "dapr.io"
    assert details.resource_info["resource_type"] == "state"
    assert details.resource_info["resource_name"] == "statestore"
    assert details.bad_request["field_violations"] == [{"field": "a||b", "description": message}]


def test_ttl_reports_expire_time(sidecar: RunningSidecar) -> None:
    # The SDK's StateResponse drops response metadata, so read it with the SDK's generated stub.
    with grpc.insecure_channel(f"127.0.0.1:{sidecar.grpc_port}") as channel:
        stub = api_service_v1.DaprStub(channel)
        item = common_v1.StateItem(key="ttl", value=b"v", metadata={"ttlInSeconds": "120"})
        stub.SaveState(api_v1.SaveStateRequest(store_name="statestore", states=[item]))
        reply = stub.GetState(api_v1.GetStateRequest(store_name="statestore", key="ttl"))
    expires = datetime.fromisoformat(reply.metadata["ttlExpireTime"].replace("Z", "+00:00"))
    assert 100 < (expires - datetime.now(UTC)).total_seconds() <= 121


def test_unknown_components_and_empty_topic(sidecar: RunningSidecar) -> None:
    with DaprClient() as client:
        with pytest.raises(DaprGrpcError) as no_store:
            client.save_state("nostore", "k", "v")
        with pytest.raises(DaprGrpcError) as no_pubsub:
            client.publish_event("nopubsub", "topic", "data")
        with pytest.raises(DaprGrpcError) as no_topic:
            client.publish_event("pubsub", "", "data")
    assert (no_store.value.code(), no_store.value.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "state store nostore is not found",
    )
    assert (no_pubsub.value.code(), no_pubsub.value.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "pubsub nopubsub is not found",
    )
    assert no_pubsub.value.error_code() == "DAPR_PUBSUB_NOT_FOUND"
    assert no_topic.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert no_topic.value.details() == "topic is empty in pubsub pubsub"


def test_other_rpcs_are_unimplemented(sidecar: RunningSidecar) -> None:
    with DaprClient() as client, pytest.raises(grpc.RpcError) as secret:
        client.get_secret("secretstore", "key")
    assert secret.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert secret.value.details() == "GetSecret is not implemented by the embedded sidecar"


async def test_metadata_lists_components_and_extended(
    sidecar: RunningSidecar, request: pytest.FixtureRequest
) -> None:
    kind = {"embedded": "sqlite", "redis": "redis"}[request.node.callspec.params["sidecar"]]
    async with AsyncDaprClient() as client:
        await client.set_metadata("owner", "tests")
        metadata = await client.get_metadata()
    components = {c.name: (c.type, c.version, list(c.capabilities)) for c in metadata.registered_components}
    assert metadata.application_id == "conformance"
    assert components == {
        "statestore": (f"state.{kind}", "v1", ["ETAG", "TRANSACTIONAL", "TTL"]),
        "pubsub": (f"pubsub.{kind}", "v1", []),
    }
    assert metadata.extended_metadata["owner"] == "tests"
    assert http_status(sidecar.http_port, "/v1.0/healthz") == 204  # no app port: nothing to wait for


def test_shutdown_api_stops_the_sidecar(sidecar: RunningSidecar) -> None:
    with DaprClient() as client:
        client.shutdown()
    assert sidecar.popen is not None
    assert sidecar.popen.wait(15) == 0
    assert "stopped" in wait_until(sidecar.log, what="stop logged")
