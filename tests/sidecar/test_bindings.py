"""Bindings through the official SDK: `bindings.http` and `bindings.smtp` (output), `bindings.cron` (input).

Also the deprecated `InvokeService` RPC, which reaches the same test app's `OnInvoke`. Real servers only:
a stdlib HTTP server, aiosmtpd, and the app written with `dapr.ext.grpc.App`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from dapr.clients import DaprClient
from sidecar_support import (
    Process,
    RunningSidecar,
    app_process,
    embedded_components,
    free_port,
    port_accepts,
    read_jsonl,
    sidecar_process,
    stop_all,
    wait_until,
)
from target_support import HttpTarget, Mailbox, http_target, smtp_sink

from chassis.sidecar.components.bindings_cron import go_time_string, parse_schedule

BINDINGS = """\
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {{name: web}}
spec:
  type: bindings.http
  version: v1
  metadata:
  - {{name: url, value: "{url}"}}
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {{name: web-lenient}}
spec:
  type: bindings.http
  version: v1
  metadata:
  - {{name: url, value: "{url}/"}}
  - {{name: errorIfNot2XX, value: "false"}}
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {{name: mail}}
spec:
  type: bindings.smtp
  version: v1
  metadata:
  - {{name: host, value: 127.0.0.1}}
  - {{name: port, value: "{smtp}"}}
  - {{name: emailFrom, value: noreply@mooc.example}}
  - {{name: subject, value: MOOC notification}}
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {{name: ticks}}
spec:
  type: bindings.cron
  version: v1
  metadata:
  - {{name: schedule, value: "@every 300ms"}}
  - {{name: direction, value: input}}
