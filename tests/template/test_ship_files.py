"""What a service ships with: its Dockerfile builds from files that exist and runs the service as a
non-root user with its protos compiled, and its Kubernetes manifest gives Dapr the app id and port the
service really uses. Checked on a freshly generated service and on every service of the project.

Docker cannot build here, so the files are parsed; the image is built only where `docker info` answers.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from chassis._protogen import GEN_DIR
from chassis.cli import main

REPO = Path(__file__).resolve().parents[2]
# What the image copies from the project root besides the service and its contracts.
CHASSIS_FILES = ("pyproject.toml", "README.md", "chassis")


@dataclass(frozen=True)
class Shipped:
    """One service and the project it sits in."""

    project: Path
    service: Path

    @property
    def slug(self) -> str:
        return self.service.name

    def run_entry(self) -> dict[str, Any]:
        apps = yaml.safe_load((self.project / "dapr.yaml").read_text())["apps"]
        [entry] = [app for app in apps if app["appDirPath"] == f"./services/{self.slug}"]
        return dict(entry)

    def manifest(self) -> dict[str, dict[str, Any]]:
        docs = list(yaml.safe_load_all((self.service / "deploy" / "kubernetes.yaml").read_text()))
        return {doc["kind"]: doc for doc in docs}

    def dockerfile(self) -> list[tuple[str, str]]:
        """(instruction, arguments) of each Dockerfile line, continuations joined, comments dropped."""
        text = re.sub(r"\\\n\s*", " ", (self.service / "Dockerfile").read_text())
        lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
        return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]

    def in_context(self, source: str) -> bool:
        """Whether the build context (the project root) holds `source`; the chassis is the repository's."""
        source = source.rstrip("/")
        return (self.project / source).exists() or (source in CHASSIS_FILES and (REPO / source).exists())


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Shipped:
    project = tmp_path_factory.mktemp("project")
    shutil.copytree(REPO / "proto", project / "proto")
    assert main(["new", "quiz-analytics", "--no-input", "--project-dir", str(project)]) == 0
    return Shipped(project, project / "services" / "quiz_analytics")


EXISTING = sorted(p.parent.name for p in (REPO / "services").glob("*/pyproject.toml"))


@pytest.fixture(params=["generated", *EXISTING])
def shipped(request: pytest.FixtureRequest, generated: Shipped) -> Shipped:
    if request.param == "generated":
        return generated
    return Shipped(REPO, REPO / "services" / request.param)


def env_of(dockerfile: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction, args in dockerfile:
        if instruction == "ENV":
            env.update(pair.partition("=")[::2] for pair in args.split())
    return env


def app_id_in_code(shipped: Shipped) -> str:
    """APP_ID as service.py defines it (read, not imported: importing needs the compiled protos)."""
    tree = ast.parse((shipped.service / shipped.slug / "service.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "APP_ID" for t in node.targets):
            return str(ast.literal_eval(node.value))
    raise AssertionError("service.py defines no APP_ID")


def settings_under(shipped: Shipped, env: dict[str, str]) -> dict[str, Any]:
    """The service's own Settings class, built in a child process from `env` only (as in the pod)."""
    code = f"from {shipped.slug}.settings import Settings; print(Settings().model_dump_json())"
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DAPR_", "APP_", "CHASSIS_"))}
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=shipped.service,
        env={**clean, **env, "PYTHONPATH": str(shipped.service)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_the_manifest_gives_dapr_the_app_id_and_port_the_service_uses(shipped: Shipped) -> None:
    manifest = shipped.manifest()
    assert set(manifest) == {"Deployment", "Service"}
    deployment, service = manifest["Deployment"], manifest["Service"]
    pod = deployment["spec"]["template"]
    annotations = pod["metadata"]["annotations"]
    app_id = shipped.run_entry()["appID"]
    assert app_id == app_id_in_code(shipped)
    assert annotations["dapr.io/enabled"] == "true"
    assert annotations["dapr.io/app-id"] == app_id
    assert annotations["dapr.io/app-protocol"] == "grpc" == shipped.run_entry()["appProtocol"]
    assert all(isinstance(value, str) for value in annotations.values()), "annotations must be strings"

    [container] = pod["spec"]["containers"]
    env = {item["name"]: item["value"] for item in container["env"]}
    settings = settings_under(shipped, env)
    assert settings["app_id"] == app_id
    assert str(settings["app_port"]) == annotations["dapr.io/app-port"]
    assert settings["bind_host"] == "0.0.0.0"  # the Service reaches the pod's address, not its loopback
    [port] = container["ports"]
    assert port["containerPort"] == settings["app_port"]

    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["selector"] == selector
    assert [p["targetPort"] for p in service["spec"]["ports"]] == [port["name"]]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True


def test_the_dockerfile_builds_from_files_that_exist_and_runs_the_service(shipped: Shipped) -> None:
    dockerfile = shipped.dockerfile()
    assert dockerfile[0] == ("FROM", "python:3.11-slim")
    copies = [args.split() for instruction, args in dockerfile if instruction == "COPY"]
    for *sources, _destination in copies:
        missing = [s for s in sources if not shipped.in_context(s)]
        assert not missing, f"COPY names files outside the build context: {missing}"
    assert f"services/{shipped.slug}/" in {source for *sources, _ in copies for source in sources}
    assert (shipped.service / shipped.slug / "__main__.py").is_file()
    assert dockerfile[-1] == ("CMD", json.dumps(["python", "-m", shipped.slug]))

    runs = [args for instruction, args in dockerfile if instruction == "RUN"]
    assert "chassis protoc --project-dir /app" in runs, "the image must compile proto/"
    env = env_of(dockerfile)
    assert env["PYTHONPATH"] == f"/app/{GEN_DIR.as_posix()}", "the compiled protos must be importable"
    users = [args for instruction, args in dockerfile if instruction == "USER"]
    assert users and users[-1] not in ("root", "0"), "the service must not run as root"

    annotations = shipped.manifest()["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert env["APP_ID"] == annotations["dapr.io/app-id"]
    assert env["APP_PORT"] == annotations["dapr.io/app-port"]
    exposed = [args for instruction, args in dockerfile if instruction == "EXPOSE"]
    assert exposed == [env["APP_PORT"]]


def test_the_dockerignore_lets_through_exactly_what_the_image_copies(shipped: Shipped) -> None:
    """BuildKit reads <Dockerfile>.dockerignore beside the Dockerfile when the context is the project root."""
    patterns = (shipped.service / "Dockerfile.dockerignore").read_text().split("\n")
    kept = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    copied = {
        source.rstrip("/")
        for instruction, args in shipped.dockerfile()
        if instruction == "COPY"
        for source in args.split()[:-1]
    }
    rules = [p for p in patterns if p and not p.startswith("#")]
    assert rules[0] == "**", "ignore everything, then let through what the image needs"
    assert copied == kept


def docker_works() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not docker_works(), reason="docker is not usable here (`docker info` fails)")
def test_the_image_builds_with_docker() -> None:
    for slug in EXISTING:
        done = subprocess.run(
            ["docker", "build", "-f", f"services/{slug}/Dockerfile", "-t", f"chassis-test-{slug}", "."],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
