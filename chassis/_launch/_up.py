"""`chassis up`: every app of a multi-app run file beside its own sidecar, checked ready, stopped together.

All sidecars run in the run file's folder, so they share one app registry and one set of data files.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from pathlib import Path

from chassis._launch import _runfile
from chassis._launch._app import AppLaunch, Ports
from chassis._launch._health import WITH_APP, app_serving, sidecar_healthy, wait_for
from chassis._launch._procs import (
    Child,
    Command,
    LaunchError,
    Output,
    SignalTrap,
    Supervisor,
    describe_exit,
    free_ports,
    race,
)
from chassis._protogen import ensure_generated, find_project_root

READY_MESSAGE = "All apps are up."
STATE_FILE = Path(".chassis") / "up.json"


def plan(run_file: _runfile.RunFile) -> list[AppLaunch]:
    """Give every app its ports (free ones where the file names none) and the generated protos."""
    root = find_project_root(run_file.base_dir)
    gen_dir = ensure_generated(root) if root else None
    spare = iter(free_ports(3 * len(run_file.apps)))
    return [
        AppLaunch(
            app_id=entry.app_id,
            command=entry.command,
            app_dir=entry.app_dir,
            sidecar_dir=run_file.base_dir,
            ports=Ports(
                app=entry.app_port or next(spare),
                dapr_grpc=entry.dapr_grpc_port or next(spare),
                dapr_http=entry.dapr_http_port or next(spare),
            ),
            app_protocol=entry.app_protocol,
            resources=entry.resources,
            env=entry.env,
            gen_dir=gen_dir,
        )
        for entry in run_file.apps
    ]


class Platform:
    """The apps of one run file and their sidecars, as processes this object owns."""

    def __init__(self, run_file: _runfile.RunFile, out: Output, grace: float = 10.0) -> None:
        self.run_file = run_file
        self.out = out
        self.launches = plan(run_file)
        self.supervisor = Supervisor(out, grace)
        self.sidecars: dict[str, Child] = {}
        self.apps: dict[str, Child] = {}
        self.stopping = False
        self.died = asyncio.Event()
        self._state_path = run_file.base_dir / STATE_FILE

    async def start(self) -> None:
        """Start every sidecar, and each app once its sidecar is healthy (as `dapr run` orders them)."""
        self._write_state()
        for launch in self.launches:
            ports = launch.ports
            self.out.line(
                f"== {launch.app_id} == app port {ports.app}, dapr gRPC port {ports.dapr_grpc}, "
                f"dapr HTTP port {ports.dapr_http}"
            )
        await asyncio.gather(*(self._start_one(launch) for launch in self.launches))

    async def _start_one(self, launch: AppLaunch) -> None:
        label = f"== {launch.app_id} == "
        sidecar = await self._spawn(launch.sidecar_command(label + "[dapr] "), "sidecar", launch.app_id)
        self.sidecars[launch.app_id] = sidecar
        healthy = wait_for(lambda: sidecar_healthy(launch.ports.dapr_http))
        if await race(healthy, sidecar.exited) != 0 or not launch.command:
            return
        try:
            self.apps[launch.app_id] = await self._spawn(launch.app_command(label), "app", launch.app_id)
        except LaunchError as err:  # one app that cannot start does not stop the others
            self.out.line(f"{label}app {err}")
            self.died.set()

    async def _spawn(self, command: Command, kind: str, app_id: str) -> Child:
        child = await self.supervisor.start(command)
        child.exited.add_done_callback(lambda _: self._report_exit(app_id, kind, child))
        return child

    def _report_exit(self, app_id: str, kind: str, child: Child) -> None:
        """A child that dies while the platform runs is reported; the others keep running."""
        if self.stopping or child.exited.cancelled():
            return
        self.out.line(f"== {app_id} == {kind} (pid {child.pid}) {describe_exit(child.exited.result())}")
        self.died.set()

    async def ready(self) -> None:
        """Returns once every app's health check says SERVING and every sidecar's healthz answers 204."""
        await asyncio.gather(*(self._ready_one(launch) for launch in self.launches))

    async def _ready_one(self, launch: AppLaunch) -> None:
        if not launch.command:
            await wait_for(lambda: sidecar_healthy(launch.ports.dapr_http))
            return
        await wait_for(lambda: app_serving(launch.ports.app, launch.app_protocol))
        # The full healthz answers once the sidecar has reached the app and subscribed for it, so no
        # event published after "All apps are up." can miss a subscriber.
        await wait_for(lambda: sidecar_healthy(launch.ports.dapr_http, WITH_APP))

    async def all_exited(self) -> None:
        """Returns once no child is left running (the platform has nothing more to supervise)."""
        while True:
            pending = [child.exited for child in self.supervisor.children if not child.exited.done()]
            if not pending:
                return
            await asyncio.wait(pending)

    async def stop(self) -> None:
        """Everything else first, then apps (draining in-flight work), then the sidecars they used."""
        self.stopping = True
        sidecars = list(self.sidecars.values())
        apps = list(self.apps.values())
        others = [c for c in self.supervisor.children if c not in sidecars and c not in apps]
        for group in (others, apps, sidecars):
            await self.supervisor.stop(group)
        await self.supervisor.close()
        self._remove_state()

    def _write_state(self) -> None:
        apps = [
            {
                "appID": launch.app_id,
                "appPort": launch.ports.app,
                "daprGRPCPort": launch.ports.dapr_grpc,
                "daprHTTPPort": launch.ports.dapr_http,
            }
            for launch in self.launches
        ]
        state = {"pid": os.getpid(), "runFile": str(self.run_file.path), "apps": apps}
        self._state_path.parent.mkdir(parents=True, exist_ok=True)
        scratch = self._state_path.with_suffix(f".{os.getpid()}.tmp")
        scratch.write_text(json.dumps(state, indent=2), encoding="utf-8")
        scratch.replace(self._state_path)

    def _remove_state(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            if json.loads(self._state_path.read_text(encoding="utf-8")).get("pid") == os.getpid():
                self._state_path.unlink()


async def up(run_file: _runfile.RunFile, out: Output) -> int:
    """Run the platform until Ctrl-C/SIGTERM (exit 0), or until every process has died (exit 1)."""
    platform = Platform(run_file, out)
    trap = SignalTrap(on_repeat=platform.supervisor.kill_all)
    with trap.installed():
        try:
            winner = await race(_serve(platform), trap.wait())
            if winner == 1:
                name = signal.Signals(trap.received or signal.SIGTERM).name
                out.line(
                    f"{name} received: stopping every app, then the sidecars (once more to kill them now)"
                )
        finally:
            await platform.stop()
    return 0 if winner == 1 else 1


async def _serve(platform: Platform) -> None:
    await platform.start()
    if await race(platform.ready(), platform.all_exited()) == 0:
        platform.out.line(READY_MESSAGE)
    await platform.all_exited()
    platform.out.line("every process has exited; stopping")


def main_up(path: Path) -> int:
    return asyncio.run(up(_runfile.load(path), Output()))
