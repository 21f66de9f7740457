"""`chassis demo`: the README's first command. Start the platform, walk a learner through it, stop it all."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from chassis._launch import _runfile
from chassis._launch._app import prepend_path
from chassis._launch._procs import Command, Output, SignalTrap, describe_exit, exit_status, race
from chassis._launch._up import READY_MESSAGE, Platform

JOURNEY = Path("examples") / "learner_journey.py"
JOURNEY_LABEL = "== journey == "


def journey_command(platform: Platform, journey: Path) -> Command:
    """The journey script, pointed at the first app's sidecar, with the generated protos importable."""
    launch = platform.launches[0]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if launch.gen_dir is not None:
        env["PYTHONPATH"] = prepend_path(str(launch.gen_dir), env.get("PYTHONPATH", ""))
    argv = [sys.executable, str(journey), "--dapr-grpc-port", str(launch.ports.dapr_grpc)]
    return Command(JOURNEY_LABEL, argv, platform.run_file.base_dir, env)


async def demo(run_file: _runfile.RunFile, journey: Path, ready_within: float, out: Output) -> int:
    """0 when the journey succeeds; non-zero when the platform does not come up or the journey fails."""
    platform = Platform(run_file, out)
    trap = SignalTrap(on_repeat=platform.supervisor.kill_all)
    with trap.installed():
        try:
            return await _demo(platform, journey, ready_within, trap)
        finally:
            await platform.stop()


async def _demo(platform: Platform, journey: Path, ready_within: float, trap: SignalTrap) -> int:
    out = platform.out
    winner = await race(_start_and_ready(platform), platform.died.wait(), trap.wait(), within=ready_within)
    if winner != 0:
        reasons = {1: "a process died while starting", 2: "interrupted"}
        reason = reasons.get(winner or 0, f"not ready after {ready_within:.0f}s")
        out.line(f"demo: the platform did not come up: {reason}")
        return exit_status(-trap.received) if trap.received else 1
    out.line(READY_MESSAGE)
    child = await platform.supervisor.start(journey_command(platform, journey))
    if await race(child.exited, trap.wait()) != 0:
        return exit_status(-(trap.received or 0))
    code = child.exited.result()
    verdict = "passed" if code == 0 else describe_exit(code)
    out.line(f"demo: the learner journey {verdict}")
    return exit_status(code)


async def _start_and_ready(platform: Platform) -> None:
    await platform.start()
    await platform.ready()


def main_demo(path: Path, journey: Path | None, ready_within: float) -> int:
    run_file = _runfile.load(path)
    script = journey or run_file.base_dir / JOURNEY
    if not script.is_file():
        print(f"chassis demo: journey script not found: {script}", file=sys.stderr)
        return 2
    return asyncio.run(demo(run_file, script.resolve(), ready_within, Output()))
