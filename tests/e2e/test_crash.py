"""Crash tests: SIGKILL grading (app or sidecar) mid-stream; after a restart nothing is lost or doubled.

The processes are started one by one (not through `chassis up`) so the test can kill exactly one of
them and start it again on the same ports, as a supervisor such as Kubernetes would.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from e2e_kit import GradeAudit, Learner, copy_project

from chassis._protogen import GEN_DIR
from chassis.testing import AppProcess, Sidecar, free_port, wait_for

STREAM = 120
# A lease this short makes a killed sidecar's in-flight messages claimable again within seconds.
LEASE = "2s"


@dataclass
class Node:
    """One app beside its sidecar, restartable on the same ports."""

    app_id: str
    workdir: Path
    resources: Path
    gen: Path
    sidecar: Sidecar
    app: AppProcess

    @classmethod
    def start(cls, app_id: str, workdir: Path, resources: Path, gen: Path) -> Node:
        sidecar = Sidecar(app_id, workdir, app_port=free_port(), resources=[resources]).start()
        node = cls(app_id, workdir, resources, gen, sidecar, cls._app(app_id, workdir, sidecar, gen))
        node.app.start()
        return node

    @staticmethod
    def _app(app_id: str, workdir: Path, sidecar: Sidecar, gen: Path) -> AppProcess:
        assert sidecar.app_port is not None
        service_dir = workdir / "services" / app_id
        return AppProcess(
            app_id,
            app_id=app_id,
            app_port=sidecar.app_port,
            workdir=service_dir,
            sidecar=sidecar,
            pythonpath=[service_dir, gen],
        )

    def restart_app(self) -> None:
        self.app = self._app(self.app_id, self.workdir, self.sidecar, self.gen)
        self.app.start()

    def restart_sidecar(self) -> None:
        old = self.sidecar
        self.sidecar = Sidecar(
            self.app_id,
            self.workdir,
            app_port=old.app_port,
            resources=[self.resources],
            grpc_port=old.grpc_port,
            http_port=old.http_port,
        ).start()

    def stop(self) -> None:
        self.app.stop()
        self.sidecar.stop()


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[dict[str, Node]]:
    copy_project(tmp_path)
    resources = tmp_path / "dapr" / "components" / "embedded"
    pubsub = resources / "pubsub.yaml"
    pubsub.write_text(_with_lease(pubsub.read_text(), LEASE))
    gen = Path(__file__).resolve().parents[2] / GEN_DIR
    asyncio.run(GradeAudit(tmp_path).register())
    started: dict[str, Node] = {}
    try:
        for app_id in ("assessment", "grading"):
            started[app_id] = Node.start(app_id, tmp_path, resources, gen)
        yield started
    finally:
        for node in started.values():
            node.stop()


def _with_lease(yaml_text: str, lease: str) -> str:
    lines = yaml_text.splitlines()
    at = next(i for i, line in enumerate(lines) if "processingTimeout" in line)
    lines[at + 1] = lines[at + 1].split(":")[0] + f': "{lease}"'
    return "\n".join(lines) + "\n"


@pytest.fixture
async def learner(nodes: dict[str, Node]) -> AsyncIterator[Learner]:
    client = Learner(nodes["assessment"].sidecar.grpc_port)
    yield client
    await client.close()


@pytest.mark.parametrize("victim", ["app", "sidecar"])
async def test_sigkill_of_grading_mid_stream_leaves_nothing_ungraded_or_graded_twice(
    victim: str, nodes: dict[str, Node], learner: Learner, tmp_path: Path
) -> None:
    grading = nodes["grading"]
    ids: list[str] = []

    async def stream() -> None:
        for n in range(STREAM):
            ids.append(await learner.submit(n))
            await asyncio.sleep(0.01)

    submitting = asyncio.create_task(stream())
    await wait_for(lambda: len(ids) >= STREAM // 3, timeout=30, what="a third of the stream submitted")
    if victim == "app":
        grading.app.kill()
        grading.restart_app()
    else:
        grading.sidecar.kill()
        grading.restart_sidecar()
    await submitting

    graded = await learner.wait_graded(ids)

    assert sorted(graded) == sorted(ids)
    grade_events = await GradeAudit(tmp_path).collect()
    assert sorted(grade_events) == sorted(ids)
    twice = {i: events for i, events in grade_events.items() if len({e["id"] for e in events}) != 1}
    assert twice == {}, f"graded more than once: {twice}"
