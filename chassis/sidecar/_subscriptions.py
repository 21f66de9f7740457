"""Subscriptions as daprd knows them: declarative YAML, programmatic (gRPC or HTTP app) and streaming.

One `Subscription` shape for all three, with routing rules compiled once into CEL programs over the
CloudEvent (`event.type == "x"`, `has(event.data.important)`). Declarative `kind: Subscription`
documents (v2alpha1 `routes`, v1alpha1 `route`; found by `_resources.load_subscriptions`) are checked
at start-up: a mistake, including a CEL expression that does not compile, is one line naming the
file and the field.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import celpy
from celpy.adapter import json_to_cel
from celpy.evaluation import CELEvalError
from dapr.proto.runtime.v1 import appcallback_pb2

from chassis.sidecar._errors import ResourceError, SidecarError

log = logging.getLogger("chassis.sidecar.subscriptions")
logging.getLogger("celpy").setLevel(logging.INFO)  # it logs every evaluation step at DEBUG

DECLARATIVE = "DECLARATIVE"
PROGRAMMATIC = "PROGRAMMATIC"
STREAMING = "STREAMING"
DEFAULT_BULK_COUNT = 100
DEFAULT_BULK_AWAIT_MS = 1000
_CEL = celpy.Environment()

Match = Callable[[Mapping[str, Any]], bool]
_T = TypeVar("_T")


class RouteError(SidecarError):
    """A routing rule could not be evaluated for an event (daprd: dead-letter it, else retry)."""


class InvalidRule(SidecarError):
    """A routing rule's `match` is not a valid CEL expression."""


@dataclass(frozen=True)
class Route:
    """A routing rule; `match` None always matches (the default route)."""

    path: str
    match: Match | None = None
    expression: str = ""


@dataclass(frozen=True)
class BulkSettings:
    """`bulkSubscribe`: deliver up to `max_count` messages together, waiting at most `max_await` seconds."""

    max_count: int = DEFAULT_BULK_COUNT
    max_await: float = DEFAULT_BULK_AWAIT_MS / 1000


@dataclass(frozen=True)
class Subscription:
    """One subscription of the app to a pubsub topic, whichever way it was declared."""

    pubsub: str
    topic: str
    routes: tuple[Route, ...] = (Route(""),)
    metadata: dict[str, str] = field(default_factory=dict)
    dead_letter_topic: str = ""
    bulk: BulkSettings | None = None
    type: str = PROGRAMMATIC
    scopes: tuple[str, ...] = ()

    def route(self, event: Mapping[str, Any]) -> str | None:
        """The path of the first matching rule; None when nothing matches (daprd then drops)."""
        for rule in self.routes:
            if rule.match is None or rule.match(event):
                return rule.path
        return None

    def rules(self) -> tuple[tuple[str, str], ...]:
        """(match, path) pairs as the metadata API lists them; the default route has match ''."""
        return tuple((rule.expression, rule.path) for rule in self.routes)

    def in_scope(self, app_id: str) -> bool:
        return not self.scopes or app_id in self.scopes


# ---- routing rules -------------------------------------------------------------------------------


def compile_match(expression: str) -> Match:
    """A CEL program over `event` telling whether it matched; InvalidRule when it does not compile."""
    try:
        program = _CEL.program(_CEL.compile(expression))
    except Exception as err:  # celpy raises its own parse errors with multi-line carets
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InvalidRule(f"invalid CEL expression {expression!r}: {first}") from None

    def match(event: Mapping[str, Any]) -> bool:
        try:
            result = program.evaluate({"event": json_to_cel(dict(event))})
        except Exception as err:  # evaluation errors: daprd reports them and does not deliver
            raise RouteError(f"error evaluating {expression!r}: {err}") from None
        if isinstance(result, CELEvalError):
            raise RouteError(f"error evaluating {expression!r}: {result.args[0] if result.args else result}")
        if not isinstance(result, celpy.celtypes.BoolType | bool):
            raise RouteError(f"{expression!r} did not return a bool")
        return bool(result)

    return match


