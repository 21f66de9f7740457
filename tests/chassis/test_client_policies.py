"""Client-side policies from the Resiliency YAML, against real sidecars and a real gRPC callee.

The caller's sidecar reads a Resiliency document (apps and components) and so does the chassis, from
the same folder: the chassis retries calls to an app with that app's YAML retry policy (the sidecar
times each attempt out and runs the circuit breaker), makes one attempt where the sidecar retries a
component itself, and waits for a restarting sidecar instead of failing.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import sqlite3
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from dapr.clients.exceptions import DaprGrpcError, DaprInternalError
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chassis import ConfigError, Dapr, ServiceSettings
from chassis._launch._app import AppLaunch, Ports
from chassis._resilience import grpc_code_of
from chassis.invoke import channel
from chassis.testing import Sidecar, free_port, wait_for, write_default_resources

SERVING = health_pb2.HealthCheckResponse.SERVING
DaprError = (DaprGrpcError, DaprInternalError)
Step = grpc.StatusCode | float | None  # fail with a code, answer after sleeping, answer at once

RESILIENCY = """\
apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata: {name: client-policies}
scopes: [caller, keeper]
spec:
  policies:
    timeouts: {attempt: 300ms}
    retries:
      twice: {policy: constant, duration: 200ms, maxRetries: 2}
      patient: {policy: constant, duration: 100ms, maxRetries: 10}
      steady: {policy: constant, duration: 300ms, maxRetries: 5}
      exhausted: {policy: constant, duration: 100ms, maxRetries: 3, matching: {gRPCStatusCodes: "8"}}
    circuitBreakers:
      twoStrikes: {maxRequests: 1, timeout: 60s, trip: consecutiveFailures > 1}
  targets:
    apps:
      flaky: {retry: twice}
      slow: {timeout: attempt, retry: patient}
      fragile: {retry: steady, circuitBreaker: twoStrikes}
      picky: {retry: exhausted}
    components:
      guarded: {outbound: {retry: steady}}
"""


CALLEES = ("flaky", "slow", "fragile", "picky")


# ---- a scripted callee ----------------------------------------------------------------------------


@dataclass
class Scripted(health_pb2_grpc.HealthServicer):
    """grpc.health's Check, scripted per `service` name: each call takes the next step of its script."""

    scripts: dict[str, tuple[list[Step], Step]] = field(default_factory=dict)
    calls: dict[str, list[float]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def script(self, key: str, steps: list[Step], then: Step = None) -> str:
        self.scripts[key] = (steps, then)
        return key

    def Check(self, request: health_pb2.HealthCheckRequest, context: grpc.ServicerContext) -> Any:
        with self.lock:
            seen = self.calls.setdefault(request.service, [])
            seen.append(time.monotonic())
            steps, then = self.scripts.get(request.service, ([], None))
            step = steps[len(seen) - 1] if len(seen) <= len(steps) else then
        if isinstance(step, grpc.StatusCode):
            context.abort(step, "induced failure")
        if isinstance(step, float):
            time.sleep(step)
        return health_pb2.HealthCheckResponse(status=SERVING)


@dataclass
class Mesh:
    callee: Scripted
    settings: ServiceSettings  # the caller's: its sidecar and the resources folder it reads
    reachable: set[str] = field(default_factory=set)


def _spawn_all(sidecars: list[Sidecar]) -> None:
    for sidecar in sidecars:
        sidecar.spawn()
    for sidecar in sidecars:
        sidecar.wait_until(sidecar.healthy, 30, "healthy")


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    """One callee server registered as three apps, and the caller's sidecar holding the YAML."""
    workdir = tmp_path_factory.mktemp("mesh")
    resources = write_default_resources(workdir / "components")
    (resources / "resiliency.yaml").write_text(RESILIENCY)
    callee = Scripted()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    health_pb2_grpc.add_HealthServicer_to_server(callee, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    sidecars = [Sidecar(app, workdir, app_port=port) for app in CALLEES]
    caller = Sidecar("caller", workdir, resources=[resources])
    try:
        _spawn_all([*sidecars, caller])
        settings = ServiceSettings(
            app_id="caller",
            dapr_grpc_port=caller.grpc_port,
            dapr_http_port=caller.http_port,
            resources_path=[resources],
        )
        yield Mesh(callee, settings)
    finally:
        for sidecar in [caller, *sidecars]:
            sidecar.stop()
        server.stop(None)


async def check(mesh: Mesh, app_id: str, key: str, deadline: float | None = None) -> Any:
    async with channel(app_id, settings=mesh.settings) as ch:
        return await health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service=key), timeout=deadline
        )


