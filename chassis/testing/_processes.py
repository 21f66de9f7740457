"""Real processes for tests: an embedded sidecar and an app beside it, started, awaited and reaped.

Output goes to log files (never a pipe that could fill and block the child); a process that dies
while starting raises with the tail of its log, so a failing test says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Self, TypeVar, overload

import grpc
import pytest
from dapr.proto.runtime.v1 import appcallback_pb2_grpc as callback_grpc
from dapr.proto.runtime.v1 import dapr_pb2_grpc as dapr_grpc
from dapr.proto.runtime.v1 import metadata_pb2
from google.protobuf import empty_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

T = TypeVar("T")

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0

STATE_STORE_YAML = """\
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: statestore
spec:
  type: state.sqlite
  version: v1
  metadata:
  - name: connectionString
    value: "state.db"
"""

# Short lease and back-off cap so redelivery tests finish in seconds, not Dapr's default minute.
PUBSUB_YAML = """\
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: pubsub
spec:
  type: pubsub.sqlite
  version: v1
  metadata:
  - name: connectionString
    value: "pubsub.db"
  - name: processingTimeout
    value: "10s"
  - name: redeliverInterval
    value: "1s"
"""


_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST_PORT = 10000  # above every server this project's tests talk to
_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, chosen below the OS's ephemeral range when it can be.

    A port the OS hands out for `bind(0)` comes from the same range as the source ports of outgoing
    connections, so a busy client (a Kafka consumer, say) can take it before the process it is meant
    for listens on it. Below that range only processes that ask for a port by number can.
    """
    lowest_ephemeral = _lowest_ephemeral_port()
    if lowest_ephemeral - _LOWEST_PORT < 1000:
        return _os_free_port()
    for _ in range(100):
        port = random.randrange(_LOWEST_PORT, lowest_ephemeral)
        if port not in _handed_out and _bindable(port):
            _handed_out.add(port)
            return port
    return _os_free_port()


def _lowest_ephemeral_port() -> int:
    try:
        return int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return _LOWEST_PORT  # unknown: let the OS choose


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _os_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def write_default_resources(folder: Path) -> Path:
    """Write the embedded components (statestore + pubsub, SQLite files beside the sidecar's cwd)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "statestore.yaml").write_text(STATE_STORE_YAML)
    (folder / "pubsub.yaml").write_text(PUBSUB_YAML)
    return folder


@overload
async def wait_for(
    predicate: Callable[[], Awaitable[T]],
    timeout: float = ...,  # noqa: ASYNC109
    interval: float = ...,
    what: str = ...,
) -> T: ...
@overload
async def wait_for(
    predicate: Callable[[], T],
    timeout: float = ...,  # noqa: ASYNC109
    interval: float = ...,
    what: str = ...,
) -> T: ...
async def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 10.0,  # noqa: ASYNC109  # bounds the polling, not a single await
    interval: float = 0.05,
    what: str = "",
) -> Any:
    """Poll `predicate` (sync or async) until it returns something truthy; return that value."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        value = await result if inspect.isawaitable(result) else result
        if value:
            return value
        if time.monotonic() >= deadline:
            last = repr(value) if len(repr(value)) <= 200 else repr(value)[:200] + "..."
            raise TimeoutError(
                f"not true after {timeout:g}s: {what or getattr(predicate, '__name__', predicate)} "
                f"(last result: {last})"
            )
        await asyncio.sleep(interval)


def requires_server(name: str, host: str, port: int, how_to_start: str) -> None:
    """Skip (or, under CI=true, fail) the calling test unless `host:port` accepts TCP connections."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return
    except OSError:
        message = f"{name} not reachable at {host}:{port}; start it with: {how_to_start}"
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


class ManagedProcess:
    """A child process in its own process group, logging to a file, reaped by `stop`."""

    def __init__(self, label: str, argv: Sequence[str], *, cwd: Path, env: Mapping[str, str]) -> None:
        self.label = label
        self.argv = list(argv)
        self.cwd = cwd
        self.env = dict(env)
        self.log_path = cwd / f"{label}.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def process(self) -> subprocess.Popen[bytes]:
        if self._process is None:
            raise RuntimeError(f"{self.label} was not started")
        return self._process

    @property
    def pid(self) -> int:
        return self.process.pid

    def spawn(self) -> None:
        self.cwd.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            self.argv,
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: teardown reaps whatever it spawned too
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_until(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll `ready` until true; raise with the log's tail if the process exits or time runs out."""
        deadline = time.monotonic() + timeout
        while not ready():
            code = self.process.poll()
            if code is not None:
                raise RuntimeError(f"{self.label} exited with {code} before {what}:\n{self._tail()}")
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{self.label} not {what} after {timeout:g}s:\n{self._tail()}")
            time.sleep(0.05)

    def terminate(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM the process and wait for its exit code (SIGKILL if it outlives `timeout`)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.process.wait()

    def kill(self) -> None:
        """SIGKILL the process group (what a crash looks like), then reap."""
        if self._process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._process.pid, signal.SIGKILL)
        self._process.wait()

    def stop(self) -> None:
        """Teardown: terminate politely, then make sure nothing of the group is left."""
        if self._process is not None:
            self.terminate()
            self.kill()
        if self._log is not None:
            self._log.close()
            self._log = None

    def _tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])


