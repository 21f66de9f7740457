"""The chassis pytest plugin (entry point `pytest11`): generated protos on sys.path, hermetic env, fixtures.

Loaded for every pytest run in a project that installs mooc-chassis, so service tests need no conftest.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from chassis._protogen import ensure_generated, find_project_root
from chassis.testing._processes import AppProcess, Sidecar

_CLEARED_PREFIXES = ("DAPR_", "OTEL_", "CHASSIS_")
_GEN_DIR = pytest.StashKey[Path | None]()

SidecarFactory = Callable[..., Sidecar]
AppFactory = Callable[..., AppProcess]


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(
    early_config: pytest.Config, parser: pytest.Parser, args: list[str]
) -> None:
    """Before any conftest is imported, so conftests may import generated code at module level."""
    _put_generated_on_path(early_config)


def pytest_configure(config: pytest.Config) -> None:
    if _GEN_DIR not in config.stash:  # plugin loaded late (e.g. `-p chassis.testing.plugin`)
        _put_generated_on_path(config)


def _put_generated_on_path(config: pytest.Config) -> None:
    root = find_project_root(config.rootpath)
    gen = ensure_generated(root) if root is not None else None
    if gen is not None and str(gen) not in sys.path:
        sys.path.insert(0, str(gen))
    config.stash[_GEN_DIR] = gen


@pytest.fixture(autouse=True)
def _chassis_clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts without DAPR_*/OTEL_*/CHASSIS_* variables from the developer's shell."""
    for key in list(os.environ):
        if key.startswith(_CLEARED_PREFIXES):
            monkeypatch.delenv(key)


@pytest.fixture
def sidecar_factory(tmp_path: Path) -> Iterator[SidecarFactory]:
    """Start `python -m chassis.sidecar` processes (healthy on return); all share tmp_path as cwd."""
    started: list[Sidecar] = []

    def start(app_id: str, *, workdir: Path | None = None, **options: Any) -> Sidecar:
        sidecar = Sidecar(app_id, workdir or tmp_path, **options)
        started.append(sidecar)
        return sidecar.start()

    yield start
    _stop_all(started)


@pytest.fixture
def app_factory(
    request: pytest.FixtureRequest, tmp_path: Path, sidecar_factory: SidecarFactory
) -> Iterator[AppFactory]:
    """Start `python -m <module>` apps (SERVING on return) with the generated protos on PYTHONPATH.

    It depends on `sidecar_factory` so that apps always stop (and drain) before their sidecars.
    """
    started: list[AppProcess] = []
    gen = request.config.stash.get(_GEN_DIR, None)

    def start(
        module: str, *, pythonpath: Sequence[Path] = (), workdir: Path | None = None, **options: Any
    ) -> AppProcess:
        paths = [*pythonpath, *([gen] if gen else [])]
        app = AppProcess(module, workdir=workdir or tmp_path, pythonpath=paths, **options)
        started.append(app)
        return app.start()

    yield start
    _stop_all(started)


def _stop_all(processes: list[Sidecar] | list[AppProcess]) -> None:
    for process in reversed(processes):
        process.stop()
