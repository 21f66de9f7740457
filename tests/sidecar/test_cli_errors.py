"""`python -m chassis.sidecar` start-up failures (exit 1, one stderr line, no traceback); graceful stop."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import SidecarStarter
from sidecar_support import child_env, embedded_components, free_port, wait_until

from chassis.sidecar._registry import AppRegistry, default_registry_path

UNKNOWN_TYPE = """\
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: cache
spec:
  type: state.mongodb
  version: v1
  metadata:
  - {name: host, value: "localhost:27017"}
"""


def run_sidecar(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the sidecar to completion (these all fail at start-up)."""
    argv = [sys.executable, "-m", "chassis.sidecar", "--app-id", "broken"]
    # Free ports first: a port given in `args` comes later, and argparse keeps the last one.
    argv += ["--dapr-grpc-port", str(free_port()), "--dapr-http-port", str(free_port()), *args]
    env = child_env({"HOME": str(cwd)})  # no ~/.dapr/components of the developer's
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def assert_one_line_failure(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, result.stderr
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_invalid_yaml_names_the_file(tmp_path: Path) -> None:
    components = embedded_components(tmp_path / "components")
    (components / "statestore.yaml").write_text("apiVersion: dapr.io/v1alpha1\nkind: [Component\n")
    result = run_sidecar(tmp_path, "--resources-path", str(components))
    assert_one_line_failure(result, str(components / "statestore.yaml"), "invalid YAML")


def test_unknown_component_type_names_the_file_and_field(tmp_path: Path) -> None:
    components = embedded_components(tmp_path / "components")
    (components / "cache.yaml").write_text(UNKNOWN_TYPE)
    result = run_sidecar(tmp_path, "--resources-path", str(components))
    assert_one_line_failure(result, str(components / "cache.yaml"), "spec.type", "state.mongodb")


def test_missing_resources_folder(tmp_path: Path) -> None:
    assert_one_line_failure(run_sidecar(tmp_path), "--resources-path")
    missing = tmp_path / "nowhere"
    assert_one_line_failure(run_sidecar(tmp_path, "--resources-path", str(missing)), str(missing))


def test_an_unsupported_app_protocol_is_refused(tmp_path: Path) -> None:
    # grpc and http are served (tests/sidecar/test_http_app.py); daprd's TLS/h2c variants are not.
    components = embedded_components(tmp_path / "components")
    result = run_sidecar(tmp_path, "--resources-path", str(components), "--app-protocol", "grpcs")
    assert_one_line_failure(result, "--app-protocol grpcs", "not supported")


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port something else is listening on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


@pytest.mark.parametrize("flag", ["--dapr-grpc-port", "--dapr-http-port"])
def test_port_in_use(tmp_path: Path, taken_port: int, flag: str) -> None:
    components = embedded_components(tmp_path / "components")
    result = run_sidecar(tmp_path, "--resources-path", str(components), flag, str(taken_port))
    assert_one_line_failure(result, flag, str(taken_port))


def test_sigterm_stops_gracefully_and_unregisters(start_sidecar: SidecarStarter, tmp_path: Path) -> None:
    app_port = free_port()  # nothing listens: the sidecar keeps waiting for its app, and still stops cleanly
    sidecar = start_sidecar("graceful", app_port=app_port)
    registry_path = default_registry_path(tmp_path)
    assert lookup(registry_path, "graceful") == f"127.0.0.1:{app_port}"
    assert sidecar.popen is not None
    sidecar.popen.send_signal(signal.SIGTERM)
    assert sidecar.popen.wait(15) == 0
    assert lookup(registry_path, "graceful") is None
    assert wait_until(lambda: "stopped" in sidecar.log(), what="stop logged")


def lookup(path: Path, app_id: str) -> str | None:
    async def find() -> str | None:
        registry = AppRegistry(path)
        try:
            return await registry.lookup(app_id)
        finally:
            await registry.close()

    return asyncio.run(find())
