"""Bad input to the embedded sidecar: malformed protobuf and CloudEvents, invalid resource YAML.

Property-based (hypothesis) against real processes. One sidecar, with the subscriber app behind it,
takes undecodable gRPC requests, broken CloudEvents and JSON that Go's decoder refuses: each gets a
clear, stable error (with daprd's `details` over HTTP), stored values and ETags stay as they were,
nothing broken reaches the subscriber (a stored event that cannot be decoded is dropped, not retried),
and the sidecar logs no traceback.
Resource YAML is fuzzed through `load_specs` in-process; two real start-ups then fail with one line
and leave the existing state file alone. Wrong tokens and oversized payloads: test_security.py.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from dapr.clients import DaprClient
from dapr.clients.exceptions import DaprGrpcError
from dapr.proto.common.v1 import common_pb2
from dapr.proto.runtime.v1 import dapr_pb2, pubsub_pb2, state_pb2
from google.protobuf import message_factory
from google.protobuf.message import DecodeError, Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sidecar_support import Process, RunningSidecar, embedded_components, stop_all, wait_until
from test_cli_errors import assert_one_line_failure, run_sidecar
from test_delivery import Pair, start_pair
from test_http_api import call

from chassis.sidecar._errors import ResourceError
from chassis.sidecar._outcomes import Delivery, Outcome
from chassis.sidecar._resources import DRIVERS, load_specs
from chassis.sidecar._settle import prepare
from chassis.sidecar._subscriptions import Subscription
from chassis.sidecar.components import Message as Stored
from chassis.sidecar.components import pubsub_sqlite, state_sqlite

STORE, PUBSUB = "statestore", "pubsub"
TOPIC = "orders"  # the subscriber app answers SUCCESS and records every delivery
NOBODY = "bad-input-nobody"  # no subscriber: a damaged publish that still decodes goes nowhere
SEEDS = {f"bad-input-{name}": f"seed value {name}".encode() for name in ("a", "b", "c")}
SERVICE = "dapr.proto.runtime.v1.Dapr"
UNMARSHAL = "grpc: error unmarshalling request: "  # grpc-go's (daprd's) text, with code INTERNAL
CE_ERROR = {"errorCode": "ERR_PUBSUB_CLOUD_EVENTS_SER", "message": "cannot create cloudevent"}
CE_HEADERS = {"Content-Type": "application/cloudevents+json"}

_FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
_FEW = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

Snapshot = dict[str, tuple[bytes, str]]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    started: list[Process] = []
    try:
        yield start_pair(tmp_path_factory.mktemp("bad-input"), started)
    finally:
        stop_all(started)


@pytest.fixture
def client(stack: Pair, dapr_env: Callable[[RunningSidecar], None]) -> Iterator[DaprClient]:
    dapr_env(stack.sidecar)
    with DaprClient() as dapr:
        yield dapr


@pytest.fixture
def seeded(client: DaprClient) -> Snapshot:
    """Known keys written through the SDK; the snapshot of their values and ETags."""
    for key, value in SEEDS.items():
        client.save_state(STORE, key, value)
    return snapshot(client)


@pytest.fixture
def raw(stack: Pair) -> Iterator[grpc.Channel]:
    """A channel without serializers: requests go out as the bytes given."""
    with grpc.insecure_channel(f"127.0.0.1:{stack.sidecar.grpc_port}") as channel:
        yield channel


def snapshot(client: DaprClient) -> Snapshot:
    return {item.key: (item.data, item.etag) for item in client.get_bulk_state(STORE, list(SEEDS)).items}


def assert_clean_log(sidecar: RunningSidecar) -> None:
    """Bad input is the caller's mistake: answered, never logged as a crash of ours."""
    log = sidecar.log()
    assert "Traceback" not in log and "failed unexpectedly" not in log, log[-3000:]


# ---- malformed protobuf over gRPC ------------------------------------------------------------------

_DAPR = dapr_pb2.DESCRIPTOR.services_by_name["Dapr"]
FUZZED = (
    "SaveState",
    "GetState",
    "GetBulkState",
    "DeleteState",
    "DeleteBulkState",
    "ExecuteStateTransaction",
    "PublishEvent",
    "BulkPublishEventAlpha1",
    "InvokeBinding",
    "GetSecret",
    "GetMetadata",
)
REQUEST_TYPES: dict[str, type[Message]] = {
    method: message_factory.GetMessageClass(_DAPR.methods_by_name[method].input_type) for method in FUZZED
}


