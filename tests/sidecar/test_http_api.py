"""daprd's HTTP API on the embedded sidecar: state, publish, bulk publish, metadata, bindings, invoke.

Driven with raw HTTP (urllib) and the official SDK (`DaprClient.invoke_method` speaks HTTP), against a
real sidecar subprocess with a real app (tests/sidecar/apps/invoke_app.py). Property-based tests throw
random keys, bodies and headers at it: every answer is a success or a typed daprd error, the sidecar
stays up, and state it should not touch stays as it was.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dapr.clients import DaprClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
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

STORE = "statestore"
PUBSUB = "pubsub"
TOPIC = "http-events"  # the topic invoke_app.py subscribes to
BINDING_YAML = """\
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: echo-binding
spec:
  type: bindings.http
  version: v1
  metadata:
  - name: url
    value: "http://127.0.0.1:{port}"
"""


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def call(
    sidecar: RunningSidecar,
    method: str,
    path: str,
    body: bytes | str | Any = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    """One HTTP request to the sidecar; any status is returned, not raised."""
    data = body if isinstance(body, bytes) or body is None else None
    if isinstance(body, str):
        data = body.encode()
    elif data is None and body is not None:
        data = json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{sidecar.http_port}{path}", data=data, method=method, headers=headers or {}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return Answer(
                response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
            )
    except urllib.error.HTTPError as err:
        return Answer(err.code, {k.lower(): v for k, v in err.headers.items()}, err.read())


@dataclass
class Stack:
    sidecar: RunningSidecar
    records: Path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One sidecar with a gRPC app (invoke_app.py), shared by the module's tests."""
    cwd = tmp_path_factory.mktemp("http-api")
    records = cwd / "events.jsonl"
    port = free_port()
    started: list[Process] = []
    try:
        app = app_process("invoke_app.py", port, cwd, env={"RECORD_FILE": str(records)})
        started.append(app)
        app.spawn()
        app.wait_ready(lambda: port_accepts(port), "listening")
        sidecar = sidecar_process("httpapi", cwd, app_port=port, env={"APP_API_TOKEN": "app-secret"})
        started.append(sidecar)
        sidecar.spawn()
        sidecar.wait_ready(lambda: sidecar.healthy("/v1.0/healthz"), "healthy with its app")
        yield Stack(sidecar, records)
    finally:
        stop_all(started)


def key() -> str:
    return f"k-{uuid.uuid4().hex[:12]}"


def assert_error(answer: Answer, status: int, code: str) -> dict[str, Any]:
    assert answer.status == status, answer
    body: dict[str, Any] = answer.json()
    assert body["errorCode"] == code, body
    assert body["message"]
    return body


# ---- state -----------------------------------------------------------------------------------------


def test_state_round_trip_etag_and_missing_key(stack: Stack) -> None:
    k = key()
    assert call(stack.sidecar, "GET", f"/v1.0/state/{STORE}/{k}").status == 204
    saved = call(stack.sidecar, "POST", f"/v1.0/state/{STORE}", [{"key": k, "value": {"b": 1, "a": "x"}}])
    assert saved.status == 204, saved
    got = call(stack.sidecar, "GET", f"/v1.0/state/{STORE}/{k}")
    assert got.status == 200
    assert got.json() == {"a": "x", "b": 1}
    assert got.headers["etag"]


