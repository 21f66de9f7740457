"""CloudEvents 1.0 envelopes exactly as daprd builds them on publish and unpacks them for a gRPC app.

Publish side: components-contrib `pubsub/envelope.go` (NewCloudEventsEnvelope, FromCloudEvent, ApplyMetadata)
with dapr/dapr `pkg/runtime/pubsub/cloudevents.go` (`cloudevent.*` metadata overrides). Delivery side:
dapr/dapr `GRPCEnvelopeFromSubscriptionMessage`. Plain dicts are used (not the `cloudevents` SDK) because
daprd's envelope carries non-standard keys (topic, pubsubname, traceid) and Go's JSON encoding rules.
"""

from __future__ import annotations

import base64
import json
import re
import sys
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from dapr.proto.runtime.v1 import appcallback_pb2
from google.protobuf import struct_pb2

DEFAULT_TYPE = "com.dapr.event.sent"
DEFAULT_SOURCE = "Dapr"
DEFAULT_CONTENT_TYPE = "text/plain"
SPEC_VERSION = "1.0"
CLOUDEVENT_CONTENT_TYPE = "application/cloudevents+json"
# Keys that TopicEventRequest carries in its own fields; every other key becomes an extension.
_ENVELOPE_KEYS = frozenset({"id", "source", "datacontenttype", "type", "specversion", "data", "data_base64"})
# `cloudevent.<name>` metadata overrides daprd honours (mapstructure tags, matched case-insensitively).
_OVERRIDES = ("id", "source", "type", "subject", "traceid", "traceparent", "tracestate")


class EnvelopeError(ValueError):
    """The payload cannot be turned into (or read as) a CloudEvent."""


def _is_content_type(content_type: str, expected: str) -> bool:
    """contenttype.isContentType: case-insensitive, parameters after ';' ignored."""
    return content_type.lower().split(";", 1)[0] == expected


def is_cloudevent(content_type: str) -> bool:
    return _is_content_type(content_type, CLOUDEVENT_CONTENT_TYPE)


def is_json(content_type: str) -> bool:
    return _is_content_type(content_type, "application/json")


def is_binary(content_type: str) -> bool:
    return _is_content_type(content_type, "application/octet-stream")


def is_string(content_type: str) -> bool:
    return content_type.lower().startswith("text/") or _is_content_type(content_type, "application/xml")


def is_raw_payload(metadata: Mapping[str, str]) -> bool:
    """contribMetadata.IsRawPayload: `rawPayload` parsed as a Go bool."""
    return metadata.get("rawPayload", "").strip().lower() in {"1", "t", "true"}


def go_json(value: Any) -> bytes:
    """Encode like Go's json.Marshal of a map: sorted keys, compact, HTML characters escaped."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(char, escaped)
    try:
        return text.encode()
    except UnicodeEncodeError:
        # A lone surrogate escape (`"\ud800"`) was read: Go reads it as U+FFFD; UTF-8 cannot hold it.
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace").encode()


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def _float64(text: str) -> float:
    value = float(text)
    if abs(value) > sys.float_info.max:
        raise ValueError(f"number {text} overflows a float64")
    return value


def _int_float64(text: str) -> int:
    value = int(text)
    if abs(value) > sys.float_info.max:
        raise ValueError(f"number {text} overflows a float64")
    return value


# A lone surrogate escape (`"\ud800"`), or surrogate bytes json.loads lets through (`surrogatepass`).
_MAY_HOLD_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _replace_surrogates(value: Any) -> Any:
    """Every lone surrogate of the parsed value (keys included) as U+FFFD, as Go's decoder reads it."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_replace_surrogates(item) for item in value]
    if isinstance(value, dict):
        return {_replace_surrogates(key): _replace_surrogates(item) for key, item in value.items()}
    return value


def parse_json(data: bytes | str) -> Any:
    """json.loads as strict as Go's decoder (into interface{}): no NaN/Infinity, no number past float64.

    Python reads those, but they are not JSON: stored, they would reach subscribers as unparsable events.
    A lone surrogate becomes U+FFFD, as in Go: Python would keep a string that no UTF-8 store can hold.
    """
    value = json.loads(data, parse_constant=_not_json, parse_float=_float64, parse_int=_int_float64)
    raw = data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass")
    return _replace_surrogates(value) if _MAY_HOLD_SURROGATE.search(raw) else value