def decodes(method: str, wire: bytes) -> bool:
    """The oracle: does protobuf itself accept these bytes as the method's request?"""
    try:
        REQUEST_TYPES[method].FromString(wire)
    except DecodeError:
        return False
    return True


def unary(channel: grpc.Channel, method: str, wire: bytes) -> tuple[grpc.StatusCode, str]:
    """Send raw bytes; the status code and details (OK and '' on success)."""
    try:
        channel.unary_unary(f"/{SERVICE}/{method}")(wire, timeout=10)
    except grpc.RpcError as err:
        return err.code(), err.details() or ""
    return grpc.StatusCode.OK, ""


def assert_answered(method: str, wire: bytes, answer: tuple[grpc.StatusCode, str]) -> None:
    code, details = answer
    if decodes(method, wire):
        # A valid (if odd) request: the API's own answer, never a decoding or unexpected failure.
        assert code != grpc.StatusCode.UNKNOWN and not details.startswith(UNMARSHAL), answer
    else:
        assert code == grpc.StatusCode.INTERNAL, answer
        assert details.startswith(UNMARSHAL) and len(details) > len(UNMARSHAL), answer


def _item(key: str) -> common_pb2.StateItem:
    return common_pb2.StateItem(key=key, value=b'"evil"', metadata={"contentType": "application/json"})


# Real requests that would write `victims` (state) or publish (to a topic nobody reads).
CRAFTED: dict[str, Callable[[str], Message]] = {
    "SaveState": lambda victim: state_pb2.SaveStateRequest(
        store_name=STORE, states=[_item(victim), _item(victim + "-2")]
    ),
    "ExecuteStateTransaction": lambda victim: state_pb2.ExecuteStateTransactionRequest(
        storeName=STORE,
        operations=[
            state_pb2.TransactionalStateOperation(operationType="upsert", request=_item(victim)),
            state_pb2.TransactionalStateOperation(operationType="upsert", request=_item(victim + "-2")),
        ],
        metadata={"note": "crafted"},
    ),
    "DeleteState": lambda victim: state_pb2.DeleteStateRequest(
        store_name=STORE, key=victim, etag=common_pb2.Etag(value="1"), metadata={"note": "crafted"}
    ),
    "PublishEvent": lambda victim: pubsub_pb2.PublishEventRequest(
        pubsub_name=PUBSUB,
        topic=NOBODY,
        data=b'{"victim": true}',
        data_content_type="application/json",
        metadata={"cloudevent.id": victim},
    ),
    "BulkPublishEventAlpha1": lambda victim: pubsub_pb2.BulkPublishRequest(
        pubsub_name=PUBSUB,
        topic=NOBODY,
        entries=[pubsub_pb2.BulkPublishRequestEntry(entry_id=victim, event=b"x", content_type="text/plain")],
    ),
}


def damage(wire: bytes, how: str, at: int, byte: int, extra: bytes) -> bytes:
    """Cut the encoding short, overwrite one byte, give a tag another wire type, or splice bytes in."""
    at %= len(wire)
    if how == "cut":
        return wire[:at]
    if how == "flip":
        return wire[:at] + bytes([byte]) + wire[at + 1 :]
    if how == "retag":  # the first byte is field 1's tag: keep the field number, change the wire type
        return bytes([(wire[0] & ~7) | (byte % 8)]) + wire[1:]
    return wire[:at] + extra + wire[at:]


def assert_still_serving(stack: Pair, client: DaprClient, seeded: Snapshot) -> None:
    key = f"after-{uuid.uuid4().hex}"
    client.save_state(STORE, key, b"fine")
    assert client.get_state(STORE, key).data == b"fine"
    assert snapshot(client) == seeded
    assert stack.sidecar.healthy("/v1.0/healthz")
    assert_clean_log(stack.sidecar)


def test_random_bytes_get_a_decoding_error_and_change_nothing(
    stack: Pair, raw: grpc.Channel, client: DaprClient, seeded: Snapshot
) -> None:
    @_FUZZ
    @given(method=st.sampled_from(FUZZED), wire=st.binary(max_size=200))
    def send(method: str, wire: bytes) -> None:
        assert_answered(method, wire, unary(raw, method, wire))
        assert snapshot(client) == seeded

    send()
    assert_still_serving(stack, client, seeded)


