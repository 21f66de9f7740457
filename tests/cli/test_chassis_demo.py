"""`chassis demo`, the README's first command: the platform comes up, a learner is graded, everything
stops; and a failing journey makes the demo fail.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from cli_kit import APPS, Chassis, wait_gone

REPO = Path(__file__).resolve().parents[2]
PLATFORM = ["dapr.yaml", "dapr", "proto", "services", "examples"]


def copy_platform(target: Path) -> None:
    """The repository's platform, without caches or data from anyone's earlier runs."""
    ignore = shutil.ignore_patterns("__pycache__", ".pytest_cache", ".chassis", "*.log")
    for name in PLATFORM:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=ignore)
        else:
            shutil.copy2(source, target / name)


def test_the_demo_grades_a_learner_and_stops_everything(
    tmp_path: Path, chassis_cli: Callable[..., Chassis]
) -> None:
    copy_platform(tmp_path)
    cli = chassis_cli(["demo"], tmp_path)
    cli.wait_for_line("^All apps are up.$", timeout=90)
    tree = cli.tree()
    assert cli.wait(timeout=90) == 0, cli.output()
    assert cli.wait_for_line(r"^== journey == grade: 4/4 \(matched keywords: list, expression, iterable\)$")
    assert cli.wait_for_line(r"^== journey == trace id: [0-9a-f]{32}$")
    assert wait_gone(tree) == set()


def test_a_failing_journey_fails_the_demo(
    tmp_path: Path, components: Path, chassis_cli: Callable[..., Chassis]
) -> None:
    (tmp_path / "app").mkdir()
    command = f"[python, {APPS / 'health_app.py'}]"
    (tmp_path / "dapr.yaml").write_text(
        "version: 1\ncommon: {resourcesPath: ./components}\napps:\n"
        f"  - {{appID: app, appDirPath: ./app, appProtocol: grpc, command: {command}}}\n"
    )
    journey = tmp_path / "journey.py"
    journey.write_text("import sys\nprint('lost on the way')\nsys.exit(3)\n")
    cli = chassis_cli(["demo", "--journey", str(journey)], tmp_path)
    assert cli.wait(timeout=60) == 3
    assert "== journey == lost on the way" in cli.lines
    assert "demo: the learner journey exited with code 3" in cli.lines
