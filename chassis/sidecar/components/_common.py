"""Metadata rules several drivers share: Dapr's state key prefix, positive durations / counts, and the
publish metadata brokers carry beside a message.

One copy, so `state.sqlite` and `state.redis` (or the two brokers) cannot drift apart.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from chassis.sidecar._errors import IllegalKey, InvalidMetadata
from chassis.sidecar.components import meta_get, parse_duration

__all__ = [
    "SEPARATOR",
    "check_key_prefix",
    "key_prefix",
    "message_metadata",
    "positive_duration",
    "positive_int",
    "prefixed",
]

SEPARATOR = "||"


def check_key_prefix(metadata: Mapping[str, str]) -> None:
    """A literal `keyPrefix` must not contain Dapr's separator (raises InvalidMetadata)."""
    prefix = meta_get(metadata, "keyPrefix")
    if SEPARATOR in prefix:
        raise InvalidMetadata("keyPrefix", str(IllegalKey(prefix)))


def key_prefix(metadata: Mapping[str, str], *, store_name: str, app_id: str, namespace: str) -> str:
    """The prefix Dapr puts before every key ('' for none), from the `keyPrefix` strategy."""
    strategy = meta_get(metadata, "keyPrefix", "appid").lower()
    if strategy == "none":
        return ""
    if strategy == "name":
        return store_name + SEPARATOR
    if strategy in ("appid", "namespace"):
        if not app_id:
            return ""
        if strategy == "namespace" and namespace:
            return f"{namespace}.{app_id}{SEPARATOR}"
        return app_id + SEPARATOR
    # Any other value is a literal prefix, as in daprd.
    return strategy + SEPARATOR


def prefixed(prefix: str, key: str) -> str:
    """The stored key for a caller's key; IllegalKey if the key contains the separator."""
    if SEPARATOR in key:
        raise IllegalKey(key)
    return prefix + key


def positive_duration(metadata: Mapping[str, str], field: str, default: float) -> float:
    """A Go duration metadata value in seconds (`default` when absent); InvalidMetadata unless > 0."""
    text = meta_get(metadata, field)
    if not text:
        return default
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise InvalidMetadata(field, str(exc)) from None
    if seconds <= 0:
        raise InvalidMetadata(field, f"must be positive, got {text!r}")
    return seconds


def positive_int(metadata: Mapping[str, str], field: str) -> int | None:
    """A positive integer metadata value, None when absent (raises InvalidMetadata)."""
    text = meta_get(metadata, field)
    if not text:
        return None
    if not text.isdigit() or int(text) == 0:
        raise InvalidMetadata(field, f"must be a positive integer, got {text!r}")
    return int(text)


def message_metadata(stored: str | bytes | None) -> dict[str, str] | None:
    """The JSON object of publish metadata a driver stored with a message; None when it is absent or
    not such an object (a message from another client, such as daprd)."""
    try:
        metadata = json.loads(stored) if stored else None
    except ValueError:  # not JSON, or bytes that are not UTF-8
        return None
    return {str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else None