def test_damaged_real_requests_are_refused_whole(
    stack: Pair, raw: grpc.Channel, client: DaprClient, seeded: Snapshot
) -> None:
    @_FUZZ
    @given(
        method=st.sampled_from(sorted(CRAFTED)),
        how=st.sampled_from(["cut", "flip", "retag", "insert"]),
        at=st.integers(min_value=0, max_value=10_000),
        byte=st.integers(min_value=0, max_value=255),
        extra=st.binary(min_size=1, max_size=8),
    )
    def send(method: str, how: str, at: int, byte: int, extra: bytes) -> None:
        victim = f"victim-{uuid.uuid4().hex}"  # fresh per run: what a decodable request wrote stays apart
        wire = damage(CRAFTED[method](victim).SerializeToString(), how, at, byte, extra)
        assert_answered(method, wire, unary(raw, method, wire))
        if not decodes(method, wire):
            written = client.get_bulk_state(STORE, [victim, victim + "-2"]).items
            assert [item.data for item in written] == [b"", b""]  # not half a request: nothing at all
        assert snapshot(client) == seeded

    send()
    assert_still_serving(stack, client, seeded)


def test_a_truncated_save_is_internal_with_daprds_text(raw: grpc.Channel, client: DaprClient) -> None:
    victim = f"victim-{uuid.uuid4().hex}"
    wire = CRAFTED["SaveState"](victim).SerializeToString()
    code, details = unary(raw, "SaveState", wire[:-3])
    assert code == grpc.StatusCode.INTERNAL
    expected = UNMARSHAL + "Error parsing message with type 'dapr.proto.runtime.v1.SaveStateRequest'"
    assert details.startswith(expected)
    assert client.get_state(STORE, victim).data == b""


# ---- malformed CloudEvents -------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"not JSON: {name}")


def is_json_object(body: bytes) -> bool:
    """Is `body` a JSON object? Python's reading, minus the NaN/Infinity that Go (daprd) refuses."""
    try:
        value = json.loads(body, parse_constant=_reject_constant)
    except ValueError:  # UnicodeDecodeError included
        return False
    return isinstance(value, dict)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
_not_an_object = _json.filter(lambda value: not isinstance(value, dict)).map(lambda v: json.dumps(v).encode())
_not_json = st.binary(max_size=120).filter(lambda body: not is_json_object(body))
_truncated = st.builds(
    lambda event, cut: json.dumps(event).encode()[: max(1, cut)],
    st.fixed_dictionaries({"specversion": st.just("1.0"), "id": st.text(), "source": st.text()}),
    st.integers(min_value=1, max_value=20),
)
# Python's json reads these; Go's (daprd's) does not, and they are no JSON a subscriber could parse.
_not_finite = st.builds(
    lambda number, key: f'{{"specversion": "1.0", "id": "x", "{key}": {number}}}'.encode(),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e400"]),
    st.sampled_from(["data", "source", "ext"]),
)


def _not_base64(text: str) -> bool:
    try:
        base64.b64decode(text, validate=True)
    except ValueError:  # binascii.Error, or not ASCII
        return True
    return False


# daprd stores these and then can never hand them to a gRPC app (a poison message): refused at publish.
_bad_data_base64 = st.builds(
    lambda value: json.dumps({"specversion": "1.0", "id": "x", "type": "t", "data_base64": value}),
    st.one_of(
        st.integers(), st.booleans(), st.lists(st.integers(), max_size=2), st.just({"a": 1}),
        st.text(max_size=12).filter(_not_base64),
    ),
).map(str.encode)  # fmt: skip
MALFORMED_EVENTS = st.one_of(_not_json, _not_an_object, _truncated, _not_finite, _bad_data_base64)


def marker_of(record: dict[str, Any]) -> str | None:
    """The `marker` of a delivery whose data is `{"marker": ...}`, else None."""
    try:
        data = json.loads(bytes.fromhex(record["data"]))
    except ValueError:
        return None
    return data.get("marker") if isinstance(data, dict) else None