class Sidecar(ManagedProcess):
    """`python -m chassis.sidecar` for one app id, on free ports, in `workdir` (the SQLite files' home)."""

    def __init__(
        self,
        app_id: str,
        workdir: Path,
        *,
        app_port: int | None = None,
        resources: Sequence[Path] = (),
        env: Mapping[str, str] | None = None,
        grpc_port: int | None = None,
        http_port: int | None = None,
    ) -> None:
        self.app_id = app_id
        self.app_port = app_port
        # Fixed ports let a test restart a sidecar where its app (and its clients) expect it.
        self.grpc_port = grpc_port or free_port()
        self.http_port = http_port or free_port()
        workdir = workdir.resolve()  # the process starts in it: a relative path would resolve twice
        self.resources = list(resources) or [write_default_resources(workdir / "components")]
        argv = [sys.executable, "-m", "chassis.sidecar", "--app-id", app_id]
        if app_port is not None:
            argv += ["--app-port", str(app_port), "--app-protocol", "grpc"]
        argv += ["--dapr-grpc-port", str(self.grpc_port), "--dapr-http-port", str(self.http_port)]
        for folder in self.resources:
            argv += ["--resources-path", str(folder)]
        super().__init__(f"sidecar-{app_id}", argv, cwd=workdir, env={**os.environ, **(env or {})})

    def start(self, timeout: float = START_TIMEOUT) -> Self:
        self.spawn()
        self.wait_until(self.healthy, timeout, "healthy (GET /v1.0/healthz/outbound -> 204)")
        return self

    def healthy(self) -> bool:
        """The outbound healthz: 204 once the components are loaded (what the Dapr SDK waits for)."""
        return self._answers_204("/v1.0/healthz/outbound")

    def sees_app(self) -> bool:
        """The full healthz: 204 once the sidecar has connected to its app (and subscribed for it)."""
        return self._answers_204("/v1.0/healthz")

    def _answers_204(self, path: str) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=1) as response:
                return bool(response.status == 204)
        except (urllib.error.URLError, OSError):
            return False

    def app_env(self) -> dict[str, str]:
        """What an app (or a Dapr client in the test) needs to reach this sidecar."""
        return {"DAPR_GRPC_PORT": str(self.grpc_port), "DAPR_HTTP_PORT": str(self.http_port)}


class AppProcess(ManagedProcess):
    """`python -m <module>` as a chassis service beside a sidecar; started means gRPC health SERVING."""

    def __init__(
        self,
        module: str,
        *,
        app_id: str,
        app_port: int,
        workdir: Path,
        sidecar: Sidecar | None = None,
        pythonpath: Sequence[Path] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.module = module
        self.app_id = app_id
        self.app_port = app_port
        self.sidecar = sidecar
        paths = [str(p) for p in pythonpath]
        if os.environ.get("PYTHONPATH"):
            paths.append(os.environ["PYTHONPATH"])
        full_env = {
            **os.environ,
            "APP_ID": app_id,
            "APP_PORT": str(app_port),
            "PYTHONPATH": os.pathsep.join(paths),
            **(sidecar.app_env() if sidecar else {}),
            **(env or {}),
        }
        super().__init__(f"app-{app_id}", [sys.executable, "-m", module], cwd=workdir, env=full_env)

    def start(self, timeout: float = START_TIMEOUT) -> Self:
        """Spawn; return once SERVING and, beside a sidecar, once the sidecar holds its subscriptions.

        Until the sidecar has subscribed, an event published to the app's topics would not reach it,
        so a test that publishes right after `start` would race the sidecar.
        """
        self.spawn()
        self.wait_until(self.serving, timeout, "SERVING (grpc.health.v1)")
        if self.sidecar is not None:
            self.wait_until(self.subscribed, timeout, "subscribed by its sidecar (GetMetadata)")
        return self

    def subscribed(self) -> bool:
        """Every (pubsub, topic) the app lists is in its sidecar's metadata."""
        if self.sidecar is None:
            return True
        try:
            with grpc.insecure_channel(f"127.0.0.1:{self.app_port}") as channel:
                app = callback_grpc.AppCallbackStub(channel)  # type: ignore[no-untyped-call]
                listed = app.ListTopicSubscriptions(empty_pb2.Empty(), timeout=2)
            with grpc.insecure_channel(f"127.0.0.1:{self.sidecar.grpc_port}") as channel:
                dapr = dapr_grpc.DaprStub(channel)  # type: ignore[no-untyped-call]
                metadata = dapr.GetMetadata(metadata_pb2.GetMetadataRequest(), timeout=2)
        except grpc.RpcError:
            return False
        wanted = {(s.pubsub_name, s.topic) for s in listed.subscriptions}
        return wanted <= {(s.pubsub_name, s.topic) for s in metadata.subscriptions}

    def serving(self) -> bool:
        with grpc.insecure_channel(f"127.0.0.1:{self.app_port}") as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
            except grpc.RpcError:
                return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
