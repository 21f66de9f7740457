"""Security of the embedded sidecar: API tokens both ways, loopback-only listening, request size limit.

Real sidecar subprocesses, driven by the official SDK (which sends `DAPR_API_TOKEN` when the variable
is set) and raw HTTP/gRPC; property-based tests check that no wrong token ever gets through and that
rejected or oversized requests leave state as it was.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from dapr.clients import DaprClient
from dapr.clients.exceptions import DaprGrpcError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sidecar_support import (
    Process,
    RunningSidecar,
    app_process,
    free_port,
    port_accepts,
    sidecar_process,
    stop_all,
)
from test_http_api import Answer, call

TOKEN = "s3cret-token"
APP_TOKEN = "app-s3cret"
STORE = "statestore"


def start(
    cwd: Path, started: list[Process], *extra: str, app_port: int | None = None, **env: str
) -> RunningSidecar:
    sidecar = sidecar_process("secure", cwd, app_port=app_port, env=env)
    sidecar.argv += list(extra)
    started.append(sidecar)
    sidecar.spawn()
    ready = "/v1.0/healthz" if app_port else "/v1.0/healthz/outbound"
    sidecar.wait_ready(lambda: sidecar.healthy(ready), f"answering {ready}")
    return sidecar


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSidecar]:
    """A sidecar with DAPR_API_TOKEN and APP_API_TOKEN, and the echo app behind it."""
    cwd = tmp_path_factory.mktemp("security")
    started: list[Process] = []
    try:
        port = free_port()
        app = app_process("invoke_app.py", port, cwd)
        started.append(app)
        app.spawn()
        app.wait_ready(lambda: port_accepts(port), "listening")
        yield start(cwd, started, app_port=port, DAPR_API_TOKEN=TOKEN, APP_API_TOKEN=APP_TOKEN)
    finally:
        stop_all(started)


@pytest.fixture
def sdk_env(monkeypatch: pytest.MonkeyPatch, guarded: RunningSidecar) -> pytest.MonkeyPatch:
    for name, value in guarded.client_env().items():
        monkeypatch.setenv(name, value)
    return monkeypatch


def authed(token: str = TOKEN) -> dict[str, str]:
    return {"dapr-api-token": token}


# ---- DAPR_API_TOKEN --------------------------------------------------------------------------------


def test_http_requires_the_token_except_healthz(guarded: RunningSidecar) -> None:
    for headers in ({}, authed("wrong")):
        answer = call(guarded, "GET", "/v1.0/metadata", headers=headers)
        assert answer.status == 401
        assert answer.json()["errorCode"] == "ERR_UNAUTHORIZED"
    assert call(guarded, "GET", "/v1.0/metadata", headers=authed()).status == 200
    assert call(guarded, "GET", "/v1.0/healthz").status == 204
    assert call(guarded, "GET", "/v1.0/healthz/outbound").status == 204


def test_sdk_with_token_works_without_is_unauthenticated(sdk_env: pytest.MonkeyPatch) -> None:
    k = f"k-{uuid.uuid4().hex}"
    with DaprClient() as client, pytest.raises(DaprGrpcError) as failure:
        client.save_state(STORE, k, b"v")
    assert failure.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "api token" in (failure.value.details() or "")
    sdk_env.setenv("DAPR_API_TOKEN", TOKEN)
    with DaprClient() as client:
        client.save_state(STORE, k, b"v")
        assert client.get_state(STORE, k).data == b"v"


def test_proxied_grpc_call_needs_the_token(guarded: RunningSidecar) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{guarded.grpc_port}") as channel:
        method = channel.unary_unary("/some.Service/Method")
        with pytest.raises(grpc.RpcError) as failure:
            method(b"", metadata=(("dapr-app-id", "secure"),), timeout=5)
        assert failure.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_app_gets_app_api_token_not_the_callers(guarded: RunningSidecar) -> None:
    answer = call(guarded, "POST", "/v1.0/invoke/secure/method/echo", b"x", authed())
    assert answer.status == 200
    assert answer.json()["headers"]["dapr-api-token"] == APP_TOKEN


_token = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30).filter(
    lambda t: t != TOKEN
)
_FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_FUZZ
@given(token=_token)
def test_fuzz_wrong_tokens_never_pass_nor_write(guarded: RunningSidecar, token: str) -> None:
    k = f"k-{uuid.uuid4().hex}"
    answer: Answer = call(guarded, "POST", f"/v1.0/state/{STORE}", [{"key": k, "value": 1}], authed(token))
    assert answer.status == 401
    assert call(guarded, "GET", f"/v1.0/state/{STORE}/{k}", headers=authed()).status == 204


# ---- listening and size limits ---------------------------------------------------------------------


def reachable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, port)) == 0


def test_listens_on_loopback_only_unless_told(tmp_path: Path) -> None:
    started: list[Process] = []
    try:
        default = start(tmp_path / "a", started)
        assert reachable("127.0.0.1", default.http_port)
        assert not reachable("127.0.0.2", default.http_port)  # another address of this host: refused
        moved = sidecar_process("moved", tmp_path / "b")
        moved.argv += ["--dapr-listen-addresses", "127.0.0.2"]
        started.append(moved)
        moved.spawn()
        moved.wait_ready(lambda: reachable("127.0.0.2", moved.http_port), "listening on 127.0.0.2")
        assert reachable("127.0.0.2", moved.grpc_port)
        assert not reachable("127.0.0.1", moved.http_port)
    finally:
        stop_all(started)


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSidecar]:
    started: list[Process] = []
    try:
        yield start(tmp_path_factory.mktemp("limited"), started, "--max-body-size", "1Ki")
    finally:
        stop_all(started)


def test_oversized_http_body_is_413_and_changes_nothing(limited: RunningSidecar) -> None:
    k = f"k-{uuid.uuid4().hex}"
    assert call(limited, "POST", f"/v1.0/state/{STORE}", [{"key": k, "value": "small"}]).status == 204
    big = [{"key": k, "value": "x" * 2048}]
    answer = call(limited, "POST", f"/v1.0/state/{STORE}", big)
    assert answer.status == 413
    body = answer.json()
    assert body["errorCode"] == "ERR_BODY_TOO_LARGE" and "--max-body-size" in body["message"]
    assert call(limited, "GET", f"/v1.0/state/{STORE}/{k}").json() == "small"


def test_oversized_chunked_body_is_413(limited: RunningSidecar) -> None:
    k = f"k-{uuid.uuid4().hex}"
    with socket.create_connection(("127.0.0.1", limited.http_port), timeout=5) as sock:
        body = f'[{{"key":"{k}","value":"{"x" * 4096}"}}]'.encode()
        head = f"POST /v1.0/state/{STORE} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        sock.sendall(head.encode() + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 413")
    assert call(limited, "GET", f"/v1.0/state/{STORE}/{k}").status == 204


def test_oversized_grpc_message_is_resource_exhausted(
    limited: RunningSidecar, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in limited.client_env().items():
        monkeypatch.setenv(name, value)
    k = f"k-{uuid.uuid4().hex}"
    with DaprClient() as client:
        client.save_state(STORE, k, b"small")
        with pytest.raises(DaprGrpcError) as failure:
            client.save_state(STORE, k, b"x" * 2048)
        assert failure.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert client.get_state(STORE, k).data == b"small"


def test_bad_max_body_size_is_a_clear_startup_error(tmp_path: Path) -> None:
    sidecar = sidecar_process("bad", tmp_path)
    sidecar.argv += ["--max-body-size", "lots"]
    sidecar.spawn()
    assert sidecar.popen is not None
    assert sidecar.popen.wait(30) != 0
    assert "--max-body-size" in sidecar.log() and "invalid size 'lots'" in sidecar.log()