def wait_for(stack: Pair, markers: set[str] | dict[str, Any]) -> list[dict[str, Any]]:
    """The deliveries on TOPIC carrying `markers`, once there is one for each."""

    def found() -> list[dict[str, Any]] | None:
        matching = [r for r in stack.deliveries(topic=TOPIC) if marker_of(r) in markers]
        return matching if len(matching) >= len(markers) else None

    result: list[dict[str, Any]] = wait_until(found, what=f"{len(markers)} deliveries")
    return result


def publish_marker(stack: Pair, client: DaprClient) -> str:
    """Publish a valid event through the SDK and wait for its delivery."""
    marker = f"marker-{uuid.uuid4().hex}"
    client.publish_event(PUBSUB, TOPIC, json.dumps({"marker": marker}), data_content_type="application/json")
    wait_for(stack, {marker})
    return marker


def test_malformed_cloudevents_are_refused_as_daprd_does_and_never_delivered(
    stack: Pair, client: DaprClient
) -> None:
    publish_marker(stack, client)  # anything published before this test has arrived by now
    before = len(stack.deliveries(topic=TOPIC))

    @_FEW
    @given(body=MALFORMED_EVENTS)
    def publish(body: bytes) -> None:
        answer = call(stack.sidecar, "POST", f"/v1.0/publish/{PUBSUB}/{TOPIC}", body, CE_HEADERS)
        assert answer.status == 500, (body, answer)
        assert answer.headers["content-type"].startswith("application/json")
        assert {k: answer.json()[k] for k in CE_ERROR} == CE_ERROR
        with pytest.raises(DaprGrpcError) as failure:
            client.publish_event(PUBSUB, TOPIC, body, data_content_type="application/cloudevents+json")
        assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert failure.value.details() == "cannot create cloudevent"
        assert failure.value.error_code() == "DAPR_PUBSUB_CLOUD_EVENT_CREATION"

    publish()
    marker = publish_marker(stack, client)
    time.sleep(0.3)  # absence needs a bounded wait: a wrongly stored event would arrive with the marker
    assert [marker_of(r) for r in stack.deliveries(topic=TOPIC)[before:]] == [marker]
    assert_clean_log(stack.sidecar)


_ABSENT = object()
_attribute = st.one_of(
    st.just(_ABSENT), st.none(), st.text(max_size=10), st.integers(), st.lists(st.integers(), max_size=2)
)
# FromCloudEvent (components-contrib) defaults only what is missing or null; the gRPC envelope for
# the app reads a non-string attribute as "" (ExtractCloudEventProperty). `id` has no default.
_DEFAULTS = {"id": "", "source": "Dapr", "type": "com.dapr.event.sent", "specversion": "1.0"}


def expected_attribute(name: str, value: object) -> str:
    if value is _ABSENT or value is None:
        return _DEFAULTS[name]
    return value if isinstance(value, str) else ""


def test_cloudevents_missing_or_mistyping_attributes_are_delivered_as_daprd_would(
    stack: Pair, client: DaprClient
) -> None:
    expected: dict[str, dict[str, str]] = {}

    @_FEW
    @given(attributes=st.fixed_dictionaries({name: _attribute for name in _DEFAULTS}))
    def publish(attributes: dict[str, object]) -> None:
        marker = f"odd-{uuid.uuid4().hex}"
        event = {k: v for k, v in attributes.items() if v is not _ABSENT}
        # A lone surrogate escape: Go's decoder reads it as U+FFFD, so must we (not fail on encoding).
        body = json.dumps(event | {"data": {"marker": marker}})[:-1] + ', "note": "\\ud800"}'
        answer = call(stack.sidecar, "POST", f"/v1.0/publish/{PUBSUB}/{TOPIC}", body, CE_HEADERS)
        assert answer.status == 204, (body, answer)
        expected[marker] = {name: expected_attribute(name, v) for name, v in attributes.items()}

    publish()
    for record in wait_for(stack, expected):
        want = expected[str(marker_of(record))]
        assert {name: record[name] for name in want} == want
        assert record["extensions"]["note"] == "\ufffd"
    assert_clean_log(stack.sidecar)


# ---- undecodable events already in the broker ------------------------------------------------------

# Stored by something other than this sidecar's publish (another publisher, an older version):
# no app channel could ever build their data, so they are dropped (logged, counted), never retried.
POISON = {
    "number-base64": {"data_base64": 5},
    "bad-base64": {"data_base64": "not base64!"},
    "text-object": {"datacontenttype": "text/plain", "data": {"a": 1}},
}


