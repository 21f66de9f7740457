"""{{ cookiecutter.service_name }} as it runs: a real sidecar and the service as processes.

Calls go through the sidecar with `dapr-app-id` (Dapr gRPC proxying); records live in its state store.
"""

from __future__ import annotations

import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
from chassis.testing import AppProcess, Sidecar, free_port
from mooc.{{ cookiecutter.service_slug }}.v1 import {{ cookiecutter.service_slug }}_pb2 as pb
from mooc.{{ cookiecutter.service_slug }}.v1 import {{ cookiecutter.service_slug }}_pb2_grpc as pb_grpc

from {{ cookiecutter.service_slug }}.service import APP_ID

SERVICE_DIR = Path(__file__).resolve().parents[1]
METADATA = (("dapr-app-id", APP_ID),)


Stub = pb_grpc.{{ cookiecutter.service_pascal }}ServiceStub


def sees_the_app(sidecar: Sidecar) -> bool:
    """The sidecar's full healthz: 204 once it has connected to its app (and subscribed for it)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{sidecar.http_port}/v1.0/healthz", timeout=1) as reply:
            return bool(reply.status == 204)
    except OSError:
        return False


@pytest.fixture
async def stub(
    sidecar_factory: Callable[..., Sidecar], app_factory: Callable[..., AppProcess]
) -> AsyncIterator[Stub]:
    """The service beside its sidecar; the stub talks to the sidecar, never to the service directly."""
    app_port = free_port()
    sidecar = sidecar_factory(APP_ID, app_port=app_port)
    app_factory(
        "{{ cookiecutter.service_slug }}",
        app_id=APP_ID,
        app_port=app_port,
        pythonpath=[SERVICE_DIR],
        sidecar=sidecar,
    )
    sidecar.wait_until(lambda: sees_the_app(sidecar), 30, "connected to the app (GET /v1.0/healthz)")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.grpc_port}") as channel:
        yield pb_grpc.{{ cookiecutter.service_pascal }}ServiceStub(channel)


async def test_a_record_put_is_read_back(stub: Stub) -> None:
    record = pb.Record(record_id="r-1", title="first", attributes={"course": "intro-python"})
    reply = await stub.PutRecord(pb.PutRecordRequest(record=record), metadata=METADATA, timeout=10)
    assert reply.record_id == "r-1"
    stored = await stub.GetRecord(pb.GetRecordRequest(record_id="r-1"), metadata=METADATA, timeout=10)
    assert stored == record


async def test_bad_requests_get_clear_statuses(stub: Stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.GetRecord(pb.GetRecordRequest(record_id="nope"), metadata=METADATA, timeout=10)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as invalid:
        await stub.PutRecord(pb.PutRecordRequest(record=pb.Record()), metadata=METADATA, timeout=10)
    assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "record_id is required" in (invalid.value.details() or "")
