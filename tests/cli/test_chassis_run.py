"""`chassis run` as `dapr run`: the app gets the sidecar's ports in its environment, its exit code becomes
ours, and a SIGTERM stops the app, the sidecar and whatever the app spawned.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

from cli_kit import APPS, Chassis, wait_gone

from chassis.testing import free_port

UP = "You're up and running! Both Dapr and your app logs will appear here."


def test_the_app_gets_dapr_run_env_and_its_exit_code_is_ours(
    tmp_path: Path, components: Path, chassis_cli: Callable[..., Chassis]
) -> None:
    (tmp_path / "proto" / "demo" / "v1").mkdir(parents=True)
    (tmp_path / "proto" / "demo" / "v1" / "demo.proto").write_text(
        'syntax = "proto3";\npackage demo.v1;\nmessage Ping {}\n'
    )
    grpc_port = free_port()
    args = [
        "run",
        "--app-id",
        "reporter",
        "--dapr-grpc-port",
        str(grpc_port),
        "--resources-path",
        "components",
    ]
    cli = chassis_cli([*args, "--", "python", str(APPS / "report_env.py"), "7"], tmp_path)
    assert cli.wait() == 7, cli.output()
    assert UP in cli.lines
    [env] = cli.env_lines()
    assert env["APP_ID"] == "reporter"
    assert env["DAPR_GRPC_PORT"] == str(grpc_port)
    assert int(env["DAPR_HTTP_PORT"]) > 0 and int(env["APP_PORT"]) > 0
    assert env["APP_PROTOCOL"] == "grpc"
    assert env["PYTHONPATH"].split(":")[0] == str(tmp_path / ".chassis" / "gen")
    assert (tmp_path / ".chassis" / "gen" / "demo" / "v1" / "demo_pb2.py").is_file()
    assert any(line.startswith("== APP == env ") for line in cli.lines)
    assert any(line.startswith("== DAPR == ") for line in cli.lines)


def test_sigterm_stops_app_sidecar_and_grandchildren(
    tmp_path: Path, components: Path, chassis_cli: Callable[..., Chassis]
) -> None:
    args = ["run", "--app-id", "sleepy", "--resources-path", str(components), "--", "python"]
    cli = chassis_cli([*args, str(APPS / "sleepy.py")], tmp_path)
    app_pid, grandchild = map(int, cli.wait_for_line(r"== APP == pids (\d+) (\d+)").groups())
    tree = cli.tree()
    assert {app_pid, grandchild} < tree and len(tree) >= 3  # the sidecar too
    cli.proc.send_signal(signal.SIGTERM)
    assert cli.wait() == 128 + signal.SIGTERM  # the app died of the forwarded SIGTERM
    assert wait_gone(tree) == set()


def test_a_second_signal_kills_an_app_that_ignores_the_first(
    tmp_path: Path, components: Path, chassis_cli: Callable[..., Chassis]
) -> None:
    stubborn = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('deaf', flush=True); "
    )
    args = ["run", "--app-id", "deaf", "--resources-path", str(components), "--", "python", "-c"]
    cli = chassis_cli([*args, stubborn + "time.sleep(600)"], tmp_path)
    cli.wait_for_line("^== APP == deaf$")
    tree = cli.tree()
    cli.proc.send_signal(signal.SIGTERM)
    cli.wait_for_line("^SIGTERM received: stopping the app")  # forwarded, and ignored
    cli.proc.send_signal(signal.SIGTERM)
    assert cli.wait(timeout=5) == 128 + signal.SIGKILL  # well before the 10 s grace
    assert "interrupted again: killing every process now" in cli.lines
    assert wait_gone(tree) == set()


def test_a_sidecar_that_cannot_start_fails_the_run(
    tmp_path: Path, chassis_cli: Callable[..., Chassis]
) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.yaml").write_text("apiVersion: dapr.io/v1alpha1\nkind: Component\nspec: [\n")
    args = [
        "run",
        "--app-id",
        "never",
        "--resources-path",
        str(bad),
        "--",
        "python",
        str(APPS / "report_env.py"),
    ]
    cli = chassis_cli(args, tmp_path)
    assert cli.wait() == 1
    assert "sidecar exited with code 1 before it was healthy" in cli.output()
    assert cli.env_lines() == []  # the app never started