def poison_event(name: str, event_id: str) -> bytes:
    return json.dumps(
        {"specversion": "1.0", "id": event_id, "source": "s", "type": "t"} | POISON[name]
    ).encode()


@pytest.mark.parametrize("name", sorted(POISON))
def test_prepare_drops_what_no_app_could_decode(name: str) -> None:
    sub = Subscription(PUBSUB, TOPIC)
    stored = Stored(seq=1, topic=TOPIC, data=poison_event(name, "p"), metadata={}, attempts=1)
    assert prepare(PUBSUB, sub, stored) is Outcome.DROP
    fine = Stored(seq=2, topic=TOPIC, data=b'{"id": "f", "data_base64": "aGk="}', metadata={}, attempts=1)
    assert isinstance(prepare(PUBSUB, sub, fine), Delivery)


def store_directly(stack: Pair, events: list[bytes]) -> None:
    """Write into the sidecar's broker database as another process would, bypassing publish."""

    async def write() -> None:
        metadata = {"connectionString": "data/pubsub.db"}  # FAST_PUBSUB_YAML, relative to the sidecar's cwd
        broker = await pubsub_sqlite.DRIVER.open(PUBSUB, metadata, app_id="other", base_dir=stack.sidecar.cwd)
        try:
            for event in events:
                await broker.publish(TOPIC, event, {})
        finally:
            await broker.close()

    asyncio.run(write())


def test_undecodable_stored_events_are_dropped_once_not_retried(stack: Pair, client: DaprClient) -> None:
    ids = {name: f"poison-{name}-{uuid.uuid4().hex}" for name in POISON}
    store_directly(stack, [poison_event(name, event_id) for name, event_id in ids.items()])
    publish_marker(stack, client)  # published after them: by now each has been claimed at least once

    def dropped() -> dict[str, int] | None:
        log = stack.sidecar.log()
        counts = {
            event_id: log.count(f"dropping undecodable pub/sub event {event_id}") for event_id in ids.values()
        }
        return counts if all(counts.values()) else None

    wait_until(dropped, what="the undecodable events dropped")
    time.sleep(1.0)  # retries would come back within this (100 ms back-off, 500 ms cap)
    assert set(wait_until(dropped, what="drops").values()) == {1}
    assert not [r for r in stack.deliveries(topic=TOPIC) if r.get("id") in ids.values()]
    assert_clean_log(stack.sidecar)


# ---- JSON over HTTP as Go's decoder reads it ----------------------------------------------------------


def state_path(key: str = "") -> str:
    return f"/v1.0/state/{STORE}" + (f"/{urllib.parse.quote(key, safe='')}" if key else "")


def test_lone_surrogate_escapes_become_u_fffd_as_in_daprd(stack: Pair) -> None:
    """Go's encoding/json reads a lone surrogate escape as U+FFFD: daprd saves it under that key."""
    suffix = uuid.uuid4().hex
    saved = call(stack.sidecar, "POST", state_path(), '[{"key":"\\ud800","value":1}]')
    assert saved.status == 204, saved
    assert call(stack.sidecar, "GET", state_path("\ufffd")).json() == 1
    body = f'[{{"key":"k\\udfff{suffix}","value":"v\\ud800","metadata":{{"note":"\\udbff"}}}}]'
    assert call(stack.sidecar, "POST", state_path(), body).status == 204
    assert call(stack.sidecar, "GET", state_path(f"k\ufffd{suffix}")).json() == "v\ufffd"
    upsert = f'{{"operations":[{{"operation":"upsert","request":{{"key":"t\\ud800{suffix}","value":2}}}}]}}'
    assert call(stack.sidecar, "POST", state_path() + "/transaction", upsert).status == 204
    bulk = call(stack.sidecar, "POST", state_path() + "/bulk", f'{{"keys":["t\\ud800{suffix}"]}}')
    assert bulk.json() == [{"key": f"t\ufffd{suffix}", "data": 2, "etag": bulk.json()[0]["etag"]}]
    assert_clean_log(stack.sidecar)


# Python's json reads these; Go's decoder (daprd's json.Unmarshal) refuses them.
NOT_GO_JSON = ["NaN", "Infinity", "-Infinity", "1e999", "-1e400", "1" + "0" * 400]


