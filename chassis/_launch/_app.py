"""One app beside its sidecar, as `dapr run` starts it: the two commands and the app's environment."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from chassis._launch._procs import Command
from chassis._settings import RESOURCES_PATH_ENV
from chassis._telemetry import TRACE_FILE_ENV

SIDECAR_MODULE = "chassis.sidecar"


@dataclass(frozen=True)
class Ports:
    """The three ports of one app: its own, and its sidecar's gRPC and HTTP APIs."""

    app: int
    dapr_grpc: int
    dapr_http: int


@dataclass(frozen=True)
class AppLaunch:
    """Everything needed to start one app and its sidecar."""

    app_id: str
    command: list[str]
    app_dir: Path
    sidecar_dir: Path
    ports: Ports
    app_protocol: str = "grpc"
    resources: list[Path] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    gen_dir: Path | None = None

    def sidecar_command(self, label: str) -> Command:
        """`python -m chassis.sidecar` with the daprd flags `dapr run` would pass."""
        argv = [sys.executable, "-m", SIDECAR_MODULE, "--app-id", self.app_id]
        argv += ["--app-port", str(self.ports.app), "--app-protocol", self.app_protocol]
        argv += ["--dapr-grpc-port", str(self.ports.dapr_grpc), "--dapr-http-port", str(self.ports.dapr_http)]
        for path in self.resources:
            argv += ["--resources-path", str(path)]
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.setdefault(TRACE_FILE_ENV, self.trace_file())
        return Command(label, argv, self.sidecar_dir, env)

    def trace_file(self) -> str:
        """Where the app and its sidecar append spans unless told otherwise: `chassis trace` reads it."""
        return str(self.sidecar_dir.resolve() / ".chassis" / "traces.jsonl")

    def sidecar_resources(self) -> list[Path]:
        """The folders the sidecar reads, absolute (the app runs in another folder).

        The given ones, else the sidecar's own default: `components` in its folder, else ~/.dapr/components.
        """
        if self.resources:
            return [(self.sidecar_dir / path).resolve() for path in self.resources]
        for default in (self.sidecar_dir / "components", Path.home() / ".dapr" / "components"):
            if default.is_dir():
                return [default.resolve()]
        return []

    def app_command(self, label: str) -> Command:
        return Command(label, list(self.command), self.app_dir, self.app_env())

    def app_env(self) -> dict[str, str]:
        """The variables `dapr run` exports, then the run file's own `env` (which wins, as in Dapr)."""
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        env.update(
            DAPR_GRPC_PORT=str(self.ports.dapr_grpc),
            DAPR_HTTP_PORT=str(self.ports.dapr_http),
            APP_ID=self.app_id,
            APP_PORT=str(self.ports.app),
            APP_PROTOCOL=self.app_protocol,
        )
        env.setdefault(TRACE_FILE_ENV, self.trace_file())
        if resources := self.sidecar_resources():
            env[RESOURCES_PATH_ENV] = os.pathsep.join(str(path) for path in resources)
        env.update(self.env)
        # `python` in a command means the interpreter chassis runs on, as if its venv were activated.
        env["PATH"] = prepend_path(str(Path(sys.executable).parent), env.get("PATH", ""))
        if self.gen_dir is not None:
            env["PYTHONPATH"] = prepend_path(str(self.gen_dir), env.get("PYTHONPATH", ""))
        return env


def prepend_path(entry: str, search_path: str) -> str:
    """`entry` first on an os.pathsep-separated search path (PATH, PYTHONPATH)."""
    return os.pathsep.join([entry, *(p for p in search_path.split(os.pathsep) if p)])
