"""The template's promise: `chassis new` refuses a bad name before writing anything; otherwise it gives a
service that lints clean and passes its own tests (unit tests, and a round trip through a real sidecar)
at once, beside the platform's existing contracts."""

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

    lint = run([sys.executable, "-m", "ruff", "check", "."], service)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    formatted = run([sys.executable, "-m", "ruff", "format", "--check", "."], service)
    assert formatted.returncode == 0, formatted.stdout + formatted.stderr

    tests = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], service)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "6 passed" in tests.stdout
    assert (tmp_path / ".chassis/gen/mooc/quiz_analytics/v1/quiz_analytics_pb2_grpc.py").is_file()


@pytest.mark.parametrize(
    "name", ["Quiz", "9lives", "a", "quiz_analytics", "quiz analytics", "x" * 41, "quiz-", "class", "mooc"]
)
def test_bad_names_are_refused_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    assert main(["new", name, "--no-input", "--project-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"chassis new: invalid service name {name!r}") and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []
