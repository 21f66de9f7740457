"""The app registry: sidecars on one machine find each other's apps through one SQLite file."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chassis.sidecar._registry import AppRegistry, default_registry_path


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[AppRegistry]:
    registry = AppRegistry(tmp_path / "nested" / "registry.db")
    yield registry
    await registry.close()


async def test_register_then_lookup(registry: AppRegistry) -> None:
    assert await registry.lookup("grading") is None
    await registry.register("grading", "127.0.0.1:50051")
    assert await registry.lookup("grading") == "127.0.0.1:50051"


async def test_register_again_replaces_the_address(registry: AppRegistry) -> None:
    await registry.register("grading", "127.0.0.1:50051")
    await registry.register("grading", "127.0.0.1:50052")
    assert await registry.lookup("grading") == "127.0.0.1:50052"


async def test_unregister_only_removes_its_own_address(registry: AppRegistry) -> None:
    await registry.register("grading", "127.0.0.1:50052")
    await registry.unregister("grading", "127.0.0.1:50051")  # an older instance shutting down late
    assert await registry.lookup("grading") == "127.0.0.1:50052"
    await registry.unregister("grading", "127.0.0.1:50052")
    assert await registry.lookup("grading") is None


async def test_registries_sharing_a_file_see_each_other(tmp_path: Path) -> None:
    first, second = AppRegistry(tmp_path / "r.db"), AppRegistry(tmp_path / "r.db")
    try:
        await first.register("assessment", "127.0.0.1:6001")
        await second.register("grading", "127.0.0.1:6002")
        assert await first.lookup("grading") == "127.0.0.1:6002"
        assert await second.lookup("assessment") == "127.0.0.1:6001"
    finally:
        await first.close()
        await second.close()


def test_default_path_is_under_base_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CHASSIS_REGISTRY", raising=False)
    assert default_registry_path(tmp_path) == tmp_path / ".chassis" / "registry.db"


@pytest.mark.parametrize(("value", "relative"), [("shared/reg.db", True), ("/abs/reg.db", False)])
def test_env_overrides_the_default_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str, relative: bool
) -> None:
    monkeypatch.setenv("CHASSIS_REGISTRY", value)
    assert default_registry_path(tmp_path) == (tmp_path / value if relative else Path(value))
