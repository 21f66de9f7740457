"""Helpers for the embedded sidecar's tests: real `python -m chassis.sidecar` processes on free ports.

Each sidecar runs in a tmp directory (its SQLite files and registry live there), logs to a file, and
is SIGTERMed (then SIGKILLed) and reaped at teardown. Clients reach it through DAPR_GRPC_PORT /
DAPR_HTTP_PORT, exactly as the official SDK does.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from chassis.testing import free_port

REPO = Path(__file__).resolve().parents[2]
EMBEDDED_COMPONENTS = REPO / "dapr" / "components" / "embedded"
APPS = Path(__file__).resolve().parent / "apps"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
_CLEARED = ("DAPR_", "OTEL_", "CHASSIS_")

# A broker with a short lease so "handler never answered / sidecar killed" redelivers in seconds.
FAST_PUBSUB_YAML = """\
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: pubsub
spec:
  type: pubsub.sqlite
  version: v1
  metadata:
  - name: connectionString
    value: "data/pubsub.db"
  - name: processingTimeout
    value: "2s"
  - name: redeliverInterval
    value: "500ms"
"""


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The test runner's environment without Dapr/OTel/chassis settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_CLEARED)}
    env["PYTHONUNBUFFERED"] = "1"
    return env | (extra or {})


def embedded_components(folder: Path) -> Path:
    """A copy of the shipped dapr/components/embedded resources."""
    shutil.copytree(EMBEDDED_COMPONENTS, folder, dirs_exist_ok=True)
    return folder


def fast_components(folder: Path) -> Path:
    """The embedded state store plus a broker with a 2 s lease."""
    embedded_components(folder)
    (folder / "pubsub.yaml").write_text(FAST_PUBSUB_YAML)
    return folder


def http_status(port: int, path: str) -> int | None:
    """Status of GET http://127.0.0.1:<port><path>, None when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except OSError:
        return None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every JSON line written so far (a half-written last line is ignored)."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            records.append(json.loads(line))
    return records


def wait_until(predicate: Callable[[], Any], *, timeout: float = 15.0, what: str = "condition") -> Any:
    """Poll `predicate` until it returns something truthy; return it (TimeoutError naming `what`)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached after {timeout:g}s")
        time.sleep(0.05)


@dataclass
class Process:
    """A child process in its own session, logging to a file."""

    label: str
    argv: list[str]
    cwd: Path
    env: dict[str, str]
    popen: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.cwd / f"{self.label}.log"

    def spawn(self) -> None:
        self.cwd.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, ready: Callable[[], bool], what: str, timeout: float = START_TIMEOUT) -> None:
        """Poll `ready`; fail with the log if the process dies or time runs out."""
        assert self.popen is not None
        deadline = time.monotonic() + timeout
        while not ready():
            if self.popen.poll() is not None:
                pytest.fail(f"{self.label} exited with {self.popen.returncode} before {what}:\n{self.log()}")
            if time.monotonic() > deadline:
                pytest.fail(f"{self.label} not {what} after {timeout:g}s:\n{self.log()}")
            time.sleep(0.05)

    def terminate(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM and wait for the exit code (SIGKILL if it hangs)."""
        assert self.popen is not None
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        """SIGKILL the whole session (what a crash looks like) and reap."""
        if self.popen is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()


@dataclass
class RunningSidecar(Process):
    """One sidecar process and the ports it serves."""

    app_id: str = ""
    grpc_port: int = 0
    http_port: int = 0

    def client_env(self) -> dict[str, str]:
        """What the Dapr SDK needs to reach this sidecar."""
        return {"DAPR_GRPC_PORT": str(self.grpc_port), "DAPR_HTTP_PORT": str(self.http_port)}

    def healthy(self, path: str = "/v1.0/healthz/outbound") -> bool:
        return http_status(self.http_port, path) == 204


def sidecar_process(
    app_id: str,
    cwd: Path,
    *,
    app_port: int | None = None,
    resources: Sequence[Path] = (),
    env: dict[str, str] | None = None,
    grpc_port: int | None = None,
    http_port: int | None = None,
    label: str | None = None,
) -> RunningSidecar:
    """A not-yet-started sidecar (ports chosen now, so a restart can reuse them)."""
    grpc_port = grpc_port or free_port()
    http_port = http_port or free_port()
    argv = [sys.executable, "-m", "chassis.sidecar", "--app-id", app_id]
    argv += ["--dapr-grpc-port", str(grpc_port), "--dapr-http-port", str(http_port), "--log-level", "debug"]
    if app_port is not None:
        argv += ["--app-port", str(app_port), "--app-protocol", "grpc"]
    for path in resources or [embedded_components(cwd / "components")]:
        argv += ["--resources-path", str(path)]
    return RunningSidecar(
        label or f"sidecar-{app_id}",
        argv,
        cwd,
        child_env(env),
        app_id=app_id,
        grpc_port=grpc_port,
        http_port=http_port,
    )


def stop_all(processes: Sequence[Process]) -> None:
    """Teardown: SIGTERM politely, then SIGKILL whatever is left of each session."""
    for process in reversed(processes):
        if process.popen is None:
            continue
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.terminate()
        process.kill()


def app_process(script: str, port: int, cwd: Path, env: dict[str, str] | None = None) -> Process:
    """A test app (tests/sidecar/apps/<script>) on `port`, not yet started."""
    argv = [sys.executable, str(APPS / script)]
    return Process(
        f"app-{Path(script).stem}-{port}", argv, cwd, child_env({"APP_PORT": str(port)} | (env or {}))
    )


def port_accepts(port: int) -> bool:
    """True once something listens on 127.0.0.1:<port>."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0
