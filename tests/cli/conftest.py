"""Fixtures for the CLI tests: launched `chassis` processes are always killed and swept at teardown."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cli_kit import Chassis

from chassis.testing import write_default_resources


@pytest.fixture
def chassis_cli() -> Iterator[Callable[..., Chassis]]:
    started: list[Chassis] = []

    def launch(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> Chassis:
        process = Chassis(args, cwd, env)
        started.append(process)
        return process

    yield launch
    for process in started:
        process.stop()


@pytest.fixture
def components(tmp_path: Path) -> Path:
    """The embedded statestore and pubsub, as every sidecar in these tests loads them."""
    return write_default_resources(tmp_path / "components")
