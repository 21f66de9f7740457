"""gRPC proxying by `dapr-app-id`: the caller's sidecar forwards to the callee app found in the registry.

The callee is grpc's own health service (no project protos needed) plus a raw-bytes echo method that
shows metadata, trailers and rich error details crossing the proxy unchanged.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from conftest import SidecarStarter
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from sidecar_support import RunningSidecar, free_port

ECHO = "/test.Echo/Echo"
CHAT = "/test.Echo/Chat"  # bidirectional: one reversed reply per message
DETAILS_KEY = "grpc-status-details-bin"


def _failure_details() -> bytes:
    info = error_details_pb2.ErrorInfo(reason="OUT_OF_STOCK", domain="shop.example")
    status = status_pb2.Status(code=grpc.StatusCode.FAILED_PRECONDITION.value[0], message="no stock")
    status.details.add().Pack(info)
    return status.SerializeToString()


@dataclass
class EchoHandler(grpc.GenericRpcHandler):
    """`Echo` answers the reversed bytes, or fails with rich details for b"fail"; `Chat` streams them."""

    seen: list[dict[str, str]] = field(default_factory=list)

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        if details.method == CHAT:
            return grpc.stream_stream_rpc_method_handler(self.chat)
        return grpc.unary_unary_rpc_method_handler(self.echo) if details.method == ECHO else None

    def chat(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        for request in requests:
            yield request[::-1]

    def echo(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        metadata = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        self.seen.append(metadata)
        context.send_initial_metadata([("x-echo-caller", metadata.get("x-caller", ""))])
        if request == b"fail":
            context.set_trailing_metadata((("x-why", "stock"), (DETAILS_KEY, _failure_details())))
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "no stock")
        context.set_trailing_metadata([("x-trailer", "done")])
        return request[::-1]


@dataclass
class Callee:
    port: int
    echo: EchoHandler


@pytest.fixture
def callee() -> Iterator[Callee]:
    """A plain gRPC app: health service (SERVING) and the echo method."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    echo = EchoHandler()
    server.add_generic_rpc_handlers((echo,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield Callee(port, echo)
    server.stop(None)


@pytest.fixture
def caller(start_sidecar: SidecarStarter, callee: Callee, tmp_path: Path) -> RunningSidecar:
    """The caller's sidecar beside the callee's (sharing the registry tmp_path/.chassis/registry.db)."""
    start_sidecar("callee", app_port=callee.port, ready="/v1.0/healthz")
    return start_sidecar("caller")


Call = Callable[..., object]


def _channel(sidecar: RunningSidecar) -> grpc.Channel:
    return grpc.insecure_channel(f"127.0.0.1:{sidecar.grpc_port}")


def test_health_check_reaches_the_callee_and_errors_pass_through(caller: RunningSidecar) -> None:
    with _channel(caller) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        to_callee = (("dapr-app-id", "callee"),)
        reply = stub.Check(health_pb2.HealthCheckRequest(), metadata=to_callee, timeout=10)
        with pytest.raises(grpc.RpcError) as unknown_service:
            stub.Check(health_pb2.HealthCheckRequest(service="nope"), metadata=to_callee, timeout=10)
        watch = stub.Watch(health_pb2.HealthCheckRequest(), metadata=to_callee, timeout=10)
        first = next(watch)  # a server stream crosses the proxy as well
        watch.cancel()
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert unknown_service.value.code() == grpc.StatusCode.NOT_FOUND
    assert first.status == health_pb2.HealthCheckResponse.SERVING


def test_metadata_trailers_and_rich_errors_pass_through(caller: RunningSidecar, callee: Callee) -> None:
    with _channel(caller) as channel:
        echo = channel.unary_unary(ECHO)
        metadata = (("dapr-app-id", "callee"), ("x-caller", "tests"))
        reply, call = echo.with_call(b"abc", metadata=metadata, timeout=10)
        with pytest.raises(grpc.RpcError) as failed:
            echo(b"fail", metadata=metadata, timeout=10)
    assert reply == b"cba"
    assert ("x-echo-caller", "tests") in call.initial_metadata()
    assert ("x-trailer", "done") in call.trailing_metadata()
    error = failed.value
    trailers = dict(error.trailing_metadata())
    assert (error.code(), error.details()) == (grpc.StatusCode.FAILED_PRECONDITION, "no stock")
    assert trailers["x-why"] == "stock" and trailers[DETAILS_KEY] == _failure_details()
    seen = callee.echo.seen[0]
    assert seen["dapr-caller-app-id"] == "caller" and seen["x-caller"] == "tests"
    assert seen["traceparent"].startswith("00-")  # the proxy's span continues (or starts) the trace


def test_unknown_app_is_unavailable_and_no_app_id_is_unimplemented(caller: RunningSidecar) -> None:
    with _channel(caller) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(grpc.RpcError) as ghost:
            stub.Check(health_pb2.HealthCheckRequest(), metadata=(("dapr-app-id", "ghost"),), timeout=10)
        with pytest.raises(grpc.RpcError) as anonymous:
            stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert (ghost.value.code(), ghost.value.details()) == (
        grpc.StatusCode.UNAVAILABLE,
        "app id ghost is not registered",
    )
    assert anonymous.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_registered_app_that_is_down_is_unavailable(start_sidecar: SidecarStarter) -> None:
    down = free_port()  # registered, but nothing listens there
    start_sidecar("sleepy", app_port=down)
    caller = start_sidecar("caller")
    with _channel(caller) as channel, pytest.raises(grpc.RpcError) as unreachable:
        health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), metadata=(("dapr-app-id", "sleepy"),), timeout=10
        )
    assert unreachable.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_method_the_callee_lacks_is_its_unimplemented(caller: RunningSidecar, callee: Callee) -> None:
    with _channel(caller) as channel:
        missing = channel.unary_unary("/tests.Nowhere/Nothing")
        for _ in range(20):  # the callee's status, every time: never the proxy's own INTERNAL
            with pytest.raises(grpc.RpcError) as lacking:
                missing(b"x", metadata=(("dapr-app-id", "callee"),), timeout=10)
            assert lacking.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_client_and_bidirectional_streams_cross_the_proxy(caller: RunningSidecar, callee: Callee) -> None:
    metadata = (("dapr-app-id", "callee"),)
    with _channel(caller) as channel:
        chat = channel.stream_stream(CHAT)
        assert list(chat(iter([b"ab", b"cd", b"ef"]), metadata=metadata, timeout=10)) == [b"ba", b"dc", b"fe"]
        assert list(chat(iter([]), metadata=metadata, timeout=10)) == []
        # Ping-pong: each message waits for the previous reply, so the proxy must not wait for more.
        outbox: queue.Queue[bytes | None] = queue.Queue()
        outbox.put(b"1a")
        replies = chat(iter(outbox.get, None), metadata=metadata, timeout=10)
        assert next(replies) == b"a1"
        outbox.put(b"2b")
        assert next(replies) == b"b2"
        outbox.put(None)
        assert list(replies) == []
