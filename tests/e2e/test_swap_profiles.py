"""examples/swapping_infrastructure.md, executed: the learner flow on each profile by one line of YAML."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from e2e_kit import REPO, copy_project

from chassis.testing import requires_server

WALKTHROUGH = REPO / "examples" / "swapping_infrastructure.md"
SERVERS = {
    "redis": [("Redis", 6379, "redis-server --daemonize yes --port 6379 --save ''")],
    "postgresql-rabbitmq": [
        ("PostgreSQL", 5432, "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"),
        ("RabbitMQ", 5672, "rabbitmq-server -detached"),
    ],
}


def walkthrough_commands() -> dict[str, str]:
    """Profile -> the `sed` line the walk-through gives for it."""
    seds = re.findall(r"^(sed -i .*)$", WALKTHROUGH.read_text(), re.MULTILINE)
    return {re.search(r"components/([a-z-]+)\|' dapr.yaml", sed).group(1): sed for sed in seds}


@pytest.mark.parametrize("profile", sorted(SERVERS))
def test_the_learner_flow_runs_unchanged_on_another_profile(profile: str, tmp_path: Path) -> None:
    for name, port, how in SERVERS[profile]:
        requires_server(name, "127.0.0.1", port, how)
    copy_project(tmp_path)
    shutil.copy(REPO / "dapr.yaml", tmp_path / "dapr.yaml")
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    for folder in (REPO / "dapr" / "components").iterdir():
        shutil.copytree(folder, tmp_path / "dapr" / "components" / folder.name, dirs_exist_ok=True)

    subprocess.run(walkthrough_commands()[profile], shell=True, cwd=tmp_path, check=True)
    changed = (tmp_path / "dapr.yaml").read_text()
    assert changed.replace(profile, "embedded") == (REPO / "dapr.yaml").read_text(), "only one line changed"

    chassis = str(Path(sys.executable).parent / "chassis")
    demo = subprocess.run([chassis, "demo"], cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert re.search(r"grade: \d+/\d+", demo.stdout), demo.stdout
    assert re.search(r"trace id: [0-9a-f]{32}", demo.stdout), demo.stdout