def test_http_value_reads_back_over_grpc_as_json(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    k = key()
    call(stack.sidecar, "POST", f"/v1.0/state/{STORE}", [{"key": k, "value": "plain"}])
    for name, value in stack.sidecar.client_env().items():
        monkeypatch.setenv(name, value)
    with DaprClient() as client:
        assert client.get_state(STORE, k).data == b'"plain"'  # daprd stores the JSON encoding


def test_etag_mismatch_is_409_and_leaves_state(stack: Stack) -> None:
    k = key()
    call(stack.sidecar, "POST", f"/v1.0/state/{STORE}", [{"key": k, "value": 1}])
    etag = call(stack.sidecar, "GET", f"/v1.0/state/{STORE}/{k}").headers["etag"]
    stale = [{"key": k, "value": 2, "etag": "not-the-etag"}]
    assert_error(call(stack.sidecar, "POST", f"/v1.0/state/{STORE}", stale), 409, "ERR_STATE_SAVE")
    first_write = [{"key": k, "value": 3, "options": {"concurrency": "first-write"}}]
    assert_error(call(stack.sidecar, "POST", f"/v1.0/state/{STORE}", first_write), 409, "ERR_STATE_SAVE")
    assert call(stack.sidecar, "GET", f"/v1.0/state/{STORE}/{k}").json() == 1
    current = [{"key": k, "value": 4, "etag": etag}]
    assert call(stack.sidecar, "POST", f"/v1.0/state/{STORE}", current).status == 204


def test_delete_with_if_match(stack: Stack) -> None:
    k = key()
    call(stack.sidecar, "POST", f"/v1.0/state/{STORE}", [{"key": k, "value": 1}])
    etag = call(stack.sidecar, "GET", f"/v1.0/state/{STORE}/{k}").headers["etag"]
    wrong = call(stack.sidecar, "DELETE", f"/v1.0/state/{STORE}/{k}", headers={"If-Match": "nope"})
    assert_error(wrong, 409, "ERR_STATE_DELETE")
    assert call(stack.sidecar, "DELETE", f"/v1.0/state/{STORE}/{k}", headers={"If-Match": etag}).status == 204
    assert call(stack.sidecar, "GET", f"/v1.0/state/{STORE}/{k}").status == 204


def test_ttl_from_query_metadata(stack: Stack) -> None:
    k = key()
    path = f"/v1.0/state/{STORE}?metadata.ttlInSeconds=600"
    assert call(stack.sidecar, "POST", path, [{"key": k, "value": 1}]).status == 204
    assert call(stack.sidecar, "GET", f"/v1.0/state/{STORE}/{k}").headers["metadata.ttlexpiretime"]


def test_bulk_get(stack: Stack) -> None:
    a, b, missing = key(), key(), key()
    call(
        stack.sidecar, "POST", f"/v1.0/state/{STORE}", [{"key": a, "value": {"n": 1}}, {"key": b, "value": 2}]
    )
    answer = call(
        stack.sidecar, "POST", f"/v1.0/state/{STORE}/bulk", {"keys": [a, b, missing], "parallelism": 2}
    )
    assert answer.status == 200
    items = answer.json()
    assert [item["key"] for item in items] == [a, b, missing]
    assert items[0]["data"] == {"n": 1} and items[0]["etag"]
    assert items[1]["data"] == 2
    assert items[2] == {"key": missing}


def test_transaction_upsert_and_delete(stack: Stack) -> None:
    a, b = key(), key()
    call(stack.sidecar, "POST", f"/v1.0/state/{STORE}", [{"key": b, "value": "old"}])
    body = {
        "operations": [
            {"operation": "upsert", "request": {"key": a, "value": "new"}},
            {"operation": "delete", "request": {"key": b}},
        ]
    }
    assert call(stack.sidecar, "POST", f"/v1.0/state/{STORE}/transaction", body).status == 204
    assert call(stack.sidecar, "GET", f"/v1.0/state/{STORE}/{a}").json() == "new"
    assert call(stack.sidecar, "GET", f"/v1.0/state/{STORE}/{b}").status == 204


def test_failed_transaction_changes_nothing(stack: Stack) -> None:
    a, b = key(), key()
    call(stack.sidecar, "POST", f"/v1.0/state/{STORE}", [{"key": b, "value": "kept"}])
    body = {
        "operations": [
            {"operation": "upsert", "request": {"key": a, "value": 1}},
            {"operation": "delete", "request": {"key": b, "etag": "stale"}},
        ]
    }
    assert call(stack.sidecar, "POST", f"/v1.0/state/{STORE}/transaction", body).status == 409
    bad_op = {"operations": [{"operation": "merge", "request": {"key": a}}]}
    answer = call(stack.sidecar, "POST", f"/v1.0/state/{STORE}/transaction", bad_op)
    assert_error(answer, 400, "ERR_NOT_SUPPORTED_STATE_OPERATION")
    assert call(stack.sidecar, "GET", f"/v1.0/state/{STORE}/{a}").status == 204
    assert call(stack.sidecar, "GET", f"/v1.0/state/{STORE}/{b}").json() == "kept"


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("GET", "/v1.0/state/nostore/k", None, 400, "ERR_STATE_STORE_NOT_FOUND"),
        ("POST", "/v1.0/state/nostore", [], 400, "ERR_STATE_STORE_NOT_FOUND"),
        ("POST", f"/v1.0/state/{STORE}", b"{not json", 400, "ERR_MALFORMED_REQUEST"),
        ("POST", f"/v1.0/state/{STORE}", [{"value": 1}], 400, "ERR_MALFORMED_REQUEST"),
        ("POST", f"/v1.0/state/{STORE}", [{"key": "a||b", "value": 1}], 400, "ERR_MALFORMED_REQUEST"),
        ("GET", f"/v1.0/state/{STORE}/a||b", None, 400, "ERR_MALFORMED_REQUEST"),
        ("POST", f"/v1.0/state/{STORE}/bulk", {"keys": "k"}, 400, "ERR_MALFORMED_REQUEST"),
        ("POST", f"/v1.0/state/{STORE}/transaction", b"[]", 400, "ERR_MALFORMED_REQUEST"),
    ],
)
def test_state_errors(stack: Stack, method: str, path: str, body: Any, status: int, code: str) -> None:
    assert_error(call(stack.sidecar, method, path, body), status, code)


