"""Process supervision for the launchers: every child in its own process group, its output prefixed,
and nothing left running once the launcher returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from chassis._errors import ChassisError

_READ_LIMIT = 1 << 20
_PUMP_GRACE = 2.0


class LaunchError(ChassisError):
    """A command could not be started at all (not found, not executable, no such folder)."""


def free_ports(count: int) -> list[int]:
    """`count` distinct ports the OS reports free on loopback (held together so none repeats)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


def exit_status(returncode: int) -> int:
    """A child's return code as a shell would report it (128 + N for death by signal N)."""
    return 128 - returncode if returncode < 0 else returncode


def describe_exit(returncode: int) -> str:
    """'exited with code N' or 'was killed by SIGX', for one-line reports."""
    if returncode < 0:
        return f"was killed by {signal.Signals(-returncode).name}"
    return f"exited with code {returncode}"


@dataclass(frozen=True)
class Command:
    """One process to start: what to run, where, with which environment, and how to label its output."""

    label: str
    argv: list[str]
    cwd: Path
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))


class Output:
    """Writes whole lines to a stream, each behind its child's label (as `dapr run` does)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream

    def line(self, text: str) -> None:
        stream = self._stream or sys.stdout
        stream.write(text if text.endswith("\n") else text + "\n")
        stream.flush()


class Child:
    """A started process, leader of its own process group so signals reach everything it spawned."""

    def __init__(self, command: Command, proc: asyncio.subprocess.Process, out: Output) -> None:
        self.command = command
        self._proc = proc
        self._pump = asyncio.create_task(_pump(proc, command.label, out))
        self._exited = asyncio.create_task(self._wait_and_sweep())

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def exited(self) -> asyncio.Task[int]:
        """Completes with the return code once the process is reaped and its group swept."""
        return self._exited

    def send(self, sig: int) -> None:
        """Send `sig` to the child's whole process group (a no-op once it is gone)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)

    async def stop(self, sig: int = signal.SIGTERM, grace: float = 10.0) -> int:
        """Ask the group to stop with `sig`; SIGKILL it if it has not exited within `grace` seconds."""
        if not self._exited.done():
            self.send(sig)
            try:
                await asyncio.wait_for(asyncio.shield(self._exited), grace)
            except TimeoutError:
                self.send(signal.SIGKILL)
        return await self._exited

    async def _wait_and_sweep(self) -> int:
        code = await self._proc.wait()
        # Grandchildren left in the group would keep the pipe open and outlive us: kill them too.
        self.send(signal.SIGKILL)
        try:
            await asyncio.wait_for(asyncio.shield(self._pump), _PUMP_GRACE)
        except TimeoutError:  # something that left the group still holds the pipe: stop reading it
            self._pump.cancel()
        return code


async def _pump(proc: asyncio.subprocess.Process, label: str, out: Output) -> None:
    assert proc.stdout is not None
    while True:
        try:
            raw = await proc.stdout.readline()
        except ValueError:  # a line longer than the limit: pass it on in pieces
            raw = await proc.stdout.read(_READ_LIMIT)
        if not raw:
            return
        out.line(label + raw.decode("utf-8", errors="replace").rstrip("\r\n"))


async def spawn(command: Command, out: Output) -> Child:
    """Start `command` as the leader of a new process group, its stdout and stderr piped to `out`."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *command.argv,
            cwd=command.cwd,
            env=command.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            limit=_READ_LIMIT,
            process_group=0,
        )
    except OSError as err:
        raise LaunchError(
            f"cannot start {' '.join(command.argv)!r} in {command.cwd}: {err.strerror}"
        ) from None
    return Child(command, proc, out)


class Supervisor:
    """Owns every child it started; `close()` stops them in reverse start order and reaps them all."""

    def __init__(self, out: Output, grace: float = 10.0) -> None:
        self.out = out
        self.grace = grace
        self.children: list[Child] = []

    async def start(self, command: Command) -> Child:
        child = await spawn(command, self.out)
        self.children.append(child)
        return child

    async def stop(self, children: list[Child], sig: int = signal.SIGTERM) -> None:
        """Stop `children` together: `sig` to each group, then SIGKILL whatever outlives the grace."""
        await asyncio.gather(*(child.stop(sig, self.grace) for child in children))

    async def close(self) -> None:
        """Stop everything still running, newest first (apps drain while their sidecars still answer)."""
        for child in reversed(self.children):
            await child.stop(signal.SIGTERM, self.grace)

    def kill_all(self) -> None:
        """No more waiting (a second Ctrl-C): SIGKILL every group; the pending stops then return at once."""
        self.out.line("interrupted again: killing every process now")
        for child in self.children:
            child.send(signal.SIGKILL)


class SignalTrap:
    """Turns SIGINT/SIGTERM into an awaitable event while installed, so shutdown runs in normal code.

    A second signal during the graceful stop calls `on_repeat` (typically `Supervisor.kill_all`).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, on_repeat: Callable[[], None] | None = None) -> None:
        self.received: int | None = None
        self._event = asyncio.Event()
        self._on_repeat = on_repeat

    def _on_signal(self, sig: int) -> None:
        if self._event.is_set():
            if self._on_repeat is not None:
                self._on_repeat()
            return
        self.received = sig
        self._event.set()

    async def wait(self) -> int:
        await self._event.wait()
        assert self.received is not None
        return self.received

    @contextlib.contextmanager
    def installed(self) -> Iterator[SignalTrap]:
        loop = asyncio.get_running_loop()
        for sig in self.SIGNALS:
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            yield self
        finally:
            for sig in self.SIGNALS:
                loop.remove_signal_handler(sig)


async def race(*aws: Awaitable[Any], within: float | None = None) -> int | None:
    """Wait until the first of `aws` completes and return its index (None when `within` seconds pass first).

    Futures passed in (a child's `exited`, say) are left running; coroutines are cancelled once decided.
    """
    tasks = [asyncio.ensure_future(aw) for aw in aws]
    created = [task for task, aw in zip(tasks, aws, strict=True) if task is not aw]
    try:
        shielded = [asyncio.shield(t) for t in tasks]
        await asyncio.wait(shielded, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in created:
            task.cancel()
        if created:  # let cancelled work unwind (close channels, finish spawns) before the caller goes on
            await asyncio.wait(created)
    for index, task in enumerate(tasks):
        if task.done() and not task.cancelled():
            if task in created:
                task.result()  # a probe that failed raises here rather than vanishing
            return index
    return None