@pytest.mark.parametrize("number", NOT_GO_JSON)
def test_numbers_go_refuses_are_400_and_change_nothing(stack: Pair, client: DaprClient, number: str) -> None:
    victim = f"victim-{uuid.uuid4().hex}"
    item = f'{{"key":"{victim}","value":{number}}}'
    for path, body in [
        (state_path(), f"[{item}]"),
        (state_path(), f'[{{"key":"{victim}","value":{{"deep":[1,{number}]}}}}]'),
        (state_path() + "/transaction", '{"operations":[{"operation":"upsert","request":' + item + "}]}"),
        ("/v1.0/bindings/anything", f'{{"operation":"create","data":{number}}}'),
    ]:  # fmt: skip
        answer = call(stack.sidecar, "POST", path, body)
        assert (answer.status, answer.json()["errorCode"]) == (400, "ERR_MALFORMED_REQUEST"), (body, answer)
    assert call(stack.sidecar, "GET", state_path(victim)).status == 204
    marker = f"marker-{uuid.uuid4().hex}"
    entries = f'[{{"entryId":"1","event":{{"marker":"{marker}"}},"contentType":"application/json"}},'
    entries += f'{{"entryId":"2","event":{number},"contentType":"application/json"}}]'
    answer = call(stack.sidecar, "POST", f"/v1.0-alpha1/publish/bulk/{PUBSUB}/{TOPIC}", entries)
    assert (answer.status, answer.json()["errorCode"]) == (400, "ERR_PUBSUB_EVENTS_SER"), answer
    publish_marker(stack, client)  # the refused entry 1 would have arrived before this one
    assert marker not in {marker_of(r) for r in stack.deliveries(topic=TOPIC)}
    assert_clean_log(stack.sidecar)


# ---- daprd's error details over HTTP ------------------------------------------------------------------

ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"


def error_info(body: dict[str, Any]) -> dict[str, Any]:
    infos = [detail for detail in body["details"] if detail["@type"] == ERROR_INFO]
    assert len(infos) == 1, body
    assert infos[0]["domain"] == "dapr.io"
    return infos[0]


def test_http_errors_carry_the_details_grpc_sends(stack: Pair, client: DaprClient) -> None:
    illegal = call(stack.sidecar, "POST", state_path(), [{"key": "a||b", "value": 1}]).json()
    with pytest.raises(DaprGrpcError) as grpc_error:
        client.save_state(STORE, "a||b", b"1")
    assert error_info(illegal)["reason"] == grpc_error.value.error_code() == "DAPR_STATE_ILLEGAL_KEY"
    assert {"@type": "type.googleapis.com/google.rpc.ResourceInfo", "resource_type": "state",
            "resource_name": STORE, "owner": "", "description": ""} in illegal["details"]  # fmt: skip
    violation = {"field": "a||b", "description": illegal["message"]}
    assert {"@type": "type.googleapis.com/google.rpc.BadRequest", "field_violations": [violation]} in illegal[
        "details"
    ]
    for path, reason in [
        (f"/v1.0/publish/no-such-pubsub/{TOPIC}", "DAPR_PUBSUB_NOT_FOUND"),
        ("/v1.0/state/no-such-store", "DAPR_STATE_NOT_FOUND"),
    ]:
        assert error_info(call(stack.sidecar, "POST", path, b"[]").json())["reason"] == reason
    answer = call(stack.sidecar, "POST", f"/v1.0/publish/{PUBSUB}/{TOPIC}", b"[1]", CE_HEADERS).json()
    assert error_info(answer)["reason"] == "DAPR_PUBSUB_CLOUD_EVENT_CREATION"
    # daprd's plain `{errorCode, message}` errors (no rich details on gRPC either) stay without them.
    assert "details" not in call(stack.sidecar, "POST", state_path(), b"{not json").json()


# ---- invalid resource YAML -------------------------------------------------------------------------


def assert_one_line(err: ResourceError, file: Path) -> None:
    """`<file>: <field>: <problem>`, on one line, naming the file it came from."""
    message = str(err)
    assert "\n" not in message and "Traceback" not in message
    assert message.startswith(str(file)) and err.source.startswith(str(file))
    assert err.field and err.problem
    assert message == f"{err.source}: {err.field}: {err.problem}"