# ---- publish ---------------------------------------------------------------------------------------


def events(stack: Stack, count: int) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = wait_until(
        lambda: (records := read_jsonl(stack.records)) and len(records) >= count and records,
        what=f"{count} events delivered",
    )
    return found


def test_publish_content_type_metadata_and_passthrough(stack: Stack) -> None:
    marker = uuid.uuid4().hex
    headers = {"Content-Type": "application/json"}
    path = f"/v1.0/publish/{PUBSUB}/{TOPIC}?metadata.cloudevent.type=test.{marker}"
    assert call(stack.sidecar, "POST", path, {"marker": marker}, headers).status == 204
    event = {"id": f"own-{marker}", "source": "tester", "type": "own.type", "specversion": "1.0", "data": "x"}
    ce_headers = {"Content-Type": "application/cloudevents+json"}
    assert call(stack.sidecar, "POST", f"/v1.0/publish/{PUBSUB}/{TOPIC}", event, ce_headers).status == 204
    wait_until(
        lambda: sum(marker in json.dumps(r) for r in read_jsonl(stack.records)) >= 2, what="both events"
    )
    mine = [r for r in read_jsonl(stack.records) if marker in json.dumps(r)]
    wrapped = next(r for r in mine if r["type"] == f"test.{marker}")
    assert wrapped["datacontenttype"] == "application/json"
    assert json.loads(wrapped["data"]) == {"marker": marker}
    assert wrapped["source"] == "httpapi"
    own = next(r for r in mine if r["id"] == f"own-{marker}")
    assert (own["type"], own["source"]) == ("own.type", "tester")


def test_bulk_publish(stack: Stack) -> None:
    marker = uuid.uuid4().hex
    entries = [
        {"entryId": "1", "event": {"m": marker}, "contentType": "application/json"},
        {"entryId": "2", "event": f"text {marker}", "contentType": "text/plain"},
    ]
    path = f"/v1.0-alpha1/publish/bulk/{PUBSUB}/{TOPIC}"
    assert call(stack.sidecar, "POST", path, entries).status == 204
    wait_until(lambda: sum(marker in r["data"] for r in read_jsonl(stack.records)) == 2, what="bulk events")
    duplicate = [entries[0], entries[0]]
    assert_error(call(stack.sidecar, "POST", path, duplicate), 400, "ERR_PUBSUB_EVENTS_SER")


def test_publish_errors(stack: Stack) -> None:
    answer = call(stack.sidecar, "POST", f"/v1.0/publish/nopubsub/{TOPIC}", b"x")
    assert_error(answer, 404, "ERR_PUBSUB_NOT_FOUND")
    assert_error(call(stack.sidecar, "POST", f"/v1.0/publish/{PUBSUB}/", b"x"), 404, "ERR_TOPIC_EMPTY")
    bad_ce = {"Content-Type": "application/cloudevents+json"}
    answer = call(stack.sidecar, "POST", f"/v1.0/publish/{PUBSUB}/{TOPIC}", b"[1]", bad_ce)
    assert_error(answer, 500, "ERR_PUBSUB_CLOUD_EVENTS_SER")


# ---- metadata and bindings -------------------------------------------------------------------------


def test_metadata_get_and_put(stack: Stack) -> None:
    assert call(stack.sidecar, "PUT", "/v1.0/metadata/cliPID", "4242").status == 204
    meta = call(stack.sidecar, "GET", "/v1.0/metadata").json()
    assert meta["id"] == "httpapi"
    assert meta["extended"]["cliPID"] == "4242"
    assert {c["name"] for c in meta["components"]} >= {STORE, PUBSUB}


def test_unknown_output_binding(stack: Stack) -> None:
    answer = call(stack.sidecar, "POST", "/v1.0/bindings/nobinding", {"data": "x", "operation": "create"})
    assert_error(answer, 500, "ERR_INVOKE_OUTPUT_BINDING")


# ---- invoke ----------------------------------------------------------------------------------------


