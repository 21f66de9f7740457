"""Scaffolding a service end to end: `chassis new X --no-input`, the new service's own tests, then
`chassis up -f dapr.yaml` until every app (the new one among them) is up — against the 30 s target.

Each step runs as the command a developer types, in a temporary copy of the project, so interpreter
start-up, imports, compiling the protos (cold: the copy has no `.chassis/gen`) and sidecar start-up
all count. `chassis up` is then stopped with Ctrl-C (SIGINT); that stop is shown but not counted.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks._common import REPO, Figure

NAME = "scaffold-bench"
TARGET_S = 30.0
READY = "All apps are up."
# What `chassis up` needs from the project: the contracts, the components, the run file, the services.
COPIED = ("proto", "dapr", "dapr.yaml", "services")
SKIPPED = shutil.ignore_patterns(
    "__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache", ".chassis", "*.db", "*.db-*"
)
CHASSIS = [sys.executable, "-m", "chassis.cli"]


def _copy_project(into: Path) -> None:
    for name in COPIED:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, into / name, ignore=SKIPPED)
        else:
            shutil.copy2(source, into / name)


def _timed(argv: list[str], cwd: Path, what: str) -> float:
    """Seconds `argv` took; raises with its output if it failed."""
    start = time.monotonic()
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300)
    took = time.monotonic() - start
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return took


class _Up:
    """`chassis up -f dapr.yaml` in its own process group, its output read line by line."""

    def __init__(self, project: Path) -> None:
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.proc = subprocess.Popen(
            [*CHASSIS, "up", "-f", "dapr.yaml"],
            cwd=project,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # so a failed run can be killed with everything it started
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if line.strip() == READY:
                self.ready.set()

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = "\n".join(self.lines[-30:])
                raise RuntimeError(f"chassis up never said {READY!r}:\n{tail}")

    def stop(self) -> float:
        """Ctrl-C, as a developer would; seconds until it exited. Killed outright if it hangs."""
        start = time.monotonic()
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        return time.monotonic() - start


def run() -> list[Figure]:
    with tempfile.TemporaryDirectory(prefix="bench-scaffold-") as scratch:
        project = Path(scratch)
        _copy_project(project)
        slug = NAME.replace("-", "_")
        new = _timed([*CHASSIS, "new", NAME, "--no-input", "--project-dir", str(project)], project, "new")
        tests = _timed(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
            project / "services" / slug,
            "tests",
        )
        start = time.monotonic()
        up = _Up(project)
        try:
            up.wait_ready(120)
            ready = time.monotonic() - start
        finally:
            stop = up.stop()
        apps = sum(1 for line in up.lines if line.startswith("== ") and " == app port " in line)
    total = new + tests + ready
    return [
        Figure("chassis new --no-input", new, "s"),
        Figure("generated service's tests (pytest)", tests, "s"),
        Figure(f"chassis up until all {apps} apps are up", ready, "s"),
        Figure("total: new -> tests -> up", total, "s", f"< {TARGET_S:.0f} s", total < TARGET_S),
        Figure("chassis up stop (Ctrl-C, not counted)", stop, "s"),
    ]