def load_or_fail(folder: Path, file: Path) -> list[Any] | ResourceError:
    """The specs, or the ResourceError; any other exception fails the test as it propagates."""
    try:
        return load_specs([folder])
    except ResourceError as err:
        assert_one_line(err, file)
        return err


_YAML_PIECES = [
    "apiVersion: dapr.io/v1alpha1", "kind: Component", "kind: [Component", "metadata:", "  name: cache",
    "spec:", "  type: state.in-memory", "  type: state.sqlite", "  version: v1", "  metadata:",
    "  - name: connectionString", "    value: x.db", "  - value: 3", "- ", "---", ": ", "[", "]", "{", "}",
    "\t", "'", '"', "&a x", "*a", "!!binary aGk=", "!!python/object:os.system", "? ", "2001-01-01",
    "scopes: [1, 2]", "auth: {secretStore: s}", "  - {name: a, secretKeyRef: {name: s}}", "...", "%YAML 1.1",
]  # fmt: skip
ANY_TEXT = st.one_of(
    st.text(max_size=200),
    st.lists(st.sampled_from(_YAML_PIECES), max_size=14).map("\n".join),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=ANY_TEXT, raw_bytes=st.binary(max_size=60), as_bytes=st.booleans())
def test_any_file_loads_or_fails_with_one_line(
    tmp_path: Path, text: str, raw_bytes: bytes, as_bytes: bool
) -> None:
    file = tmp_path / "component.yaml"
    if as_bytes:
        file.write_bytes(raw_bytes)
    else:
        file.write_text(text, encoding="utf-8")
    load_or_fail(tmp_path, file)


def valid_component() -> dict[str, Any]:
    return {
        "apiVersion": "dapr.io/v1alpha1",
        "kind": "Component",
        "metadata": {"name": "cache"},
        "spec": {
            "type": "state.sqlite",
            "version": "v1",
            "metadata": [{"name": "connectionString", "value": "data/cache.db"}],
        },
        "scopes": ["app"],
    }


_not_text = st.one_of(
    st.lists(st.integers(), min_size=1, max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), min_size=1),
)
_not_mapping = st.one_of(st.none(), st.text(max_size=5), st.integers(), st.lists(st.integers(), max_size=2))
_missing_or_not_text = st.one_of(st.just(""), st.none(), _not_text, st.dates())
_unknown_type = st.text(min_size=1, max_size=12).filter(lambda t: t.strip() and t not in DRIVERS)


def _set(path: str, value: object) -> Callable[[dict[str, Any]], None]:
    """A mutation putting `value` at a dotted path (`spec.metadata.0.value`); `...` deletes it."""
    *parents, last = path.split(".")

    def mutate(doc: dict[str, Any]) -> None:
        node: Any = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        key: Any = int(last) if isinstance(node, list) else last
        if value is ...:
            del node[key]
        else:
            node[key] = value

    return mutate


# (mutation, field the error must name): the wrong shapes a hand-written component file can have.
WRONG_SHAPES = st.one_of(
    st.builds(lambda v: (_set("metadata", v), "metadata"), _not_mapping),
    st.builds(lambda v: (_set("spec", v), "spec"), _not_mapping),
    st.builds(lambda v: (_set("metadata.name", v), "metadata.name"), _missing_or_not_text | st.just(...)),
    st.builds(
        lambda v: (_set("spec.type", v), "spec.type"), _missing_or_not_text | _unknown_type | st.just(...)
    ),
    st.builds(
        lambda v: (_set("spec.version", v), "spec.version"),
        _missing_or_not_text | st.just("v9") | st.just(...),
    ),
    st.builds(lambda v: (_set("spec.metadata", v), "spec.metadata"), st.text(max_size=5) | st.integers()),
    st.builds(
        lambda v: (_set("spec.metadata", {"connectionString": v}), "spec.metadata"), st.text(max_size=5)
    ),
    st.builds(lambda v: (_set("spec.metadata.0", v), "spec.metadata[0]"), _not_mapping),
    st.builds(
        lambda v: (_set("spec.metadata.0.name", v), "spec.metadata[0].name"),
        _missing_or_not_text | st.just(...),
    ),
    st.builds(
        lambda v: (_set("spec.metadata.0.value", v), "spec.metadata.connectionString.value"),
        _not_text | st.dates(),
    ),
    st.just((_set("spec.metadata", []), "spec.metadata.connectionString")),
    st.builds(
        lambda v: (_set("scopes", v), "scopes"),
        st.text(min_size=1, max_size=5) | st.lists(st.integers(), min_size=1),
    ),
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=WRONG_SHAPES, multi=st.booleans())
def test_wrong_component_shapes_name_the_file_and_field(
    tmp_path: Path, shape: tuple[Callable[[dict[str, Any]], None], str], multi: bool
) -> None:
    mutate, field = shape
    doc = valid_component()
    mutate(doc)
    file = tmp_path / "cache.yaml"
    documents = [{"kind": "Subscription", "metadata": {"name": "s"}}, doc] if multi else [doc]
    file.write_text(yaml.safe_dump_all(documents))
    err = load_or_fail(tmp_path, file)
    assert isinstance(err, ResourceError), f"{field}: accepted {doc}"
    assert err.field == field
    assert err.source == (f"{file}#2" if multi else str(file))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(api_version=_json, kind=_json.filter(lambda k: k != "Component"))
