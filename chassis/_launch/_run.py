"""`chassis run`: one app beside an embedded sidecar, with the flags, environment and output of `dapr run`."""

from __future__ import annotations

import asyncio
import signal
from dataclasses import dataclass, field
from pathlib import Path

from chassis._launch._app import AppLaunch, Ports
from chassis._launch._health import sidecar_healthy, wait_for
from chassis._launch._procs import (
    Child,
    Output,
    SignalTrap,
    Supervisor,
    describe_exit,
    exit_status,
    free_ports,
    race,
)
from chassis._protogen import ensure_generated, find_project_root

UP_MESSAGE = "You're up and running! Both Dapr and your app logs will appear here."
APP_LABEL = "== APP == "
DAPR_LABEL = "== DAPR == "
SIDECAR_START_TIMEOUT = 30.0
EMBEDDED = Path("dapr") / "components" / "embedded"


@dataclass(frozen=True)
class RunOptions:
    """The `dapr run` flags chassis honours; a port left as None is picked free."""

    app_id: str
    command: list[str]
    cwd: Path
    app_port: int | None = None
    app_protocol: str = "grpc"
    dapr_grpc_port: int | None = None
    dapr_http_port: int | None = None
    resources: list[Path] = field(default_factory=list)


def plan(opts: RunOptions) -> AppLaunch:
    """Resolve ports and paths. Sidecars run in the project root, so every app shares its data files."""
    root = find_project_root(opts.cwd)
    resources = [(opts.cwd / path).resolve() for path in opts.resources] or _default_resources(root)
    spare = iter(free_ports(3))
    ports = Ports(
        app=opts.app_port or next(spare),
        dapr_grpc=opts.dapr_grpc_port or next(spare),
        dapr_http=opts.dapr_http_port or next(spare),
    )
    return AppLaunch(
        app_id=opts.app_id,
        command=opts.command,
        app_dir=opts.cwd,
        sidecar_dir=root or opts.cwd,
        ports=ports,
        app_protocol=opts.app_protocol,
        resources=resources,
        gen_dir=ensure_generated(root) if root else None,
    )


def _default_resources(root: Path | None) -> list[Path]:
    """The project's embedded profile when it has one; otherwise the sidecar's own default applies."""
    embedded = root / EMBEDDED if root else None
    return [embedded] if embedded and embedded.is_dir() else []


async def run(opts: RunOptions, out: Output) -> int:
    """Start the sidecar, then the app; return the app's exit status once everything is stopped."""
    launch = plan(opts)
    supervisor = Supervisor(out)
    trap = SignalTrap(on_repeat=supervisor.kill_all)
    with trap.installed():
        try:
            return await _supervise(launch, supervisor, trap, out)
        finally:
            await supervisor.close()


async def _supervise(launch: AppLaunch, supervisor: Supervisor, trap: SignalTrap, out: Output) -> int:
    ports = launch.ports
    out.line(
        f"Starting Dapr with id {launch.app_id}. HTTP Port: {ports.dapr_http}. gRPC Port: {ports.dapr_grpc}. "
        f"App Port: {ports.app}."
    )
    sidecar = await supervisor.start(launch.sidecar_command(DAPR_LABEL))
    failed = await _await_sidecar(sidecar, ports.dapr_http, trap, out)
    if failed is not None:
        return failed
    if not launch.command:
        out.line(UP_MESSAGE)
        return await _sidecar_only(sidecar, trap, out)
    app = await supervisor.start(launch.app_command(APP_LABEL))
    out.line(UP_MESSAGE)
    return await _until_app_exits(app, sidecar, trap, supervisor, out)


async def _await_sidecar(sidecar: Child, http_port: int, trap: SignalTrap, out: Output) -> int | None:
    """None once the sidecar is healthy; otherwise the exit status `chassis run` should end with."""
    winner = await race(
        wait_for(lambda: sidecar_healthy(http_port)),
        sidecar.exited,
        trap.wait(),
        within=SIDECAR_START_TIMEOUT,
    )
    if winner == 0:
        return None
    if winner == 1:
        out.line(f"{DAPR_LABEL}sidecar {describe_exit(sidecar.exited.result())} before it was healthy")
        return 1
    if winner == 2:
        return exit_status(-(trap.received or 0))
    waited = f"{SIDECAR_START_TIMEOUT:.0f}s"
    out.line(f"{DAPR_LABEL}sidecar not healthy after {waited} (GET /v1.0/healthz/outbound)")
    return 1


async def _sidecar_only(sidecar: Child, trap: SignalTrap, out: Output) -> int:
    if await race(sidecar.exited, trap.wait()) == 0:
        out.line(f"{DAPR_LABEL}sidecar {describe_exit(sidecar.exited.result())}")
        return 1
    return 0


async def _until_app_exits(
    app: Child, sidecar: Child, trap: SignalTrap, supervisor: Supervisor, out: Output
) -> int:
    winner = await race(app.exited, sidecar.exited, trap.wait())
    if winner == 1:
        out.line(f"{DAPR_LABEL}sidecar {describe_exit(sidecar.exited.result())}; stopping the app")
        await app.stop(grace=supervisor.grace)
        return 1
    if winner == 2:
        received = trap.received or signal.SIGTERM
        out.line(f"{signal.Signals(received).name} received: stopping the app (once more to kill it now)")
        # Forward what we received (Ctrl-C stays SIGINT), so the app runs its own graceful shutdown.
        await app.stop(received, supervisor.grace)
    code = await app.exited
    out.line(f"{APP_LABEL}app {describe_exit(code)}")
    return exit_status(code)


def main_run(opts: RunOptions) -> int:
    return asyncio.run(run(opts, Output()))
