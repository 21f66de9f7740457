"""The template's promise: `chassis new` refuses a bad name before writing anything; otherwise it gives a
service that lints clean and passes its own tests (unit tests, and a round trip through a real sidecar)
at once, beside the platform's existing contracts, with everything it needs to ship (a Dockerfile, a
Kubernetes manifest, a README) and the template commit it came from."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from chassis.cli import main

REPO = Path(__file__).resolve().parents[2]


def run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=240)


def test_a_generated_service_lints_clean_and_passes_its_own_tests(tmp_path: Path) -> None:
    shutil.copytree(REPO / "proto", tmp_path / "proto")
    assert main(["new", "quiz-analytics", "--no-input", "--project-dir", str(tmp_path)]) == 0
    service = tmp_path / "services" / "quiz_analytics"
    for shipped in (
        "README.md",
        "Dockerfile",
        "Dockerfile.dockerignore",
        "deploy/kubernetes.yaml",
        ".cruft.json",
    ):
        assert (service / shipped).is_file(), shipped

    lint = run([sys.executable, "-m", "ruff", "check", "."], service)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    formatted = run([sys.executable, "-m", "ruff", "format", "--check", "."], service)
    assert formatted.returncode == 0, formatted.stdout + formatted.stderr

    tests = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], service)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "5 passed" in tests.stdout
    assert (tmp_path / ".chassis/gen/mooc/quiz_analytics/v1/quiz_analytics_pb2_grpc.py").is_file()


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "use 2-40 lowercase letters"),
        ("Quiz", "use 2-40 lowercase letters"),
        ("9lives", "use 2-40 lowercase letters"),
        ("a", "use 2-40 lowercase letters"),
        ("quiz_analytics", "use 2-40 lowercase letters"),
        ("quiz analytics", "use 2-40 lowercase letters"),
        ("x" * 41, "use 2-40 lowercase letters"),
        ("quiz-", "use 2-40 lowercase letters"),
        ("quiz--analytics", "use 2-40 lowercase letters"),
        ("class", "'class' is a Python keyword"),
        ("mooc", "would shadow a package every service imports"),
        ("grpc", "would shadow a package every service imports"),
        ("json", "would shadow the standard library module"),
        ("asyncio", "would shadow the standard library module"),
        ("yaml", "would shadow the installed module of that name (from PyYAML)"),
        ("redis", "would shadow the installed module of that name"),
    ],
)
def test_bad_names_are_refused_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, why: str
) -> None:
    assert main(["new", name, "--no-input", "--project-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"chassis new: invalid service name {name!r}: ") and err.count("\n") == 1
    assert why in err
    assert list(tmp_path.iterdir()) == []


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_name_already_taken_in_the_project_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "services" / "forum").mkdir(parents=True)
    (tmp_path / "dapr.yaml").write_text("version: 1\napps:\n  - appID: quiz-analytics\n    appDirPath: .\n")
    before = snapshot(tmp_path)
    assert main(["new", "forum", "--no-input", "--project-dir", str(tmp_path)]) == 2
    assert main(["new", "quiz-analytics", "--no-input", "--project-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"chassis new: invalid service name 'forum': {tmp_path / 'services' / 'forum'} already exists; "
        "choose another name or remove it",
        f"chassis new: invalid service name 'quiz-analytics': {tmp_path / 'dapr.yaml'} already registers "
        "the app id 'quiz-analytics'",
    ]
    assert snapshot(tmp_path) == before


def test_the_command_line_exits_2_on_a_bad_name(tmp_path: Path) -> None:
    done = run([sys.executable, "-m", "chassis.cli", "new", "json", "--no-input"], tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith("chassis new: invalid service name 'json': ") and done.stdout == ""
    assert list(tmp_path.iterdir()) == []
