"""Helpers for the CLI tests: the `chassis` command as a real process, its output line by line, and the
process tree under it (read from /proc), so a test can prove that nothing outlives it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

CHASSIS = [sys.executable, "-m", "chassis.cli"]
APPS = Path(__file__).resolve().parent / "apps"


def alive(pid: int) -> bool:
    """True while `pid` runs; a zombie (dead, not yet reaped by whoever adopted it) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def descendants(root: int) -> set[int]:
    """Every live process below `root`, found through the parent links in /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found and alive(child):
                found.add(child)
                todo.append(child)
    return found


def wait_gone(pids: set[int], timeout: float = 10.0) -> set[int]:
    """The pids still alive after `timeout` seconds (empty when all are gone)."""
    deadline = time.monotonic() + timeout
    while (left := {pid for pid in pids if alive(pid)}) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


class Chassis:
    """`python -m chassis.cli ARGS` with its merged output collected by a reader thread."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
        self.lines: list[str] = []
        self.seen: set[int] = set()
        self._eof = False
        self._changed = threading.Condition()
        self.proc = subprocess.Popen(
            [*CHASSIS, *args],
            cwd=cwd,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    def wait_for_line(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        """The first output line matching `pattern`; fails with the output so far if none comes."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    if match := regex.search(line):
                        return match
                left = deadline - time.monotonic()
                if left <= 0 or self._eof:
                    raise AssertionError(f"no line matching {pattern!r}; output:\n{self.output()}")
                self._changed.wait(min(left, 0.5))

    def tree(self) -> set[int]:
        """The live processes under the CLI now (also remembered for the teardown sweep)."""
        pids = descendants(self.proc.pid)
        self.seen |= pids
        return pids

    def env_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line.split("env ", 1)[1]) for line in self.lines if "env {" in line]

    def output(self) -> str:
        return "\n".join(self.lines)

    def wait(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        """Teardown: whatever the test did, kill the CLI and everything it was seen to start."""
        self.seen |= descendants(self.proc.pid)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        for pid in self.seen:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