def rfc3339(moment: datetime) -> str:
    """Go's time.RFC3339 layout (second precision), in UTC."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _overrides(metadata: Mapping[str, str]) -> dict[str, str]:
    lowered = {key.lower(): value for key, value in metadata.items()}
    return {name: lowered[f"cloudevent.{name}"] for name in _OVERRIDES if f"cloudevent.{name}" in lowered}


def _data_field(content_type: str, data: bytes) -> tuple[str, Any]:
    """JSON types -> parsed JSON; octet-stream -> data_base64; anything else -> the string."""
    if is_json(content_type):
        try:
            return "data", parse_json(data)
        except ValueError:
            pass
    elif is_binary(content_type):
        return "data_base64", base64.b64encode(data).decode()
    return "data", data.decode("utf-8", errors="replace")


def new_envelope(
    *,
    source: str,
    topic: str,
    pubsub: str,
    content_type: str,
    data: bytes,
    traceparent: str,
    tracestate: str,
    metadata: Mapping[str, str],
) -> dict[str, Any]:
    """The CloudEvent daprd publishes for a PublishEvent request (NewCloudEvent)."""
    if is_cloudevent(content_type):
        return from_cloudevent(
            data, topic=topic, pubsub=pubsub, traceparent=traceparent, tracestate=tracestate
        )
    # The request's values, then `cloudevent.*` overrides; empty values fall back to daprd's defaults.
    defaults = {"id": "", "source": source, "type": "", "subject": ""}
    fields = defaults | {"traceid": traceparent, "traceparent": "", "tracestate": tracestate}
    fields |= _overrides(metadata)
    # daprd: an explicit traceparent override wins over traceid; both keys then carry the same value.
    trace_id = fields["traceparent"] or fields["traceid"]
    content_type = content_type or DEFAULT_CONTENT_TYPE
    data_key, data_value = _data_field(content_type, data)
    envelope: dict[str, Any] = {
        "id": fields["id"] or str(uuid.uuid4()),
        "specversion": SPEC_VERSION,
        "datacontenttype": content_type,
        "source": fields["source"] or DEFAULT_SOURCE,
        "type": fields["type"] or DEFAULT_TYPE,
        "topic": topic,
        "pubsubname": pubsub,
        "traceid": trace_id,
        "traceparent": trace_id,
        "tracestate": fields["tracestate"],
        "time": rfc3339(datetime.now(UTC)),
        data_key: data_value,
    }
    if fields["subject"]:
        envelope["subject"] = fields["subject"]
    return envelope


def from_cloudevent(
    data: bytes, *, topic: str, pubsub: str, traceparent: str, tracestate: str
) -> dict[str, Any]:
    """FromCloudEvent: keep the app's event, set topic/pubsub/trace, default the missing attributes."""
    try:
        event = parse_json(data)
    except ValueError as err:
        raise EnvelopeError(f"not a JSON CloudEvent: {err}") from err
    if not isinstance(event, dict):
        raise EnvelopeError("not a JSON CloudEvent: expected an object")
    if event.get("data_base64") is not None:
        # Stricter than daprd, which stores it and then can never hand it to a gRPC app.
        _decode_base64(event["data_base64"])
    event.setdefault("time", rfc3339(datetime.now(UTC)))
    event.update(traceid=traceparent, traceparent=traceparent, tracestate=tracestate)
    event.update(topic=topic, pubsubname=pubsub)
    for key, default in (("source", DEFAULT_SOURCE), ("type", DEFAULT_TYPE), ("specversion", SPEC_VERSION)):
        if event.get(key) is None:
            event[key] = default
    return event


def apply_ttl(envelope: dict[str, Any], metadata: Mapping[str, str], now: datetime | None = None) -> None:
    """ApplyMetadata: a positive `ttlInSeconds` adds `expiration` (the broker has no native message TTL)."""
    try:
        seconds = int(metadata.get("ttlInSeconds", ""))
    except ValueError:
        return
    if seconds > 0:
        envelope["expiration"] = rfc3339((now or datetime.now(UTC)) + timedelta(seconds=seconds))


