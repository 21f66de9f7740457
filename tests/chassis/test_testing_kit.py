"""The test kit itself: env hygiene, polling, server checks, and processes that are always reaped."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from chassis.testing import Sidecar, free_port, requires_server, wait_for
from chassis.testing._harness import _sqlite_files


@pytest.fixture(scope="module")
def leaked_env() -> Iterator[None]:
    # Set before the autouse env fixture runs, as a developer's shell would.
    os.environ.update({"DAPR_GRPC_PORT": "1", "OTEL_TRACES_EXPORTER": "console", "CHASSIS_TRACE_FILE": "/x"})
    yield
    for key in ("DAPR_GRPC_PORT", "OTEL_TRACES_EXPORTER", "CHASSIS_TRACE_FILE"):
        os.environ.pop(key, None)


@pytest.mark.usefixtures("leaked_env")
def test_tests_start_without_dapr_otel_or_chassis_variables() -> None:
    assert [k for k in os.environ if k.startswith(("DAPR_", "OTEL_", "CHASSIS_"))] == []


def test_generated_protos_are_importable() -> None:
    import mooc.events.v1.assessment_pb2 as events

    assert Path(events.__file__).parts[-6:-3] == (".chassis", "gen", "mooc")


async def test_wait_for_returns_the_first_truthy_value_of_sync_or_async_predicates() -> None:
    calls = iter([0, 0, 7])

    async def later() -> int:
        return next(calls)

    assert await wait_for(later, timeout=5, interval=0.01) == 7
    assert await wait_for(lambda: "ready", timeout=1) == "ready"
    with pytest.raises(TimeoutError, match=r"^not true after 0\.1s: the moon \(last result: \[\]\)$"):
        await wait_for(lambda: [], timeout=0.1, interval=0.02, what="the moon")


def test_a_missing_server_skips_with_one_line_naming_it_and_how_to_start_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CI", raising=False)
    port = free_port()  # nothing listens there

    with pytest.raises(pytest.skip.Exception) as skipped:
        requires_server("Redis", "127.0.0.1", port, "docker run -p 6379:6379 redis:7")

    assert (
        str(skipped.value)
        == f"Redis not reachable at 127.0.0.1:{port}; start it with: docker run -p 6379:6379 redis:7"
    )


def test_a_missing_server_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")

    with pytest.raises(pytest.fail.Exception, match="Redis not reachable"):
        requires_server("Redis", "127.0.0.1", free_port(), "docker run redis:7")


def test_a_reachable_server_lets_the_test_run() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listening:
        requires_server("Redis", "127.0.0.1", listening.getsockname()[1], "docker run redis:7")


def test_a_sidecar_that_cannot_start_reports_why(tmp_path: Path) -> None:
    resources = tmp_path / "broken"
    resources.mkdir()
    (resources / "statestore.yaml").write_text(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nspec: [not, a, map]\n"
    )
    sidecar = Sidecar("broken", tmp_path, resources=[resources])

    with pytest.raises(RuntimeError, match=r"sidecar-broken exited with 1 before healthy") as caught:
        sidecar.start(timeout=20)
    sidecar.stop()

    assert "statestore.yaml" in str(caught.value)  # the sidecar's own error line, from its log


def test_stop_reaps_the_whole_process_group(tmp_path: Path) -> None:
    sidecar = Sidecar("reaped", tmp_path).start()
    pid = sidecar.pid

    sidecar.stop()

    assert sidecar.process.returncode is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)


def test_free_ports_can_be_bound() -> None:
    port = free_port()
    with socket.create_server(("127.0.0.1", port)):
        pass


def test_the_sqlite_files_of_a_profile_are_those_in_scope_for_the_app(tmp_path: Path) -> None:
    embedded = Path(__file__).resolve().parents[2] / "dapr" / "components" / "embedded"
    data = tmp_path / ".chassis" / "data"

    assert _sqlite_files([embedded], "grading", tmp_path) == {
        "pubsub": data / "pubsub.db",
        "statestore": data / "state.db",
    }
    assert _sqlite_files([embedded], "assessment", tmp_path)["assessment-outbox"] == data / "state.db"
