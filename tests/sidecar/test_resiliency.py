"""Resiliency YAML (timeouts, retries, circuit breakers on apps and components) as daprd applies it.

Unit tests pin the policy maths (back-off, CEL `trip`, gobreaker states, default-policy resolution);
the rest drive real sidecars through the official SDK: outbound policies around an HTTP output
binding, inbound retries of input binding events and pub/sub redeliveries.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from dapr.clients import DaprClient
from sidecar_support import (
    Process,
    RunningSidecar,
    app_process,
    child_env,
    fast_components,
    free_port,
    port_accepts,
    read_jsonl,
    sidecar_process,
    stop_all,
    wait_until,
)
from target_support import HttpTarget, http_target

from chassis.sidecar._errors import EtagMismatch, ResourceError
from chassis.sidecar._resiliency import (
    BreakerSpec,
    CircuitBreaker,
    CircuitOpen,
    Policy,
    PolicyTimeout,
    Resiliency,
    RetryPolicy,
    Trip,
    parse_resiliency,
    redelivery_delay,
)
from chassis.sidecar._resources import load_resiliency

# ---- policy maths ---------------------------------------------------------------------------------


def test_trip_expressions_are_a_safe_cel_subset() -> None:
    counts = {"requests": 4, "totalSuccesses": 1, "totalFailures": 3}
    counts |= {"consecutiveSuccesses": 0, "consecutiveFailures": 3}
    assert Trip("consecutiveFailures > 2")(counts)
    assert not Trip("consecutiveFailures > 5")(counts)
    assert Trip("requests >= 4 && totalFailures / requests > 0.5")(counts)
    assert Trip("!(totalSuccesses > 1) || requests == 0")(counts)
    assert not Trip("totalFailures / totalSuccesses > 9")(counts | {"totalSuccesses": 0})
    for bad in ("__import__('os')", "consecutiveFailure > 1", "requests > 'x'", "a.b > 1", "requests >"):
        with pytest.raises(ValueError):
            Trip(bad)


def test_constant_and_exponential_retry_delays() -> None:
    assert RetryPolicy("constant", 0.2, 60, 2).delay(1) == 0.2
    assert RetryPolicy("constant", 0.2, 60, 2).delay(3) is None
    assert RetryPolicy("constant", 0.2, 60, 0).delay(1) is None
    assert RetryPolicy("constant", 0.2, 60, -1).delay(1000) == 0.2
    exponential = RetryPolicy("exponential", 5, 3.0, -1)
    for attempt in range(1, 12):
        current = min(0.5 * 1.5 ** (attempt - 1), 3.0)
        delay = exponential.delay(attempt)
        assert delay is not None and 0.5 * current <= delay <= min(1.5 * current, 3.0)


def test_circuit_breaker_trips_half_opens_and_closes() -> None:
    now = [0.0]
    breaker = CircuitBreaker(BreakerSpec(2, 0.0, 10.0, Trip("consecutiveFailures > 1")), clock=lambda: now[0])
    for _ in range(2):
        breaker.before()
        breaker.after(False)
    assert breaker.state == "open"
    with pytest.raises(CircuitOpen, match="circuit breaker is open"):
        breaker.before()
    now[0] = 10.0
    breaker.before()
    breaker.before()
    with pytest.raises(CircuitOpen, match="too many requests"):  # maxRequests 2 while half-open
        breaker.before()
    breaker.after(True)
    breaker.after(True)
    assert breaker.state == "closed"
    breaker.before()
    breaker.after(False)
    assert breaker.state == "closed"  # one failure is not > 1


def test_circuit_breaker_interval_clears_counts_and_half_open_failure_reopens() -> None:
    now = [0.0]
    breaker = CircuitBreaker(BreakerSpec(1, 5.0, 1.0, Trip("totalFailures >= 2")), clock=lambda: now[0])
    breaker.before()
    breaker.after(False)
    now[0] = 6.0  # a new interval: the earlier failure is forgotten
    breaker.before()
    breaker.after(False)
    assert breaker.state == "closed"
    breaker.before()
    breaker.after(False)
    assert breaker.state == "open"
    now[0] = 7.5
    breaker.before()
    breaker.after(False)
    assert breaker.state == "open"


async def test_policy_run_retries_times_out_and_stops_at_an_open_breaker() -> None:
    calls: list[int] = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("down")
        return "up"

    assert await Policy(retry=RetryPolicy("constant", 0.01, 1, 5)).run(flaky) == "up"
    assert len(calls) == 3

    async def conflict() -> None:
        calls.append(1)
        raise EtagMismatch("etag")

    calls.clear()
    with pytest.raises(EtagMismatch):
        await Policy(retry=RetryPolicy("constant", 0.01, 1, 5)).run(
            conflict, retryable=lambda err: not isinstance(err, EtagMismatch)
        )
    assert len(calls) == 1

    with pytest.raises(PolicyTimeout, match="context deadline exceeded"):
        await Policy(timeout=0.05).run(lambda: asyncio.sleep(1))

    breaker = CircuitBreaker(BreakerSpec(1, 0, 60, Trip("consecutiveFailures > 0")))
    calls.clear()
    with pytest.raises(CircuitOpen):
        await Policy(retry=RetryPolicy("constant", 0.01, 1, 5), breaker=breaker).run(flaky)
    assert len(calls) == 1  # the first failure opened it; no retry goes through an open breaker


RESOLUTION = {
    "spec": {
        "policies": {
            "timeouts": {"named": "1s", "DefaultTimeoutPolicy": "9s", "DefaultAppTimeoutPolicy": "3s"},
            "retries": {
                "named": {"maxRetries": 1},
                "DefaultRetryPolicy": {"maxRetries": 9},
                "DefaultComponentOutboundRetryPolicy": {"maxRetries": 8},
                "DefaultStatestoreComponentOutboundRetryPolicy": {"maxRetries": 7},
                "DefaultPubsubComponentInboundRetryPolicy": {"maxRetries": 6},
            },
            "circuitBreakers": {"cb": {"trip": "consecutiveFailures > 3"}},
        },
        "targets": {
            "apps": {"billing": {"retry": "named", "circuitBreaker": "cb"}},
            "components": {"statestore": {"outbound": {"timeout": "named"}}},
        },
    }
}


def _max_retries(policy: Policy) -> int | None:
    return policy.retry.max_retries if policy.retry else None


def test_named_target_then_most_specific_default_then_broadest() -> None:
    resiliency = Resiliency()
    parse_resiliency(resiliency, "r.yaml", RESOLUTION)
    state = resiliency.component_outbound("statestore", "state.sqlite")
    assert state.timeout == 1.0 and _max_retries(state) == 7 and state.breaker is None
    assert _max_retries(resiliency.component_outbound("other", "state.redis")) == 7
    assert _max_retries(resiliency.component_outbound("pubsub", "pubsub.sqlite")) == 8
    assert _max_retries(resiliency.component_inbound("pubsub", "pubsub.sqlite")) == 6
    assert _max_retries(resiliency.component_inbound("ticks", "bindings.cron")) == 9
    billing = resiliency.app("billing")
    assert _max_retries(billing) == 1 and billing.timeout == 3.0 and billing.breaker is not None
    assert resiliency.app("billing") is billing  # one breaker per target, shared by every call
    assert resiliency.app("other").timeout == 3.0


def test_redelivery_delay_prefers_the_policy_then_dead_letter_then_broker() -> None:
    policy = Policy(retry=RetryPolicy("constant", 0.3, 1, 2))
    assert redelivery_delay(policy, 1, dead_letter=True, fallback=5.0) == 0.3
    assert redelivery_delay(policy, 3, dead_letter=True, fallback=5.0) is None
    assert redelivery_delay(policy, 3, dead_letter=False, fallback=5.0) == 5.0
    assert redelivery_delay(Policy(), 1, dead_letter=False, fallback=5.0) == 5.0
    assert redelivery_delay(Policy(), 1, dead_letter=True, fallback=5.0) is None


RESILIENCY_HEAD = """\
apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata: {name: r}
"""


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ("spec: {policies: {timeouts: {t: soon}}}", "spec.policies.timeouts.t: invalid duration"),
        ("spec: {policies: {retries: {r: {policy: linear}}}}", "spec.policies.retries.r.policy"),
        ("spec: {policies: {retries: {r: {maxRetries: many}}}}", "spec.policies.retries.r.maxRetries"),
        ("spec: {policies: {retries: {r: {backoff: 1s}}}}", "spec.policies.retries.r.backoff: unknown"),
        ("spec: {policies: {circuitBreakers: {c: {trip: 'x > 1'}}}}", "spec.policies.circuitBreakers.c.trip"),
        ("spec: {targets: {apps: {a: {retry: nope}}}}", "spec.targets.apps.a.retry: no retries policy"),
        (
            "spec: {policies: {retries: {r: {matching: {gRPCStatusCodes: '1-4,x'}}}}}",
            "spec.policies.retries.r.matching.gRPCStatusCodes: expected codes or ranges",
        ),
        (
            "spec: {policies: {retries: {r: {matching: {gRPCStatusCodes: '14-17'}}}}}",
            "spec.policies.retries.r.matching.gRPCStatusCodes: '14-17' is not a range within 0-16",
        ),
        (
            "spec: {policies: {retries: {r: {matching: {httpStatusCodes: '599-500'}}}}}",
            "spec.policies.retries.r.matching.httpStatusCodes",
        ),
        ("spec: {policies: {retries: {r: {matching: {codes: '1'}}}}}", "retries.r.matching.codes: unknown"),
        ("spec: {targets: {components: {c: {sideways: {}}}}}", "spec.targets.components.c.sideways"),
    ],
)
def test_invalid_resiliency_is_one_error_naming_file_and_field(tmp_path: Path, body: str, field: str) -> None:
    (tmp_path / "res.yaml").write_text(RESILIENCY_HEAD + body + "\n")
    with pytest.raises(ResourceError) as error:
        load_resiliency([tmp_path], "app")
    assert str(error.value).startswith(f"{tmp_path / 'res.yaml'}: ")
    assert field in str(error.value)


def test_retry_matching_lists_the_codes_that_are_retried(tmp_path: Path) -> None:
    body = """\