def test_other_kinds_and_api_versions_never_crash_the_loader(
    tmp_path: Path, api_version: Any, kind: Any
) -> None:
    file = tmp_path / "other.yaml"
    file.write_text(yaml.safe_dump({**valid_component(), "kind": kind}))
    assert load_or_fail(tmp_path, file) == []  # not a Component: left to the loaders of its kind
    file.write_text(yaml.safe_dump({**valid_component(), "apiVersion": api_version}))
    load_or_fail(tmp_path, file)


# PyYAML raises more than YAMLError while building values (ValueError, RecursionError, ...).
IMPOSSIBLE_DATE = (
    "kind: Component\nmetadata: {name: cache}\n"
    "spec: {type: state.in-memory, version: v1, metadata: [{name: since, value: 2024-02-30}]}\n"
)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(IMPOSSIBLE_DATE, id="impossible-date"),  # ValueError
        pytest.param("kind: Component\nmetadata: {name: !!int cache}\n", id="int-tag"),  # ValueError
        pytest.param("kind: !!timestamp soon\n", id="timestamp-tag"),  # AttributeError
        pytest.param("kind: Component\nmetadata: {name: " + "9" * 5000 + "}\n", id="integer-too-long"),
        pytest.param("- " * 3000 + "x", id="nested-too-deep"),  # RecursionError
    ],
)
def test_values_pyyaml_cannot_build_are_one_line_too(tmp_path: Path, text: str) -> None:
    file = tmp_path / "component.yaml"
    file.write_text(text)
    assert isinstance(load_or_fail(tmp_path, file), ResourceError)


# ---- a real start-up refusing bad resources --------------------------------------------------------


def seed_state_file(cwd: Path) -> Path:
    """The embedded state store's SQLite file, with the seed keys in it (written by the real driver)."""

    async def write() -> None:
        metadata = {"connectionString": ".chassis/data/state.db"}
        store = await state_sqlite.DRIVER.open(STORE, metadata, app_id="broken", base_dir=cwd)
        try:
            for key, value in SEEDS.items():
                await store.set(key, value)
        finally:
            await store.close()

    asyncio.run(write())
    return cwd / ".chassis" / "data"


def fingerprint(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file of the folder: content hash and modification time."""
    return {
        p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.iterdir())
    }


@pytest.mark.parametrize(
    ("text", "field"),
    [
        pytest.param(
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: [name\n",
            "line 4 column 1: invalid YAML",
            id="syntax",
        ),
        pytest.param(
            "kind: Component\nmetadata: {name: cache}\n"
            "spec: {type: state.in-memory, version: v1, metadata: [{value: 1}]}\n",
            "spec.metadata[0].name",
            id="shape",
        ),
        pytest.param(
            IMPOSSIBLE_DATE,
            "document: invalid YAML",
            id="impossible-date",
        ),
    ],
)
def test_bad_resources_stop_the_start_and_leave_the_state_file(tmp_path: Path, text: str, field: str) -> None:
    data = seed_state_file(tmp_path)
    before = fingerprint(data)
    components = embedded_components(tmp_path / "components")
    broken = components / "zz-broken.yaml"  # after statestore.yaml: that one is valid and would open first
    broken.write_text(text)
    result = run_sidecar(tmp_path, "--resources-path", str(components))
    assert_one_line_failure(result, f"{broken}: {field}")
    assert fingerprint(data) == before