def build_routes(rules: Iterable[tuple[str, str]], default: str) -> tuple[Route, ...]:
    """daprd's routing: rules in order (an empty match always matches), then the default, else path ''."""
    routes = [
        Route(path, compile_match(match), match) if match.strip() else Route(path, None, "")
        for match, path in rules
    ]
    if default or not routes:
        routes.append(Route(default))
    return tuple(routes)


# ---- programmatic (gRPC app, HTTP app) -------------------------------------------------------------


def from_topic_subscription(sub: appcallback_pb2.TopicSubscription) -> Subscription:
    """A gRPC app's ListTopicSubscriptions entry; raises InvalidRule for a bad CEL match."""
    rules = [(rule.match, rule.path) for rule in sub.routes.rules]
    bulk = None
    if sub.HasField("bulk_subscribe") and sub.bulk_subscribe.enabled:
        bulk = _bulk(sub.bulk_subscribe.max_messages_count, sub.bulk_subscribe.max_await_duration_ms)
    return Subscription(
        sub.pubsub_name,
        sub.topic,
        build_routes(rules, sub.routes.default),
        dict(sub.metadata),
        sub.dead_letter_topic,
        bulk,
    )


def from_http_json(item: Mapping[str, Any]) -> Subscription:
    """One entry of an HTTP app's `GET /dapr/subscribe` answer (v1 `route` or v2 `routes`)."""
    routes = item.get("routes") or {}
    if not isinstance(routes, dict):
        raise InvalidRule("routes: expected an object with rules and default")
    rules = [(str(r.get("match", "")), str(r.get("path", ""))) for r in routes.get("rules") or ()]
    default = str(routes.get("default") or item.get("route") or "")
    bulk_json = item.get("bulkSubscribe") or {}
    bulk = None
    if isinstance(bulk_json, dict) and bulk_json.get("enabled"):
        bulk = _bulk(
            int(bulk_json.get("maxMessagesCount") or 0), int(bulk_json.get("maxAwaitDurationMs") or 0)
        )
    metadata = item.get("metadata") or {}
    return Subscription(
        str(item.get("pubsubname", "")),
        str(item.get("topic", "")),
        build_routes(rules, default),
        {str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else {},
        str(item.get("deadLetterTopic") or ""),
        bulk,
    )


def _bulk(count: int, await_ms: int) -> BulkSettings:
    return BulkSettings(count or DEFAULT_BULK_COUNT, (await_ms or DEFAULT_BULK_AWAIT_MS) / 1000)


def parse_each(items: Iterable[_T], parse: Callable[[_T], Subscription]) -> list[Subscription]:
    """Programmatic subscriptions; one whose rule is not valid CEL is left out with an error line."""
    parsed = []
    for item in items:
        try:
            parsed.append(parse(item))
        except InvalidRule as err:
            log.error("app subscription ignored: %s", err)
    return parsed


def merge(declarative: Sequence[Subscription], programmatic: Sequence[Subscription]) -> list[Subscription]:
    """Declarative first, then programmatic; for the same pubsub/topic the later one wins (as in daprd)."""
    merged: dict[tuple[str, str], Subscription] = {}
    for sub in [*declarative, *programmatic]:
        key = (sub.pubsub, sub.topic)
        if key in merged:
            log.warning(
                "subscription to %s/%s declared more than once: the %s one is used",
                sub.pubsub,
                sub.topic,
                sub.type.lower(),
            )
        merged[key] = sub
    return list(merged.values())


# ---- declarative YAML -------------------------------------------------------------------------------


def parse_declarative(where: str, doc: Mapping[str, Any]) -> Subscription:
    """One Subscription document (dapr.io/v2alpha1 or the deprecated v1alpha1)."""
    api = doc.get("apiVersion")
    if api not in ("dapr.io/v2alpha1", "dapr.io/v1alpha1"):
        raise ResourceError(
            where, "apiVersion", f"expected dapr.io/v2alpha1 or dapr.io/v1alpha1, got {api!r}"
        )
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        raise ResourceError(where, "spec", "missing or not a mapping")
    pubsub = _required(where, spec, "pubsubname")
    topic = _required(where, spec, "topic")
    rules, default = _yaml_routes(where, spec, v1=api == "dapr.io/v1alpha1")
    routes = _compiled(where, rules, default)
    return Subscription(
        pubsub,
        topic,
        routes,
        _string_map(where, spec.get("metadata"), "spec.metadata"),
        _optional(where, spec, "deadLetterTopic"),
        _yaml_bulk(where, spec.get("bulkSubscribe")),
        DECLARATIVE,
        _yaml_scopes(where, doc.get("scopes")),
    )


def _compiled(where: str, rules: list[tuple[str, str]], default: str) -> tuple[Route, ...]:
    for index, (match, _) in enumerate(rules):
        if match.strip():
            try:
                compile_match(match)
            except InvalidRule as err:
                raise ResourceError(where, f"spec.routes.rules[{index}].match", str(err)) from None
    return build_routes(rules, default)


def _yaml_routes(where: str, spec: Mapping[str, Any], *, v1: bool) -> tuple[list[tuple[str, str]], str]:
    if v1:
        return [], _optional(where, spec, "route")
    routes = spec.get("routes")
    if routes is None:
        raise ResourceError(
            where, "spec.routes", "missing (v2alpha1 needs routes.rules and/or routes.default)"
        )
    if not isinstance(routes, dict):
        raise ResourceError(where, "spec.routes", "expected a mapping with rules and default")
    items = routes.get("rules") or []
    if not isinstance(items, list):
        raise ResourceError(where, "spec.routes.rules", "expected a list of {match, path}")
    rules = []
    for index, rule in enumerate(items):
        name = f"spec.routes.rules[{index}]"
        if not isinstance(rule, dict):
            raise ResourceError(where, name, "expected a mapping with match and path")
        rules.append((_optional(where, rule, "match", name), _required(where, rule, "path", name)))
    default = _optional(where, routes, "default", "spec.routes")
    if not rules and not default:
        raise ResourceError(where, "spec.routes", "needs at least one rule or a default route")
    return rules, default


def _yaml_bulk(where: str, value: object) -> BulkSettings | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ResourceError(where, "spec.bulkSubscribe", "expected a mapping")
    if not value.get("enabled"):
        return None
    numbers = []
    for key in ("maxMessagesCount", "maxAwaitDurationMs"):
        number = value.get(key, 0)
        if not isinstance(number, int) or isinstance(number, bool) or number < 0:
            raise ResourceError(
                where, f"spec.bulkSubscribe.{key}", f"expected a positive integer, got {number!r}"
            )
        numbers.append(number)
    return _bulk(numbers[0], numbers[1])


def _required(where: str, mapping: Mapping[str, Any], key: str, prefix: str = "spec") -> str:
    value = _optional(where, mapping, key, prefix)
    if not value:
        raise ResourceError(where, f"{prefix}.{key}", "missing")
    return value


def _optional(where: str, mapping: Mapping[str, Any], key: str, prefix: str = "spec") -> str:
    value = mapping.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ResourceError(where, f"{prefix}.{key}", f"expected a string, got {type(value).__name__}")
    return value


def _string_map(where: str, value: object, name: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ResourceError(where, name, "expected a mapping of names to values")
    return {str(k): ("true" if v is True else "false" if v is False else str(v)) for k, v in value.items()}


def _yaml_scopes(where: str, scopes: object) -> tuple[str, ...]:
    if scopes is None:
        return ()
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        raise ResourceError(where, "scopes", "expected a list of app ids")
    return tuple(scopes)


def streaming(pubsub: str, topic: str, metadata: Mapping[str, str], dead_letter_topic: str) -> Subscription:
    """daprd's stream subscription: default route '/', no rules, no bulk."""
    return Subscription(pubsub, topic, (Route("/"),), dict(metadata), dead_letter_topic, None, STREAMING)