def from_raw_payload(data: bytes, *, topic: str, pubsub: str) -> dict[str, Any]:
    """FromRawPayload: the subscriber-side wrapper of a message published with rawPayload=true."""
    return {
        "id": str(uuid.uuid4()),
        "specversion": SPEC_VERSION,
        "datacontenttype": "application/octet-stream",
        "source": DEFAULT_SOURCE,
        "type": DEFAULT_TYPE,
        "topic": topic,
        "pubsubname": pubsub,
        "data_base64": base64.b64encode(data).decode(),
    }


def read_message(data: bytes, *, topic: str, pubsub: str, raw: bool) -> dict[str, Any]:
    """The CloudEvent of a stored message; raw (or non-CloudEvent) payloads are wrapped as daprd does."""
    if not raw:
        try:
            event = json.loads(data)
        except ValueError:
            event = None
        if isinstance(event, dict):
            # Lenient otherwise (any stored JSON object is read), but no surrogate may reach the app's protos.
            return _replace_surrogates(event) if _MAY_HOLD_SURROGATE.search(data) else event
    return from_raw_payload(data, topic=topic, pubsub=pubsub)


def has_expired(event: Mapping[str, Any], now: datetime | None = None) -> bool:
    """HasExpired: an RFC3339 `expiration` in the past (unparsable values never expire)."""
    value = event.get("expiration")
    if not isinstance(value, str) or not value:
        return False
    try:
        expiration = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    if expiration.tzinfo is None:
        return False
    return expiration < (now or datetime.now(UTC))


def _string(event: Mapping[str, Any], key: str) -> str:
    """ExtractCloudEventProperty: the attribute when it is a string, else ''."""
    value = event.get(key)
    return value if isinstance(value, str) else ""


def _decode_base64(encoded: object) -> bytes:
    """`data_base64` as GRPCEnvelopeFromSubscriptionMessage decodes it (standard alphabet, padded)."""
    if not isinstance(encoded, str):
        raise EnvelopeError("unexpected data type encountered in envelope")
    try:
        return base64.b64decode(encoded, validate=True)
    except ValueError as err:  # binascii.Error, or a str that is not ASCII
        raise EnvelopeError(f"unable to base64 decode cloudEvent field data_base64: {err}") from err


def _text_without_string(data: object, content_type: str) -> bool:
    """A text/* (or XML) event whose data is not a string: daprd has no bytes to give the app."""
    json_type = is_json(content_type) or is_cloudevent(content_type)
    return not json_type and not isinstance(data, str) and is_string(content_type)


def check_payload(event: Mapping[str, Any]) -> None:
    """Raise EnvelopeError when the app could never be given this event's data; the data is not built."""
    if event.get("data_base64") is not None:
        _decode_base64(event["data_base64"])
    elif event.get("data") is not None and _text_without_string(
        event["data"], _string(event, "datacontenttype")
    ):
        raise EnvelopeError("unexpected data type encountered in envelope")


def _payload(event: Mapping[str, Any], content_type: str) -> bytes:
    if event.get("data_base64") is not None:
        return _decode_base64(event["data_base64"])
    data = event.get("data")
    if data is None:
        return b""
    if is_json(content_type) or is_cloudevent(content_type):
        return go_json(data)
    if isinstance(data, str):
        # daprd only copies strings for text/* and application/xml (other types arrive empty);
        # the embedded sidecar hands any string payload over rather than silently dropping it.
        return data.encode()
    if _text_without_string(data, content_type):
        raise EnvelopeError("unexpected data type encountered in envelope")
    return go_json(data)


def topic_event_request(
    event: Mapping[str, Any], *, topic: str, pubsub: str, path: str
) -> appcallback_pb2.TopicEventRequest:
    """GRPCEnvelopeFromSubscriptionMessage: the TopicEventRequest handed to the app's OnTopicEvent."""
    content_type = _string(event, "datacontenttype")
    extensions = struct_pb2.Struct()
    extensions.update({key: value for key, value in event.items() if key not in _ENVELOPE_KEYS})
    return appcallback_pb2.TopicEventRequest(
        id=_string(event, "id"),
        source=_string(event, "source"),
        type=_string(event, "type"),
        spec_version=_string(event, "specversion"),
        data_content_type=content_type,
        data=_payload(event, content_type),
        topic=topic,
        pubsub_name=pubsub,
        path=path,
        extensions=extensions,
    )