"""


@dataclass
class Setup:
    sidecar: RunningSidecar
    target: HttpTarget
    mailbox: Mailbox
    record: Path


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    workdir = tmp_path_factory.mktemp("bindings")
    started: list[Process] = []
    with http_target() as target, smtp_sink() as mailbox:
        folder = embedded_components(workdir / "res")
        (folder / "bindings.yaml").write_text(BINDINGS.format(url=target.url, smtp=mailbox.port))
        record = workdir / "record.jsonl"
        app_port = free_port()
        app = app_process("binder.py", app_port, workdir, env={"RECORD_FILE": str(record)})
        sidecar = sidecar_process("binder-app", workdir, app_port=app_port, resources=[folder])
        started += [app, sidecar]
        try:
            app.spawn()
            app.wait_ready(lambda: port_accepts(app_port), "listening")
            sidecar.spawn()
            sidecar.wait_ready(sidecar.healthy, "healthy")
            yield Setup(sidecar, target, mailbox, record)
        finally:
            stop_all(started)


@pytest.fixture
def env(setup: Setup, dapr_env: Callable[[RunningSidecar], None]) -> Setup:
    dapr_env(setup.sidecar)
    return setup


def test_http_binding_sends_path_headers_and_body(env: Setup) -> None:
    metadata = {"path": "/courses/c1", "X-Course": "c1", "lowercase": "not a header"}
    with DaprClient() as client:
        response = client.invoke_binding("web", "post", b'{"a": 1}', binding_metadata=metadata)
    assert response.data == b'{"a": 1}'
    assert response.binding_metadata["statusCode"] == "200"
    assert response.binding_metadata["status"] == "200 OK"
    assert response.binding_metadata["X-Seen-Method"] == "POST"
    seen = env.target.requests("/courses/c1")[-1]
    assert seen.method == "POST" and seen.body == b'{"a": 1}'
    assert seen.headers["X-Course"] == "c1"
    assert "lowercase" not in {key.lower() for key in seen.headers}
    assert seen.headers["Content-Type"] == "application/json; charset=utf-8"


@pytest.mark.parametrize(("operation", "method"), [("create", "POST"), ("get", "GET"), ("delete", "DELETE")])
def test_http_binding_operations_map_to_methods(env: Setup, operation: str, method: str) -> None:
    with DaprClient() as client:
        response = client.invoke_binding("web", operation, b"", binding_metadata={"path": f"op/{operation}"})
    assert response.binding_metadata["X-Seen-Method"] == method
    assert env.target.requests(f"/op/{operation}")[-1].method == method


def test_http_binding_non_2xx_is_an_error_unless_disabled(env: Setup) -> None:
    with DaprClient() as client:
        with pytest.raises(grpc.RpcError) as failed:
            client.invoke_binding("web", "get", b"", binding_metadata={"path": "/fail"})
        lenient = client.invoke_binding("web-lenient", "get", b"", binding_metadata={"path": "/fail"})
    assert failed.value.code() == grpc.StatusCode.INTERNAL
    assert failed.value.details() == "error when invoke output binding web: received status code 500"
    assert lenient.binding_metadata["statusCode"] == "500"


def test_unknown_binding_and_operation_are_daprd_errors(env: Setup) -> None:
    with DaprClient() as client:
        with pytest.raises(grpc.RpcError) as unknown:
            client.invoke_binding("nope", "create", b"")
        with pytest.raises(grpc.RpcError) as operation:
            client.invoke_binding("mail", "get", b"")
    expected = "error when invoke output binding nope: couldn't find output binding nope"
    assert unknown.value.details() == expected
    assert operation.value.details() == (
        "error when invoke output binding mail: binding mail does not support operation get."
        " supported operations:create"
    )


def test_smtp_binding_sends_html_with_defaults_and_overrides(env: Setup) -> None:
    metadata = {"emailTo": "a@x.example;b@x.example", "emailBCC": "c@x.example", "priority": "1"}
    with DaprClient() as client:
        client.invoke_binding("mail", "create", b'"<b>graded</b>"', binding_metadata=metadata)
    recipients, message = wait_until(lambda: env.mailbox.messages and env.mailbox.messages[-1], what="mail")
    assert sorted(recipients) == ["a@x.example", "b@x.example", "c@x.example"]
    assert message["From"] == "noreply@mooc.example"
    assert message["Subject"] == "MOOC notification"
    assert message["X-Priority"] == "1"
    assert message.get_content_type() == "text/html"
    assert message.get_payload(decode=True).strip() == b"<b>graded</b>"  # the JSON quotes are gone


def test_smtp_binding_requires_recipients(env: Setup) -> None:
    with DaprClient() as client, pytest.raises(grpc.RpcError) as failed:
        client.invoke_binding("mail", "create", b"hi")
    assert "emailTo is required" in str(failed.value.details())


def test_cron_input_binding_reaches_the_app(env: Setup) -> None:
    events = wait_until(
        lambda: [e for e in read_jsonl(env.record) if e["binding"] == "ticks"][2:], what="3 cron events"
    )
    assert events[0]["data"] == ""
    assert set(events[0]["metadata"]) >= {"timeZone", "readTimeUTC"}
    assert events[0]["metadata"]["readTimeUTC"].endswith(" +0000 UTC")


def test_invoke_service_reaches_the_app(env: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAPR_API_METHOD_INVOCATION_PROTOCOL", "grpc")
    with DaprClient() as client:
        response = client.invoke_method("binder-app", "echo", data=b"abc")
        with pytest.raises(grpc.RpcError) as unknown:
            client.invoke_method("nobody", "echo", data=b"abc")
    assert response.data == b"cba"
    assert response.content_type == "text/plain"
    assert "couldn't find service: nobody" in str(unknown.value.details())


def test_cron_schedules_parse_as_robfig_cron_does() -> None:
    assert parse_schedule("@every 1m30s").next_after(100.0) == 190.0
    six = parse_schedule("*/10 * * * * *")  # seconds first
    assert six.next_after(1_000_000_001.0) == 1_000_000_010.0
    assert parse_schedule("CRON_TZ=Europe/Paris 0 0 8 * * *").zone_name == "Europe/Paris"
    for bad in ("@fortnightly", "* * *", "TZ=Mars/Olympus * * * * *", "61 * * * * *"):
        with pytest.raises(ValueError):
            parse_schedule(bad)


def test_go_time_string() -> None:
    from datetime import UTC, datetime

    moment = datetime(2026, 1, 2, 3, 4, 5, 120000, tzinfo=UTC)
    assert go_time_string(moment) == "2026-01-02 03:04:05.12 +0000 UTC"


HTTP_APP_CRONS = """\
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: ticks}
spec:
  type: bindings.cron
  version: v1
  metadata:
  - {name: schedule, value: "@every 200ms"}
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: ignored}
spec:
  type: bindings.cron
  version: v1
  metadata:
  - {name: schedule, value: "@every 200ms"}
  - {name: route, value: /unwanted}
"""


def test_http_app_gets_options_then_posts(tmp_path: Path) -> None:
    with http_target() as app:
        folder = embedded_components(tmp_path / "res")
        (folder / "crons.yaml").write_text(HTTP_APP_CRONS)
        port = int(app.url.rsplit(":", 1)[1])
        sidecar = sidecar_process("http-binder", tmp_path, app_port=port, resources=[folder])
        sidecar.argv[sidecar.argv.index("--app-protocol") + 1] = "http"
        sidecar.spawn()
        try:
            sidecar.wait_ready(sidecar.healthy, "healthy")
            posts = wait_until(
                lambda: [r for r in app.requests("/ticks") if r.method == "POST"][1:], what="posts"
            )
        finally:
            stop_all([sidecar])
    assert app.requests("/ticks")[0].method == "OPTIONS"
    assert {"timeZone", "readTimeUTC", "traceparent"} <= {key for key in posts[0].headers}
    assert [r.method for r in app.requests("/unwanted")] == ["OPTIONS"]  # 404: never posted
