"""Fixtures for the embedded sidecar's tests: sidecars started on free ports, reaped at teardown.

The helpers live in `sidecar_support` (a uniquely named module, importable from the test files).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sidecar_support import Process, RunningSidecar, sidecar_process, stop_all

SidecarStarter = Callable[..., RunningSidecar]


@pytest.fixture
def start_sidecar(tmp_path: Path) -> Iterator[SidecarStarter]:
    """Start sidecars (healthy on return: `ready` answered 204); SIGTERMed and reaped at teardown."""
    started: list[Process] = []

    def start(
        app_id: str = "app", *, cwd: Path | None = None, ready: str = "/v1.0/healthz/outbound", **options: Any
    ) -> RunningSidecar:
        sidecar = sidecar_process(app_id, cwd or tmp_path, **options)
        started.append(sidecar)
        sidecar.spawn()
        sidecar.wait_ready(lambda: sidecar.healthy(ready), f"answering {ready} with 204")
        return sidecar

    yield start
    stop_all(started)


@pytest.fixture
def started() -> Iterator[list[Process]]:
    """Processes a test starts itself (apps, extra sidecars); SIGTERMed and reaped at teardown."""
    processes: list[Process] = []
    yield processes
    stop_all(processes)


@pytest.fixture
def dapr_env(monkeypatch: pytest.MonkeyPatch) -> Callable[[RunningSidecar], None]:
    """Point the SDK (which reads DAPR_* on every access) at a sidecar."""

    def use(sidecar: RunningSidecar) -> None:
        for key, value in sidecar.client_env().items():
            monkeypatch.setenv(key, value)

    return use
