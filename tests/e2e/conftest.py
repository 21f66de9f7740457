"""Fixtures of the end-to-end tests: a platform started with `chassis up`, and a learner using it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from e2e_kit import GradeAudit, Learner, Platform

from chassis.testing.plugin import print_log_tail


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Platform]:
    platform = Platform.prepare(tmp_path)
    asyncio.run(GradeAudit(tmp_path).register())
    platform.start()
    try:
        yield platform
    finally:
        if platform.process is not None:
            platform.process.stop()
        print_log_tail("chassis up", platform.log(), lines=300)


@pytest.fixture
async def learner(platform: Platform) -> AsyncIterator[Learner]:
    client = Learner(platform.ports["assessment"]["daprGRPCPort"])
    yield client
    await client.close()