@pytest.fixture
async def ready(mesh: Mesh) -> Mesh:
    """Every callee app reachable through the caller's sidecar (registered in the shared registry)."""
    for app_id in set(CALLEES) - mesh.reachable:

        async def reachable(app_id: str = app_id) -> bool:
            try:
                await check(mesh, app_id, "warm-up", deadline=2)
            except grpc.aio.AioRpcError:
                return False
            return True

        await wait_for(reachable, timeout=20, what=f"{app_id} reachable")
        mesh.reachable.add(app_id)  # once: a test may open its circuit breaker for good
    return mesh


def gaps(times: list[float]) -> list[float]:
    return [later - earlier for earlier, later in itertools.pairwise(times)]


# ---- (1) the app's retry policy -----------------------------------------------------------------


async def test_the_apps_yaml_retry_policy_retries_unavailable_with_its_back_off(ready: Mesh) -> None:
    key = ready.callee.script("recovers", [grpc.StatusCode.UNAVAILABLE] * 2)

    reply = await check(ready, "flaky", key)

    assert reply.status == SERVING
    times = ready.callee.calls[key]
    assert len(times) == 3  # the call and two retries
    assert all(0.18 <= gap < 1.0 for gap in gaps(times)), gaps(times)  # `duration: 200ms`, constant


async def test_the_retries_stop_after_max_retries(ready: Mesh) -> None:
    key = ready.callee.script("stays-down", [], then=grpc.StatusCode.UNAVAILABLE)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await check(ready, "flaky", key)

    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert caught.value.details() == "induced failure"  # the callee's own answer, relayed
    assert len(ready.callee.calls[key]) == 3  # maxRetries: 2


async def test_matching_grpc_status_codes_choose_what_is_retried(ready: Mesh) -> None:
    # `picky` retries RESOURCE_EXHAUSTED (8) only: the policy's own list replaces the default codes.
    listed = ready.callee.script("exhausted-twice", [grpc.StatusCode.RESOURCE_EXHAUSTED] * 2)
    unlisted = ready.callee.script("unavailable-once", [grpc.StatusCode.UNAVAILABLE])

    reply = await check(ready, "picky", listed)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await check(ready, "picky", unlisted)

    assert reply.status == SERVING and len(ready.callee.calls[listed]) == 3
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert len(ready.callee.calls[unlisted]) == 1


# ---- (2) answers are not retried ----------------------------------------------------------------


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INTERNAL,
    ],
)
async def test_non_retryable_codes_reach_the_caller_after_one_attempt(
    ready: Mesh, code: grpc.StatusCode
) -> None:
    key = ready.callee.script(f"answer-{code.name}", [], then=code)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await check(ready, "flaky", key)

    assert caught.value.code() == code
    assert len(ready.callee.calls[key]) == 1


# ---- (3) an open circuit breaker ----------------------------------------------------------------


async def test_an_open_circuit_breaker_is_not_retried_and_fails_fast(ready: Mesh) -> None:
    key = ready.callee.script("broken", [], then=grpc.StatusCode.UNAVAILABLE)

    # Two failures trip the sidecar's breaker; the chassis's third attempt meets it and stops there.
    with pytest.raises(grpc.aio.AioRpcError) as tripped:
        await check(ready, "fragile", key)
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await check(ready, "fragile", key)
    elapsed = time.monotonic() - started

    assert tripped.value.code() == grpc.StatusCode.UNAVAILABLE
    assert tripped.value.details() == "circuit breaker is open for app fragile"
    assert (refused.value.code(), refused.value.details()) == (
        tripped.value.code(),
        tripped.value.details(),
    )
    assert len(ready.callee.calls[key]) == 2  # nothing got past the open breaker
    assert elapsed < 0.5  # `steady` would have waited 5 x 300ms had the chassis retried the refusal


# ---- (4) the app's timeout bounds an attempt, the caller's deadline bounds them all -----------


async def test_the_yaml_timeout_cuts_an_attempt_and_the_chassis_retries_it(ready: Mesh) -> None:
    key = ready.callee.script("slow-once", [1.5])
    started = time.monotonic()

    reply = await check(ready, "slow", key)

    elapsed = time.monotonic() - started
    assert reply.status == SERVING
    assert len(ready.callee.calls[key]) == 2
    assert 0.35 <= elapsed < 1.2  # 300ms attempt + 100ms back-off + a quick answer, not the 1.5 s


