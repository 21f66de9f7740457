"""A bad multi-app run file stops `chassis up` before anything starts, with one line naming file and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from chassis._launch import _runfile
from chassis.cli import main


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        ("apps: []\n", "version", "required, must be 1"),
        ("version: 2\napps: []\n", "version", "required, must be 1 (got 2)"),
        ("version: 1\n", "apps", "required, a non-empty list of apps"),
        ("version: 1\napps:\n  - appID: a\n", "apps[0].appDirPath", "required"),
        ("version: 1\napps:\n  - appDirPath: ./missing\n", "apps[0].appDirPath", "folder not found"),
        ("version: 1\napps:\n  - appDirPath: .\n    appId: a\n", "apps[0].appId", "did you mean 'appID'?"),
        (
            "version: 1\napps:\n  - appDirPath: .\n    appPort: http\n",
            "apps[0].appPort",
            "port number 1-65535",
        ),
        (
            "version: 1\napps:\n  - appDirPath: .\n    command: python app.py\n",
            "apps[0].command",
            "list of strings",
        ),
        (
            "version: 1\napps:\n  - appDirPath: .\n    appProtocol: smtp\n",
            "apps[0].appProtocol",
            "one of http",
        ),
        (
            "version: 1\napps:\n  - {appID: a, appDirPath: .}\n  - {appID: a, appDirPath: .}\n",
            "apps[1].appID",
            "duplicate app id 'a'",
        ),
        (
            "version: 1\napps:\n  - {appID: a, appDirPath: ., daprGRPCPort: 5000}\n"
            "  - {appID: b, appDirPath: ., appPort: 5000}\n",
            "apps[1].appPort",
            "port 5000 is already taken by apps[0].daprGRPCPort",
        ),
        (
            "version: 1\ncommon:\n  resourcesPath: ./nowhere\napps: [{appDirPath: .}]\n",
            "common.resourcesPath",
            "",
        ),
        ("version: 1\napps: [\n", "line 3", "invalid YAML"),
        ("- just\n- a list\n", "(top level)", "expected a mapping"),
    ],
)
def test_each_mistake_is_one_line_naming_file_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, where: str, message: str
) -> None:
    run_file = tmp_path / "dapr.yaml"
    run_file.write_text(text)
    assert main(["up", "-f", str(run_file)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"chassis up: {run_file}: {where}: ")
    assert message in err


def test_a_folder_means_its_dapr_yaml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["up", "-f", str(tmp_path)]) == 1
    assert capsys.readouterr().err == f"chassis up: {tmp_path}: run file not found\n"


def test_paths_env_and_defaults_follow_dapr(tmp_path: Path) -> None:
    for folder in ("shared", "svc/a/own", "svc/b/.dapr/resources", "svc/c"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "dapr.yaml").write_text(
        "version: 1\n"
        "common: {resourcesPath: ./shared, appProtocol: grpc, env: {MODE: dev, DEBUG: true}}\n"
        "apps:\n"
        "  - {appID: a, appDirPath: ./svc/a, resourcesPaths: [./own], env: {MODE: test}, appPort: 7001}\n"
        "  - {appDirPath: ./svc/b, appProtocol: HTTP, command: [python, -m, b]}\n"
        "  - {appID: c, appDirPath: ./svc/c}\n"
    )
    a, b, c = _runfile.load(tmp_path).apps
    assert a.resources == [tmp_path / "svc/a/own"]  # an app's own paths are relative to its appDirPath
    assert b.resources == [tmp_path / "svc/b/.dapr/resources"]  # then its .dapr/resources
    assert c.resources == [tmp_path / "shared"]  # then common's, relative to the run file
    assert a.env == {"MODE": "test", "DEBUG": "true"} and c.env == {"MODE": "dev", "DEBUG": "true"}
    assert (a.app_port, a.dapr_grpc_port) == (7001, None)  # None: a free port at launch
    assert b.app_id == "b" and b.app_protocol == "http" and b.command == ["python", "-m", "b"]
    assert (a.app_protocol, c.command) == ("grpc", [])
