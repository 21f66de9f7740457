"""The retry policies against a real gRPC server: transient codes are retried, answers are not."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from dapr.clients.exceptions import DaprGrpcError, DaprInternalError
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chassis import retrying
from chassis._resilience import app_retrying, grpc_code_of, is_breaker_refusal, is_transient
from chassis.invoke import channel
from chassis.sidecar._resiliency import RetryPolicy
from chassis.testing import free_port

SERVING = health_pb2.HealthCheckResponse.SERVING


@dataclass
class Flaky(health_pb2_grpc.HealthServicer):
    """Fails with the given codes, in order, then answers SERVING; records what each call carried."""

    failures: list[grpc.StatusCode]
    calls: list[dict[str, Any]] = field(default_factory=list)
    message: str = "induced failure"

    async def Check(self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext) -> Any:
        self.calls.append(
            {"metadata": dict(context.invocation_metadata()), "time_left": context.time_remaining()}
        )
        if len(self.calls) <= len(self.failures):
            await context.abort(self.failures[len(self.calls) - 1], self.message)
        return health_pb2.HealthCheckResponse(status=SERVING)


@dataclass
class Server:
    port: int
    servicer: Flaky

    def fail_with(self, codes: Iterable[grpc.StatusCode], message: str = "induced failure") -> None:
        self.servicer.failures = list(codes)
        self.servicer.message = message


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    servicer = Flaky([])
    aio_server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, aio_server)
    port = aio_server.add_insecure_port(f"127.0.0.1:{free_port()}")
    await aio_server.start()
    yield Server(port, servicer)
    await aio_server.stop(grace=None)


def fast_policy(attempts: int = 5) -> Any:
    return retrying(attempts=attempts, initial_backoff=0.01, max_backoff=0.05)


async def _check(port: int) -> health_pb2.HealthCheckResponse:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        reply: health_pb2.HealthCheckResponse = await health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        return reply


@pytest.mark.parametrize(
    "code",
    [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED],
)
async def test_transient_failures_are_retried_until_the_call_succeeds(
    server: Server, code: grpc.StatusCode
) -> None:
    server.fail_with([code, code])

    reply = await fast_policy()(_check, server.port)

    assert reply.status == SERVING
    assert len(server.servicer.calls) == 3


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.INTERNAL,
    ],
)
async def test_answers_are_not_retried(server: Server, code: grpc.StatusCode) -> None:
    server.fail_with([code])

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await fast_policy()(_check, server.port)

    assert caught.value.code() == code
    assert len(server.servicer.calls) == 1


async def test_attempts_are_bounded_and_the_last_error_surfaces(server: Server) -> None:
    server.fail_with([grpc.StatusCode.UNAVAILABLE] * 10)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await fast_policy(attempts=3)(_check, server.port)

    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert len(server.servicer.calls) == 3


async def test_dapr_sdk_errors_are_classified_by_their_grpc_code(server: Server) -> None:
    server.fail_with([grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED])
    errors = []
    for _ in range(2):
        try:
            await _check(server.port)
        except grpc.aio.AioRpcError as err:
            errors.append(err)
    unavailable, aborted = errors

    # The SDK raises DaprGrpcError, or DaprInternalError with the gRPC error as its cause (save_state).
    assert is_transient(DaprGrpcError(unavailable))
    wrapped = DaprInternalError(aborted.details())
    wrapped.__cause__ = aborted
    assert grpc_code_of(wrapped) == grpc.StatusCode.ABORTED
    assert not is_transient(wrapped)
    assert grpc_code_of(ValueError("no status")) is None


async def test_invoke_channel_addresses_the_app_sets_a_deadline_and_retries(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The server stands where the sidecar would: DAPR_GRPC_PORT points at it.
    monkeypatch.setenv("DAPR_GRPC_PORT", str(server.port))
    server.fail_with([grpc.StatusCode.UNAVAILABLE])

    async with channel("grading") as ch:
        reply = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())

    assert reply.status == SERVING
    assert len(server.servicer.calls) == 2
    for call in server.servicer.calls:
        assert call["metadata"]["dapr-app-id"] == "grading"
        assert 0 < call["time_left"] <= 10.5  # the server reads it with clock slack


async def test_a_deadline_the_caller_sets_wins(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAPR_GRPC_PORT", str(server.port))

    async with channel("grading") as ch:
        await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=60)

    assert 10 < server.servicer.calls[0]["time_left"] <= 60


@pytest.mark.parametrize(
    "refusal", ["circuit breaker is open for app grading", "too many requests for app x"]
)
async def test_an_open_circuit_breaker_is_never_retried(server: Server, refusal: str) -> None:
    server.fail_with([grpc.StatusCode.UNAVAILABLE] * 3, message=refusal)

    for policy in (fast_policy(), app_retrying(RetryPolicy("constant", 0.01, 1, 5), budget=5)):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await policy(_check, server.port)
        assert is_breaker_refusal(caught.value)
    assert len(server.servicer.calls) == 2  # one attempt per policy


async def test_a_yaml_exponential_policy_backs_off_as_daprd_does(server: Server) -> None:
    server.fail_with([grpc.StatusCode.UNAVAILABLE] * 10)
    policy = RetryPolicy("exponential", max_interval=0.6, max_retries=3)
    started = time.monotonic()

    with pytest.raises(grpc.aio.AioRpcError):
        await app_retrying(policy, budget=10)(_check, server.port)

    # Waits of 0.5, 0.75 and 0.9 s (capped at maxInterval 0.6), each randomised by +-50% and capped.
    assert len(server.servicer.calls) == 4
    assert 0.25 + 0.375 + 0.3 <= time.monotonic() - started < 0.6 * 3 + 1.0


async def test_a_yaml_policy_retries_no_further_than_the_budget(server: Server) -> None:
    server.fail_with([grpc.StatusCode.DEADLINE_EXCEEDED] * 10)
    started = time.monotonic()

    with pytest.raises(grpc.aio.AioRpcError):
        await app_retrying(RetryPolicy("constant", 0.3, 60, -1), budget=1.1)(_check, server.port)

    assert len(server.servicer.calls) == 4  # at 0, 0.3, 0.6, 0.9 s: the next wait would end past 1.1 s
    assert time.monotonic() - started < 1.3