spec:
  policies:
    retries:
      picky: {matching: {httpStatusCodes: "429,500-503", gRPCStatusCodes: "1-4,8,14"}}
      any: {matching: {httpStatusCodes: ""}}
"""
    (tmp_path / "res.yaml").write_text(RESILIENCY_HEAD + body)
    retries = load_resiliency([tmp_path], "app").retries
    assert retries["picky"].http_codes == {429, 500, 501, 502, 503}
    assert retries["picky"].grpc_codes == {1, 2, 3, 4, 8, 14}
    assert (retries["any"].http_codes, retries["any"].grpc_codes) == (None, None)  # empty: every failure


def test_resiliency_scopes_select_the_app(tmp_path: Path) -> None:
    body = "scopes: [billing]\nspec: {policies: {timeouts: {DefaultTimeoutPolicy: 2s}}}\n"
    (tmp_path / "res.yaml").write_text(RESILIENCY_HEAD + body)
    assert load_resiliency([tmp_path], "billing").timeouts == {"DefaultTimeoutPolicy": 2.0}
    assert load_resiliency([tmp_path], "grading").timeouts == {}


def test_invalid_resiliency_stops_the_sidecar_with_one_line(tmp_path: Path) -> None:
    folder = fast_components(tmp_path / "res")
    (folder / "resiliency.yaml").write_text(RESILIENCY_HEAD + "spec: {policies: {timeouts: {t: soon}}}\n")
    argv = sidecar_process("bad", tmp_path, resources=[folder]).argv
    done = subprocess.run(argv, cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "resiliency.yaml: spec.policies.timeouts.t" in done.stderr


# ---- a sidecar applying the policies ----------------------------------------------------------------

COMPONENTS = """\
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {{name: {name}}}
spec:
  type: bindings.http
  version: v1
  metadata:
  - {{name: url, value: "{url}"}}
