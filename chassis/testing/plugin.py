"""The chassis pytest plugin (entry point `pytest11`): generated protos on sys.path, hermetic env, fixtures.

Loaded for every pytest run in a project that installs mooc-chassis, so service tests need no conftest.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from chassis._protogen import ensure_generated, find_project_root
from chassis.testing._harness import ServiceUnderTest, StartService
from chassis.testing._processes import START_TIMEOUT, AppProcess, Sidecar, free_port

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
    for process in processes:
        print_log_tail(process.label, process.log())


def print_log_tail(label: str, log: str, lines: int = 80) -> None:
    """What a process logged, for pytest to show with a failed test (captured, hidden when it passes)."""
    tail = log.splitlines()[-lines:]
    if tail:
        print(f"----- {label}: the last {len(tail)} lines of its log -----", *tail, sep="\n")


@pytest_asyncio.fixture
async def chassis_service(
    sidecar_factory: SidecarFactory, app_factory: AppFactory
) -> AsyncIterator[StartService]:
    """Start a service under test beside its own embedded sidecar, on free ports; ready on return.

    `chassis_service("grading")` runs `python -m grading` as app id `grading` (the module name with
    `-` for `_` unless `app_id` is given), with the generated protos and the folder the module is
    imported from on its PYTHONPATH, and the embedded state store and broker (or `resources`). It
    returns once the service is SERVING, subscribed, and its sidecar has connected to it. Services
    started in one test share the state and broker files, so they can talk to each other. After the
    test, the test's clients close, then each service drains (SIGTERM) before its sidecar stops.
    """
    started: list[ServiceUnderTest] = []

    def start(
        module: str,
        *,
        app_id: str | None = None,
        resources: Sequence[Path] = (),
        env: Mapping[str, str] | None = None,
        pythonpath: Sequence[Path] = (),
    ) -> ServiceUnderTest:
        app_id = app_id or module.replace("_", "-")
        app_port = free_port()
        sidecar = sidecar_factory(app_id, app_port=app_port, resources=resources)
        paths = [*pythonpath, *_import_root(module)]
        app = app_factory(
            module, app_id=app_id, app_port=app_port, sidecar=sidecar, pythonpath=paths, env=env
        )
        sidecar.wait_until(sidecar.sees_app, START_TIMEOUT, "connected to its app (GET /v1.0/healthz -> 204)")

        def start_client_sidecar() -> Sidecar:
            return sidecar_factory(f"{app_id}-test-client", resources=sidecar.resources)

        service = ServiceUnderTest(
            module=module, sidecar=sidecar, app=app, start_client_sidecar=start_client_sidecar
        )
        started.append(service)
        return service

    yield start
    for service in reversed(started):
        await service.aclose()


def _import_root(module: str) -> list[Path]:
    """The folder `module` is imported from in the test process (a service's root is on sys.path)."""
    spec = importlib.util.find_spec(module.partition(".")[0])
    if spec is None:
        return []
    if spec.submodule_search_locations:
        return [Path(next(iter(spec.submodule_search_locations))).parent]
    return [Path(spec.origin).parent] if spec.origin else []
