"""Every service records the template commit it is in step with (`.cruft.json`, cruft's format), and a
check fails when the template has moved on: on this project, and on a fresh clone where the template
changes, `chassis template-check` and `cruft check` both see it, and `cruft update` brings the service back.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from chassis._launch import _new
from chassis.cli import main

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = "templates/service"


def git(cwd: Path, *args: str) -> str:
    argv = ["git", "-c", "user.name=template test", "-c", "user.email=test@example.invalid", *args]
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def template_commit(repo: Path) -> str:
    return git(repo, "log", "-1", "--format=%H", "--", TEMPLATE)


def cruft(service: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The cruft CLI run in the service folder, where the recorded template ("../..") resolves."""
    return subprocess.run(
        [sys.executable, "-m", "cruft", *args], cwd=service, capture_output=True, text=True, timeout=120
    )


def drift_of(project: Path, service: Path) -> str | None:
    [problem] = [problem for path, problem in _new.template_drift(project) if path == service]
    return problem


def test_a_new_service_records_the_template_and_its_commit(tmp_path: Path) -> None:
    assert main(["new", "quiz-analytics", "--no-input", "--project-dir", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "services/quiz_analytics/.cruft.json").read_text())
    assert record["template"] == str(REPO)  # outside the template's repository: where it is
    assert record["directory"] == TEMPLATE
    assert record["commit"] == template_commit(REPO)
    context = record["context"]["cookiecutter"]
    assert context["service_name"] == "quiz-analytics" and context["service_slug"] == "quiz_analytics"
    assert context["_template"] == record["template"] and context["_commit"] == record["commit"]


def test_every_service_of_the_project_is_in_step_with_the_template(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status = main(["template-check", "--project-dir", str(REPO)])
    out = capsys.readouterr().out
    assert status == 0, f"{out}\n(after a change to {TEMPLATE} is committed, update each service it lists)"
    assert "services/grading: in step with the template" in out.splitlines()


def test_a_template_change_is_drift_until_cruft_update_takes_it(tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "--quiet", str(REPO), str(clone))
    options = _new.NewOptions("quiz-analytics", clone, no_input=True, template=clone / TEMPLATE)
    service = _new.new_service(options)
    assert json.loads((service / ".cruft.json").read_text())["template"] == "../.."
    git(clone, "add", "-A")
    git(clone, "commit", "--quiet", "-m", "quiz-analytics, from the template")

    first = template_commit(clone)
    assert drift_of(clone, service) is None
    checked = cruft(service, "check", "--checkout", first)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    readme = clone / TEMPLATE / "{{cookiecutter.service_slug}}" / "README.md"
    readme.write_text(readme.read_text() + "\nOn call: the platform team.\n")
    git(clone, "commit", "--quiet", "-am", "template: say who is on call")
    second = template_commit(clone)
    problem = drift_of(clone, service)
    assert problem is not None and f"records template commit {first[:12]}" in problem
    assert f'cruft update --checkout "{second}"' in problem
    assert main(["template-check", "--project-dir", str(clone)]) == 1
    assert cruft(service, "check", "--checkout", second).returncode == 1

    updated = cruft(service, "update", "--checkout", second, "--skip-apply-ask")
    assert updated.returncode == 0, updated.stdout + updated.stderr
    assert (service / "README.md").read_text().endswith("On call: the platform team.\n")
    assert not (service / "proto").exists(), "the contract stays in the project's proto/"
    git(clone, "commit", "--quiet", "-am", "quiz-analytics takes the template change")
    assert drift_of(clone, service) is None