def test_sdk_invoke_passes_everything_through(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in stack.sidecar.client_env().items():
        monkeypatch.setenv(name, value)
    with DaprClient() as client:
        response = client.invoke_method(
            "httpapi",
            "echo",
            data=b"hello",
            content_type="text/x-test",
            metadata=(("x-custom", "42"),),
            http_verb="PUT",
            http_querystring=(("a", "1"), ("b", "two")),
        )
    assert response.status_code == 200
    assert response.headers["x-echo"] == ["yes"]
    echoed = json.loads(response.data)
    assert (echoed["method"], echoed["verb"], echoed["query"]) == ("echo", "PUT", "a=1&b=two")
    assert (echoed["content_type"], echoed["body"]) == ("text/x-test", "hello")
    assert echoed["headers"]["x-custom"] == "42"
    assert echoed["headers"]["dapr-api-token"] == "app-secret"  # APP_API_TOKEN goes to the app
    assert echoed["headers"]["dapr-caller-app-id"] == "httpapi"
    assert echoed["headers"]["traceparent"]


@pytest.mark.parametrize("verb", ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"])
def test_every_verb_with_app_id_header(stack: Stack, verb: str) -> None:
    answer = call(
        stack.sidecar, verb, "/echo?x=1", b"" if verb in {"GET", "HEAD"} else b"b", {"dapr-app-id": "httpapi"}
    )
    assert answer.status == 200
    if verb != "HEAD":
        assert (answer.json()["verb"], answer.json()["query"]) == (verb, "x=1")


def test_protobuf_answer_and_grpc_error(stack: Stack) -> None:
    answer = call(stack.sidecar, "POST", "/v1.0/invoke/httpapi/method/proto", b"\x08\x01")
    assert answer.status == 200
    assert answer.headers["content-type"] == "application/x-protobuf"
    assert answer.body == b"\x08\x01"
    failed = call(stack.sidecar, "GET", "/v1.0/invoke/httpapi/method/fail")
    assert failed.status == 404  # daprd maps the app's gRPC code to its HTTP status
    body = failed.json()
    assert (body["code"], body["message"]) == (5, "no such thing")
    assert body["details"][0]["reason"] == "NO_SUCH_THING"


def test_invoke_errors(stack: Stack) -> None:
    answer = call(stack.sidecar, "GET", "/v1.0/invoke/nosuchapp/method/echo")
    body = assert_error(answer, 500, "ERR_DIRECT_INVOKE")
    assert "nosuchapp" in body["message"]
    assert_error(call(stack.sidecar, "GET", "/v1.0/invoke/httpapi"), 404, "ERR_DIRECT_INVOKE")


def test_http_app_invoke_and_output_binding(tmp_path: Path) -> None:
    port = free_port()
    started: list[Process] = []
    try:
        app = app_process("invoke_app.py", port, tmp_path, env={"APP_PROTOCOL": "http"})
        started.append(app)
        app.spawn()
        app.wait_ready(lambda: port_accepts(port), "listening")
        components = embedded_components(tmp_path / "components")
        (components / "binding.yaml").write_text(BINDING_YAML.format(port=port))
        sidecar = sidecar_process("httpapp", tmp_path, app_port=port, resources=[components])
        sidecar.argv[sidecar.argv.index("--app-protocol") + 1] = "http"
        started.append(sidecar)
        sidecar.spawn()
        sidecar.wait_ready(lambda: sidecar.healthy(), "healthy")
        headers = {"Content-Type": "application/json", "x-custom": "1"}
        answer = call(sidecar, "PATCH", "/v1.0/invoke/httpapp/method/things/7?q=a%20b", b'{"a":1}', headers)
        assert answer.status == 200 and answer.headers["x-echo"] == "yes"
        echoed = answer.json()
        assert (echoed["method"], echoed["verb"], echoed["query"]) == ("things/7", "PATCH", "q=a%20b")
        assert (echoed["body"], echoed["headers"]["x-custom"]) == ('{"a":1}', "1")
        teapot = call(sidecar, "GET", "/v1.0/invoke/httpapp/method/fail")
        assert (teapot.status, teapot.body, teapot.headers["x-teapot"]) == (418, b"short and stout", "yes")
        binding = {"data": {"a": 1}, "operation": "post", "metadata": {"path": "/hooks"}}
        answer = call(sidecar, "POST", "/v1.0/bindings/echo-binding", binding)
        assert answer.status == 200 and answer.headers["metadata.statuscode"] == "200"
        echoed = answer.json()
        assert (echoed["method"], echoed["verb"], echoed["body"]) == ("hooks", "POST", '{"a":1}')
    finally:
        stop_all(started)


# ---- bad input (property-based) --------------------------------------------------------------------

_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | _text,
    lambda inner: st.lists(inner) | st.dictionaries(_text, inner),
)
_header_value = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30)
_header_name = st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,15}", fullmatch=True)
_FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _forwarded(name: str) -> bool:
    """Headers the sidecar passes to a gRPC app as metadata (not hop-by-hop, not its own)."""
    lowered = name.lower()
    own = {"host", "connection", "te", "upgrade", "expect", "keep-alive", "trailer", "content-type"}
    return lowered not in own and not lowered.startswith(("grpc-", "dapr-", "proxy-", "transfer-"))