async def test_deadline_exceeded_is_retried_only_while_the_callers_deadline_has_time_left(
    ready: Mesh,
) -> None:
    key = ready.callee.script("always-slow", [], then=1.5)
    started = time.monotonic()

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await check(ready, "slow", key, deadline=1.0)

    elapsed = time.monotonic() - started
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert elapsed < 1.4  # the caller's 1 s, not maxRetries 10 x (300ms + 100ms)
    assert 2 <= len(ready.callee.calls[key]) <= 3


# ---- (5) no stacking on the sidecar's own retries -------------------------------------------------

STORE = """\
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {{name: {name}}}
spec:
  type: state.sqlite
  version: v1
  metadata:
  - {{name: connectionString, value: "{name}.db"}}
  - {{name: busyTimeout, value: "{busy}"}}
---
"""


def save_state_calls(metrics_port: int) -> int:
    """SaveState calls the sidecar has served, whatever their status (its Prometheus endpoint)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    pattern = r'^dapr_grpc_io_server_completed_rpcs_total\{[^}]*grpc_server_method="SaveState"[^}]*\} (\S+)$'
    return sum(int(float(value)) for value in re.findall(pattern, text, re.MULTILINE))


@pytest.fixture
def keeper(tmp_path: Path) -> Iterator[tuple[Sidecar, int, ServiceSettings]]:
    """A sidecar with two SQLite stores: `guarded` has an outbound retry policy, `unguarded` none."""
    resources = write_default_resources(tmp_path / "components")
    (resources / "resiliency.yaml").write_text(RESILIENCY)
    stores = STORE.format(name="guarded", busy="100ms") + STORE.format(name="unguarded", busy="1500ms")
    (resources / "stores.yaml").write_text(stores)
    metrics_port = free_port()
    sidecar = Sidecar("keeper", tmp_path, resources=[resources])
    sidecar.argv += ["--metrics-port", str(metrics_port)]
    settings = ServiceSettings(
        app_id="keeper",
        dapr_grpc_port=sidecar.grpc_port,
        dapr_http_port=sidecar.http_port,
        resources_path=[resources],
    )
    try:
        yield sidecar.start(), metrics_port, settings
    finally:
        sidecar.stop()


@pytest.fixture
def write_locked(tmp_path: Path) -> Iterator[None]:
    """Both stores' databases write-locked by another connection, so every write the sidecar tries fails."""
    held = []
    for name in ("guarded", "unguarded"):
        conn = sqlite3.connect(tmp_path / f"{name}.db", isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        held.append(conn)
    yield
    for conn in held:
        conn.rollback()
        conn.close()


async def test_the_chassis_makes_one_attempt_where_the_sidecar_retries(
    keeper: tuple[Sidecar, int, ServiceSettings], write_locked: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, metrics_port, settings = keeper
    # A client deadline shorter than the sidecar's retries: the chassis sees DEADLINE_EXCEEDED, a code
    # its built-in policy would retry, each retry starting the sidecar's retries over again.
    monkeypatch.setenv("DAPR_API_TIMEOUT_SECONDS", "0.5")
    before = save_state_calls(metrics_port)
    async with Dapr(settings) as dapr:
        with pytest.raises(DaprError) as guarded:
            await dapr.call(lambda c: c.save_state("guarded", "k", "v"), component="guarded")
        await wait_for(lambda: save_state_calls(metrics_port) > before, what="the guarded save counted")
        await asyncio.sleep(1.0)  # room for a second attempt, were there one
        after_guarded = save_state_calls(metrics_port)

        with pytest.raises(DaprError) as unguarded:
            await dapr.call(lambda c: c.save_state("unguarded", "k", "v"), component="unguarded")
        await asyncio.sleep(0.5)
        after_unguarded = save_state_calls(metrics_port)

    assert grpc_code_of(guarded.value) == grpc_code_of(unguarded.value) == grpc.StatusCode.DEADLINE_EXCEEDED
    assert after_guarded - before == 1  # the sidecar's `steady` policy retried; the chassis did not
    assert after_unguarded - after_guarded >= 2  # without a sidecar policy the chassis does retry


# ---- (6) a restarting sidecar -------------------------------------------------------------------


async def test_a_call_made_while_the_sidecar_restarts_completes_once_it_is_back(tmp_path: Path) -> None:
    resources = write_default_resources(tmp_path / "components")
    sidecar = Sidecar("phoenix", tmp_path, resources=[resources]).start()
    ports = {"grpc_port": sidecar.grpc_port, "http_port": sidecar.http_port}
    settings = ServiceSettings(
        app_id="phoenix", dapr_grpc_port=sidecar.grpc_port, dapr_http_port=sidecar.http_port
    )
    restarted: Sidecar | None = None
    try:
        async with Dapr(settings) as dapr:
            await dapr.call(lambda c: c.save_state("statestore", "k", "before"), component="statestore")
            sidecar.stop()
            started = time.monotonic()
            saving = asyncio.create_task(
                dapr.call(lambda c: c.save_state("statestore", "k", "during"), component="statestore")
            )
            await asyncio.sleep(4.0)  # longer than the built-in retries would keep trying
            assert not saving.done()
            restarted = Sidecar("phoenix", tmp_path, resources=[resources], **ports)
            await asyncio.to_thread(restarted.start)
            await asyncio.wait_for(saving, timeout=30)
            elapsed = time.monotonic() - started
            stored = await dapr.call(lambda c: c.get_state("statestore", "k"), component="statestore")
    finally:
        sidecar.stop()
        if restarted is not None:
            restarted.stop()

    assert stored.data == b"during"
    assert elapsed >= 4.0


# ---- (7) invalid YAML, and where the YAML comes from ------------------------------------------


def test_invalid_resiliency_yaml_is_one_config_error_naming_file_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "resiliency.yaml"
    bad.write_text(RESILIENCY.replace("maxRetries: 2", "maxRetries: twice"))
    settings = ServiceSettings(app_id="caller", resources_path=[tmp_path])

    with pytest.raises(ConfigError) as from_dapr:
        Dapr(settings).load_policies()
    with pytest.raises(ConfigError) as from_channel:
        channel("flaky", settings=settings)

    message = str(from_dapr.value)
    assert message == str(from_channel.value)
    assert "\n" not in message
    assert message.startswith(f"{bad.resolve()}: spec.policies.retries.twice.maxRetries: expected an integer")


def test_out_of_scope_policies_do_not_apply(tmp_path: Path) -> None:
    (tmp_path / "resiliency.yaml").write_text(RESILIENCY)
    write_default_resources(tmp_path)
    mine = ServiceSettings(app_id="caller", resources_path=[tmp_path])
    other = ServiceSettings(app_id="grading", resources_path=[tmp_path])

    policies, unscoped = Dapr(mine).load_policies(), Dapr(other).load_policies()

    assert policies.app_retry("flaky") is not None and policies.sidecar_retries("guarded")
    assert unscoped.app_retry("flaky") is None and not unscoped.sidecar_retries("guarded")
    assert not policies.sidecar_retries("statestore")


def test_the_resources_path_reaches_settings_and_launched_apps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHASSIS_RESOURCES_PATH", f"{tmp_path / 'a'}:{tmp_path / 'b'}")
    assert ServiceSettings(app_id="x").resources_path == [tmp_path / "a", tmp_path / "b"]
    monkeypatch.delenv("CHASSIS_RESOURCES_PATH")
    assert ServiceSettings(app_id="x").resources_path == []

    launch = AppLaunch(
        app_id="x",
        command=["true"],
        app_dir=tmp_path,
        sidecar_dir=tmp_path,
        ports=Ports(1, 2, 3),
        resources=[Path("dapr/components")],
    )
    assert launch.app_env()["CHASSIS_RESOURCES_PATH"] == str(tmp_path.resolve() / "dapr" / "components")
    # The run file's own env wins, as in Dapr.
    overridden = AppLaunch(**{**vars(launch), "env": {"CHASSIS_RESOURCES_PATH": "/elsewhere"}})
    assert overridden.app_env()["CHASSIS_RESOURCES_PATH"] == "/elsewhere"


def test_default_policy_names_follow_the_component_type_daprd_knows(tmp_path: Path) -> None:
    (tmp_path / "resiliency.yaml").write_text("""\
apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata: {name: defaults}
spec:
  policies:
    retries:
      DefaultStatestoreComponentOutboundRetryPolicy: {maxRetries: 3}
      DefaultAppRetryPolicy: {policy: exponential, maxRetries: 4}
""")
    write_default_resources(tmp_path)
    # A type only daprd knows: the sidecar's job to refuse, not the chassis's.
    cosmos = STORE.format(name="cosmos", busy="1s").replace("state.sqlite", "state.azure.cosmosdb")
    (tmp_path / "cosmos.yaml").write_text(cosmos)

    policies = Dapr(ServiceSettings(app_id="caller", resources_path=[tmp_path])).load_policies()

    assert policies.sidecar_retries("statestore") and policies.sidecar_retries("cosmos")
    assert not policies.sidecar_retries("pubsub")
    grading = policies.app_retry("grading")
    assert grading is not None and grading.policy == "exponential" and grading.max_retries == 4
