"""The official Dapr SDK against the embedded sidecar: state, errors, metadata and lifecycle as daprd.

Every case runs once per component profile: each folder under dapr/components/ holding a state store
and a pub/sub. The servers a profile needs follow from its component types (SERVERS); each test gets
its own keys / tables, so runs sharing a server do not see each other.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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
from kafka_support import TansuServer
from nats_support import START_NATS
from postgres_support import START_POSTGRES, drop_tables, unique_table
from rabbitmq_support import START_RABBITMQ
from redis_support import START_REDIS, delete_containing, unique
from sidecar_support import REPO, RunningSidecar, http_status, wait_until

from chassis.sidecar._resources import DRIVERS, YAML_SUFFIXES
from chassis.testing import requires_server

UseSidecar = Callable[[RunningSidecar], None]
PROFILES = REPO / "dapr" / "components"


@dataclass(frozen=True)
class Server:
    """A local server a component type needs: skip (fail under CI) with how to start it when down."""

    name: str
    port: int
    how_to_start: str
    host: str = "127.0.0.1"

    def require(self) -> None:
        requires_server(self.name, self.host, self.port, self.how_to_start)


# Component type (after `state.` / `pubsub.`) -> the server it talks to; embedded types need none.
SERVERS = {
    "redis": Server("Redis", 6379, START_REDIS),
    "postgresql": Server("PostgreSQL", 5432, START_POSTGRES),
    "rabbitmq": Server("RabbitMQ", 5672, START_RABBITMQ),
    "jetstream": Server("NATS JetStream", 4222, START_NATS),
    "mqtt3": Server("Mosquitto", 1883, "mosquitto -d -p 1883"),
    "kafka": TansuServer(),  # started on demand (kafka_support), never skipped
}


def _components(folder: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Every Component document of a profile folder, with the file it came from."""
    found = []
    for path in sorted(p for p in folder.iterdir() if p.suffix in YAML_SUFFIXES):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "Component":
                found.append((path, doc))
    return found


def _is_profile(folder: Path) -> bool:
    """A folder is a profile once it declares a state store and a pub/sub (one may still be in the works)."""
    kinds = {str(doc["spec"]["type"]).split(".", 1)[0] for _, doc in _components(folder)}
    return folder.is_dir() and {"state", "pubsub"} <= kinds


PROFILE_NAMES = sorted(p.name for p in PROFILES.iterdir() if _is_profile(p))


class Isolation:
    """Per-test names inside shared servers, and their removal afterwards."""

    def __init__(self) -> None:
        self.marker = unique("conformance")
        self.tables: list[str] = []
        self.uses_redis = False

    def apply(self, doc: dict[str, Any]) -> None:
        """Point a state store at this test's own keys (Redis) or tables (PostgreSQL)."""
        ctype = str(doc["spec"]["type"])
        metadata: list[dict[str, Any]] = doc["spec"].setdefault("metadata", None) or []
        doc["spec"]["metadata"] = metadata
        if ctype == "state.postgresql":
            self.tables += [unique_table("state"), unique_table("meta")]
            metadata += [{"name": "tableName", "value": self.tables[-2]}]
            metadata += [{"name": "metadataTableName", "value": self.tables[-1]}]
        elif ctype.startswith("state."):
            metadata.append({"name": "keyPrefix", "value": self.marker})
            self.uses_redis |= ctype == "state.redis"

    def cleanup(self) -> None:
        if self.uses_redis:
            delete_containing(self.marker)
        if self.tables:
            drop_tables(self.tables)


def profile_copy(name: str, folder: Path, isolation: Isolation) -> Path:
    """The profile's YAML, isolated for one test; skips unless every server it needs is up."""
    folder.mkdir()
    for index, (source, doc) in enumerate(_components(PROFILES / name)):
        server = SERVERS.get(str(doc["spec"]["type"]).split(".", 1)[1])
        if server is not None:
            server.require()
        isolation.apply(doc)
        (folder / f"{index:02d}-{source.name}").write_text(yaml.safe_dump(doc))
    return folder


@pytest.fixture(params=PROFILE_NAMES)
def sidecar(
    request: pytest.FixtureRequest, start_sidecar: SidecarStarter, dapr_env: UseSidecar, tmp_path: Path
) -> Iterator[RunningSidecar]:
    isolation = Isolation()
    try:
        resources = profile_copy(request.param, tmp_path / request.param, isolation)
        running = start_sidecar("conformance", resources=[resources])
        dapr_env(running)
        yield running
    finally:
        isolation.cleanup()


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
    with DaprClient() as client, pytest.raises(grpc.RpcError) as lock, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the SDK flags the lock API as experimental
        client.try_lock("lockstore", "resource", "owner", 10)
    assert lock.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert lock.value.details() == "TryLockAlpha1 is not implemented by the embedded sidecar"


def test_secrets_without_a_secret_store_are_not_configured(sidecar: RunningSidecar) -> None:
    with DaprClient() as client, pytest.raises(grpc.RpcError) as secret:
        client.get_secret("secretstore", "key")
    assert secret.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert secret.value.details() == "secret store is not configured"


async def test_metadata_lists_components_and_extended(
    sidecar: RunningSidecar, request: pytest.FixtureRequest
) -> None:
    declared = _components(PROFILES / request.node.callspec.params["sidecar"])
    async with AsyncDaprClient() as client:
        await client.set_metadata("owner", "tests")
        metadata = await client.get_metadata()
    components = {c.name: (c.type, c.version, list(c.capabilities)) for c in metadata.registered_components}
    assert metadata.application_id == "conformance"
    assert components == {
        doc["metadata"]["name"]: (
            doc["spec"]["type"],
            doc["spec"]["version"],
            list(DRIVERS[doc["spec"]["type"]].capabilities),
        )
        for _, doc in declared
        if metadata.application_id in doc.get("scopes", [metadata.application_id])  # others' are not loaded
    }
    assert components["statestore"][2] == ["ETAG", "TRANSACTIONAL", "TTL"]
    assert metadata.extended_metadata["owner"] == "tests"
    assert http_status(sidecar.http_port, "/v1.0/healthz") == 204  # no app port: nothing to wait for


def test_shutdown_api_stops_the_sidecar(sidecar: RunningSidecar) -> None:
    with DaprClient() as client:
        client.shutdown()
    assert sidecar.popen is not None
    assert sidecar.popen.wait(15) == 0
    assert "stopped" in wait_until(sidecar.log, what="stop logged")