@pytest.fixture(scope="module")
def sentinel(stack: Stack) -> tuple[str, bytes]:
    """A key no fuzzed request names: it must read back unchanged after every one."""
    k = f"sentinel-{uuid.uuid4().hex}"
    call(stack.sidecar, "POST", f"/v1.0/state/{STORE}", [{"key": k, "value": {"keep": True}}])
    return k, call(stack.sidecar, "GET", f"/v1.0/state/{STORE}/{k}").body


def assert_typed(answer: Answer) -> None:
    """A success, or daprd's `{errorCode, message}` error."""
    if answer.status >= 400:
        body = answer.json()
        assert isinstance(body["errorCode"], str) and body["errorCode"].startswith("ERR_"), body
        assert answer.status < 500 or body["errorCode"] != "ERR_INTERNAL", body


def assert_untouched(stack: Stack, sentinel: tuple[str, bytes]) -> None:
    assert call(stack.sidecar, "GET", f"/v1.0/state/{STORE}/{sentinel[0]}").body == sentinel[1]
    assert stack.sidecar.running


@_FUZZ
@given(body=_json)
def test_fuzz_state_save_bodies(stack: Stack, sentinel: tuple[str, bytes], body: Any) -> None:
    assert_typed(call(stack.sidecar, "POST", f"/v1.0/state/{STORE}", body))
    assert_typed(call(stack.sidecar, "POST", f"/v1.0/state/{STORE}/transaction", body))
    assert_typed(call(stack.sidecar, "POST", f"/v1.0/state/{STORE}/bulk", body))
    assert_untouched(stack, sentinel)


@_FUZZ
@given(raw=st.binary(max_size=200), content_type=_header_value)
def test_fuzz_raw_bytes(stack: Stack, sentinel: tuple[str, bytes], raw: bytes, content_type: str) -> None:
    headers = {"Content-Type": content_type}
    for path in (
        f"/v1.0/state/{STORE}",
        f"/v1.0/publish/{PUBSUB}/fuzz",
        f"/v1.0-alpha1/publish/bulk/{PUBSUB}/fuzz",
    ):
        assert_typed(call(stack.sidecar, "POST", path, raw, headers))
    assert_untouched(stack, sentinel)


@_FUZZ
@given(k=_text.filter(lambda s: s.strip() != ""), value=_json)
def test_fuzz_keys_round_trip_or_typed_error(
    stack: Stack, sentinel: tuple[str, bytes], k: str, value: Any
) -> None:
    quoted = urllib.request.quote(k, safe="")
    saved = call(stack.sidecar, "POST", f"/v1.0/state/{STORE}", [{"key": k, "value": value}])
    assert_typed(saved)
    if saved.status == 204 and "/" not in k:
        got = call(stack.sidecar, "GET", f"/v1.0/state/{STORE}/{quoted}")
        assert got.status == 200 and got.json() == value
    assert_untouched(stack, sentinel)


@_FUZZ
@given(headers=st.dictionaries(_header_name, _header_value, max_size=5), path=_text)
def test_fuzz_invoke_headers_and_paths(
    stack: Stack, sentinel: tuple[str, bytes], headers: dict[str, str], path: str
) -> None:
    headers.pop("Content-Length", None)
    quoted = urllib.request.quote(path)
    answer = call(stack.sidecar, "POST", f"/v1.0/invoke/httpapi/method/echo{quoted}", b"x", headers)
    if answer.status == 200:  # the app saw the call: the custom headers arrived
        echoed = answer.json()["headers"]
        sent = {name.lower(): value.strip() for name, value in headers.items() if _forwarded(name)}
        assert all(echoed.get(name) == value for name, value in sent.items())
    else:  # the path escaped the invoke route: a typed error, never a crash
        assert answer.json()["errorCode"] in {"ERR_DIRECT_INVOKE", "ERR_NOT_FOUND"}
    assert_untouched(stack, sentinel)
