"""GetBulkState and DeleteBulkState through the official SDK (and its generated stub), as daprd answers.

Missing keys come back as items with no data; `parallelism` bounds concurrent reads; a key holding
`||` is INVALID_ARGUMENT; DeleteBulkState is all-or-nothing under ETags.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import grpc
import pytest
from dapr.clients import DaprClient
from dapr.clients.grpc._state import StateItem
from dapr.proto.common.v1 import common_pb2
from dapr.proto.runtime.v1 import dapr_pb2_grpc, state_pb2
from sidecar_support import RunningSidecar, sidecar_process, stop_all

STORE = "statestore"


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSidecar]:
    sidecar = sidecar_process("bulk-app", tmp_path_factory.mktemp("bulk"))
    sidecar.spawn()
    try:
        sidecar.wait_ready(sidecar.healthy, "healthy")
        yield sidecar
    finally:
        stop_all([sidecar])


@pytest.fixture
def sidecar(running: RunningSidecar, dapr_env: Callable[[RunningSidecar], None]) -> RunningSidecar:
    dapr_env(running)
    return running


def _keys(count: int) -> list[str]:
    run = uuid.uuid4().hex[:8]
    return [f"bulk-{run}-{index}" for index in range(count)]


def _stub(sidecar: RunningSidecar) -> tuple[grpc.Channel, dapr_pb2_grpc.DaprStub]:
    channel = grpc.insecure_channel(f"127.0.0.1:{sidecar.grpc_port}")
    return channel, dapr_pb2_grpc.DaprStub(channel)


@pytest.mark.parametrize("parallelism", [1, 3, 0])
def test_bulk_get_returns_every_key_in_order(sidecar: RunningSidecar, parallelism: int) -> None:
    keys = _keys(7)
    with DaprClient() as client:
        client.save_bulk_state(STORE, [StateItem(key, f"v{index}") for index, key in enumerate(keys[:5])])
        response = client.get_bulk_state(STORE, keys, parallelism=parallelism)
    assert [item.key for item in response.items] == keys
    assert [item.data for item in response.items] == [f"v{i}".encode() for i in range(5)] + [b"", b""]
    assert all(item.etag for item in response.items[:5])
    assert not response.items[5].etag and not response.items[5].error


def test_bulk_get_reports_ttl_expiry(sidecar: RunningSidecar) -> None:
    key = _keys(1)[0]
    with DaprClient() as client:
        client.save_state(STORE, key, b"x", state_metadata={"ttlInSeconds": "60"})
    channel, stub = _stub(sidecar)  # the SDK's BulkStateItem drops the item metadata
    with channel:
        response = stub.GetBulkState(state_pb2.GetBulkStateRequest(store_name=STORE, keys=[key]))
    assert "ttlExpireTime" in response.items[0].metadata


def test_bulk_get_with_an_illegal_key_is_invalid_argument(sidecar: RunningSidecar) -> None:
    with DaprClient() as client, pytest.raises(grpc.RpcError) as failed:
        client.get_bulk_state(STORE, ["fine", "bad||key"])
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "can't contain '||'" in str(failed.value.details())


def test_bulk_get_unknown_store(sidecar: RunningSidecar) -> None:
    with DaprClient() as client, pytest.raises(grpc.RpcError) as failed:
        client.get_bulk_state("nope", ["k"])
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert failed.value.details() == "state store nope is not found"


def test_delete_bulk_state_deletes_all_or_nothing(sidecar: RunningSidecar) -> None:
    keys = _keys(3)
    with DaprClient() as client:
        client.save_bulk_state(STORE, [StateItem(key, "v") for key in keys])
        etags = [item.etag for item in client.get_bulk_state(STORE, keys).items]
    channel, stub = _stub(sidecar)
    with channel:
        stale = [common_pb2.StateItem(key=keys[0], etag=common_pb2.Etag(value=etags[0]))]
        stale.append(common_pb2.StateItem(key=keys[1], etag=common_pb2.Etag(value="999999")))
        with pytest.raises(grpc.RpcError) as failed:
            stub.DeleteBulkState(state_pb2.DeleteBulkStateRequest(store_name=STORE, states=stale))
        assert failed.value.code() == grpc.StatusCode.ABORTED
        with DaprClient() as client:
            assert all(item.data == b"v" for item in client.get_bulk_state(STORE, keys).items)
        good = [
            common_pb2.StateItem(key=key, etag=common_pb2.Etag(value=etag))
            for key, etag in zip(keys, etags, strict=True)
        ]
        stub.DeleteBulkState(state_pb2.DeleteBulkStateRequest(store_name=STORE, states=good))
    with DaprClient() as client:
        assert all(item.data == b"" for item in client.get_bulk_state(STORE, keys).items)
