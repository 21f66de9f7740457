"""`chassis new` keeps existing contracts and registers the service in dapr.yaml without losing what the
file already says; `chassis protoc` compiles contracts. (Names and the generated service: tests/template.)
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from chassis.cli import main


def test_a_new_project_gets_the_service_its_proto_and_a_run_file(tmp_path: Path) -> None:
    assert main(["new", "quiz-analytics", "--no-input", "--project-dir", str(tmp_path)]) == 0
    service = tmp_path / "services" / "quiz_analytics"
    assert (service / "quiz_analytics" / "service.py").is_file()
    assert (service / "tests" / "test_quiz_analytics_service.py").is_file()
    assert not (service / "proto").exists()
    proto = (tmp_path / "proto/mooc/quiz_analytics/v1/quiz_analytics.proto").read_text()
    assert "package mooc.quiz_analytics.v1;" in proto and "service QuizAnalyticsService {" in proto
    run_file = yaml.safe_load((tmp_path / "dapr.yaml").read_text())
    assert run_file["version"] == 1
    assert run_file["apps"] == [
        {
            "appID": "quiz-analytics",
            "appDirPath": "./services/quiz_analytics",
            "appProtocol": "grpc",
            "command": ["python", "-m", "quiz_analytics"],
        }
    ]


def test_registration_keeps_comments_and_an_existing_contract(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    contract = tmp_path / "proto/mooc/forum/v1/forum.proto"
    contract.parent.mkdir(parents=True)
    contract.write_text('syntax = "proto3";\npackage mooc.forum.v1;\n// the lead\'s\n')
    (tmp_path / "dapr.yaml").write_text(
        "# our platform\nversion: 1\napps:\n    # first app\n    - appID: other\n      appDirPath: .\n"
    )
    assert (
        main(["new", "forum", "--no-input", "--project-dir", str(tmp_path), "--description", "Threads."]) == 0
    )
    assert contract.read_text().endswith("// the lead's\n")
    assert f"kept the existing contract {contract}" in capsys.readouterr().out
    text = (tmp_path / "dapr.yaml").read_text()
    assert text.startswith("# our platform\n") and "    # first app\n" in text
    assert [app["appID"] for app in yaml.safe_load(text)["apps"]] == ["other", "forum"]
    assert '"Threads."' in (tmp_path / "services/forum/pyproject.toml").read_text()

    assert main(["new", "forum", "--no-input", "--project-dir", str(tmp_path)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_protoc_compiles_and_prints_the_generated_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["protoc", "--project-dir", str(tmp_path)]) == 1
    assert "no proto/ folder" in capsys.readouterr().err
    (tmp_path / "proto/demo/v1").mkdir(parents=True)
    (tmp_path / "proto/demo/v1/demo.proto").write_text('syntax = "proto3";\npackage demo.v1;\nmessage M {}\n')
    assert main(["protoc", "--project-dir", str(tmp_path / "proto")]) == 0
    gen = Path(capsys.readouterr().out.strip())
    assert gen == tmp_path / ".chassis" / "gen" and (gen / "demo/v1/demo_pb2.py").is_file()
