"""`chassis up` with a multi-app run file: every app beside its own sidecar, readiness announced, a dead
app reported while the rest keep running, and SIGTERM leaving no process behind.
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from cli_kit import APPS, Chassis, wait_gone

READY = "All apps are up."


def write_run_file(project: Path, apps: str) -> Path:
    for name in ("alpha", "beta"):
        (project / name).mkdir(exist_ok=True)
    run_file = project / "dapr.yaml"
    run_file.write_text(
        "version: 1\ncommon:\n  resourcesPath: ./components\n  env:\n    GREETING: hello\napps:\n" + apps
    )
    return run_file


def app(app_id: str, command: list[str], extra: str = "") -> str:
    return (
        f"  - appID: {app_id}\n    appDirPath: ./{app_id}\n    appProtocol: grpc\n"
        f"    command: {json.dumps(command)}\n{extra}"
    )


HEALTHY = ["python", str(APPS / "health_app.py")]


def test_two_apps_come_up_and_sigterm_stops_everything(
    tmp_path: Path, components: Path, chassis_cli: Callable[..., Chassis]
) -> None:
    apps = app("alpha", HEALTHY) + app("beta", HEALTHY, "    env:\n      GREETING: bonjour\n")
    write_run_file(tmp_path, apps)
    cli = chassis_cli(["up", "-f", "dapr.yaml"], tmp_path)
    cli.wait_for_line(f"^{READY}$")
    envs = {env["APP_ID"]: env for env in cli.env_lines()}
    assert envs["alpha"]["cwd"] == str(tmp_path / "alpha") and envs["alpha"]["GREETING"] == "hello"
    assert envs["beta"]["cwd"] == str(tmp_path / "beta") and envs["beta"]["GREETING"] == "bonjour"
    assert any(line.startswith("== alpha == [dapr] ") for line in cli.lines)
    state = json.loads((tmp_path / ".chassis" / "up.json").read_text())
    assert [a["appID"] for a in state["apps"]] == ["alpha", "beta"]
    assert (tmp_path / ".chassis" / "registry.db").is_file()  # both sidecars ran in the run file's folder
    tree = cli.tree()
    assert len(tree) == 4  # two apps, two sidecars
    cli.proc.send_signal(signal.SIGTERM)
    assert cli.wait() == 0, cli.output()
    assert wait_gone(tree) == set()
    assert not (tmp_path / ".chassis" / "up.json").exists()


def test_a_dead_app_is_reported_and_the_others_keep_running(
    tmp_path: Path, components: Path, chassis_cli: Callable[..., Chassis]
) -> None:
    crash = [sys.executable, "-c", "import sys; sys.exit(3)"]
    write_run_file(tmp_path, app("alpha", HEALTHY) + app("beta", crash))
    cli = chassis_cli(["up", "-f", str(tmp_path / "dapr.yaml")], tmp_path)
    pid = int(cli.wait_for_line(r"^== beta == app \(pid (\d+)\) exited with code 3$").group(1))
    cli.wait_for_line(r"^== alpha == env ")
    tree = cli.tree()
    assert pid not in tree and len(tree) == 3  # alpha, its sidecar, and beta's sidecar still run
    assert READY not in cli.lines
    cli.proc.send_signal(signal.SIGINT)  # Ctrl-C
    assert cli.wait() == 0, cli.output()
    assert wait_gone(tree) == set()