---
"""
CRON = """\
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: failing}
spec:
  type: bindings.cron
  version: v1
  metadata:
  - {name: schedule, value: "@every 1s"}
"""
POLICIES = """\
apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata: {name: test-resiliency}
spec:
  policies:
    timeouts: {quick: 200ms}
    retries:
      fast: {policy: constant, duration: 20ms, maxRetries: 3}
      slowRedelivery: {policy: constant, duration: 1500ms, maxRetries: 5}
    circuitBreakers:
      twoStrikes: {maxRequests: 1, timeout: 60s, trip: consecutiveFailures > 1}
  targets:
    apps:
      binder-app: {circuitBreaker: twoStrikes}
    components:
      retrying: {outbound: {retry: fast}}
      breaking: {outbound: {circuitBreaker: twoStrikes}}
      timing: {outbound: {timeout: quick}}
      failing: {inbound: {retry: fast}}
      pubsub: {inbound: {retry: slowRedelivery}}
"""


@dataclass
class Setup:
    sidecar: RunningSidecar
    target: HttpTarget
    bindings_record: Path
    events_record: Path


def _start(workdir: Path, started: list[Process], script: str, record: Path, env: dict[str, str]) -> int:
    port = free_port()
    app = app_process(script, port, workdir, {"RECORD_FILE": str(record)} | env)
    started.append(app)
    app.spawn()
    app.wait_ready(lambda: port_accepts(port), "listening")
    return port


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """A subscriber app (pub/sub) with its sidecar; that sidecar also holds the bindings."""
    workdir = tmp_path_factory.mktemp("resiliency")
    started: list[Process] = []
    with http_target() as target:
        folder = fast_components(workdir / "res")
        names = ("retrying", "breaking", "timing")
        http = "".join(COMPONENTS.format(name=name, url=target.url) for name in names)
        (folder / "bindings.yaml").write_text(http + CRON)
        (folder / "resiliency.yaml").write_text(POLICIES)
        bindings_record, events_record = workdir / "bindings.jsonl", workdir / "events.jsonl"
        try:
            binder = _start(workdir, started, "binder.py", bindings_record, {"FAIL_TIMES": "2"})
            sidecar = sidecar_process("binder-app", workdir, app_port=binder, resources=[folder])
            started.append(sidecar)
            sidecar.spawn()
            sidecar.wait_ready(sidecar.healthy, "healthy")
            subscriber = _start(workdir, started, "subscriber.py", events_record, {})
            subscribed = sidecar_process(
                "resilient-subscriber", workdir, app_port=subscriber, resources=[folder]
            )
            started.append(subscribed)
            subscribed.spawn()
            subscribed.wait_ready(lambda: subscribed.healthy("/v1.0/healthz"), "subscribed")
            yield Setup(sidecar, target, bindings_record, events_record)
        finally:
            stop_all(started)


@pytest.fixture
def env(setup: Setup, dapr_env: Callable[[RunningSidecar], None]) -> Setup:
    dapr_env(setup.sidecar)
    return setup


def test_outbound_retries_until_the_component_answers(env: Setup) -> None:
    path = f"/flaky/2?{uuid.uuid4().hex}"
    with DaprClient() as client:
        response = client.invoke_binding("retrying", "get", b"", binding_metadata={"path": path})
    assert response.binding_metadata["statusCode"] == "200"
    assert len(env.target.requests(path)) == 3


def test_outbound_retries_give_up_after_max_retries(env: Setup) -> None:
    path = f"/flaky/9?{uuid.uuid4().hex}"
    with DaprClient() as client, pytest.raises(grpc.RpcError) as failed:
        client.invoke_binding("retrying", "get", b"", binding_metadata={"path": path})
    assert "received status code 503" in str(failed.value.details())
    assert len(env.target.requests(path)) == 4  # the call and maxRetries 3


def test_outbound_circuit_breaker_opens_after_the_trip(env: Setup) -> None:
    with DaprClient() as client:
        for _ in range(2):
            with pytest.raises(grpc.RpcError):
                client.invoke_binding("breaking", "get", b"", binding_metadata={"path": "/fail"})
        seen = len(env.target.requests("/fail"))
        with pytest.raises(grpc.RpcError) as refused:
            client.invoke_binding("breaking", "get", b"", binding_metadata={"path": "/ok"})
    assert refused.value.details() == "error when invoke output binding breaking: circuit breaker is open"
    assert len(env.target.requests("/fail")) == seen and not env.target.requests("/ok")


def test_outbound_timeout_cuts_a_slow_component(env: Setup) -> None:
    started = time.monotonic()
    with DaprClient() as client, pytest.raises(grpc.RpcError) as failed:
        client.invoke_binding("timing", "get", b"", binding_metadata={"path": "/slow"})
    assert time.monotonic() - started < 0.9
    assert failed.value.details() == "error when invoke output binding timing: context deadline exceeded"


def test_inbound_retry_redelivers_the_same_binding_event(env: Setup) -> None:
    def calls() -> list[dict[str, Any]]:
        return [e for e in read_jsonl(env.bindings_record) if e["binding"] == "failing"]

    wait_until(lambda: calls()[2:], what="3 calls")
    assert len({e["metadata"]["readTimeUTC"] for e in calls()[:3]}) == 1  # one event, retried twice


def test_app_circuit_breaker_guards_proxied_calls(env: Setup) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{env.sidecar.grpc_port}") as channel:
        call = channel.unary_unary("/test.Missing/Method")
        metadata = (("dapr-app-id", "binder-app"),)
        codes = []
        for _ in range(3):
            with pytest.raises(grpc.RpcError) as failed:
                call(b"", metadata=metadata, timeout=5)
            codes.append((failed.value.code(), failed.value.details()))
    # The app's own failures (UNIMPLEMENTED; the proxy sometimes relays it as INTERNAL) trip the breaker.
    assert grpc.StatusCode.UNAVAILABLE not in (codes[0][0], codes[1][0])
    assert codes[2] == (grpc.StatusCode.UNAVAILABLE, "circuit breaker is open for app binder-app")


def test_inbound_pubsub_retry_policy_sets_the_redelivery_delay(env: Setup) -> None:
    event_id = uuid.uuid4().hex
    with DaprClient() as client:
        client.publish_event(
            "pubsub", "orders-retry", json.dumps({"n": 1}), publish_metadata={"cloudevent.id": event_id}
        )

    def deliveries() -> list[float]:
        return [time.monotonic() for e in read_jsonl(env.events_record) if e["id"] == event_id]

    wait_until(deliveries, what="first delivery")
    first = time.monotonic()
    wait_until(lambda: len(deliveries()) >= 2, what="redelivery")
    assert time.monotonic() - first >= 1.2  # the policy's 1500ms, not the broker's 100ms back-off
