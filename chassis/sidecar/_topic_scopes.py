"""Pub/sub topic scoping as daprd applies it: `allowedTopics`, `protectedTopics`, `publishingScopes`,
`subscriptionScopes` in a pubsub component's metadata (docs "Scope Pub/sub topic access").

`publishingScopes: "app1=t1,t2;app2="` lets app1 publish t1 and t2 only and app2 nothing; an app not
named may use every topic, unless `allowedTopics` narrows the topics for everyone or the topic is in
`protectedTopics` (then only apps scoped to it explicitly). Same rules for subscriptions.
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc

from chassis.sidecar._status import ApiError, error_info
from chassis.sidecar.components import meta_get

PUBLISHING = "publishingScopes"
SUBSCRIPTION = "subscriptionScopes"


def _topics(text: str) -> list[str]:
    return text.replace(" ", "").split(",") if text else []


def scoped_topics(scope: str, app_id: str, metadata: Mapping[str, str]) -> list[str]:
    """GetScopedTopics: the app's topic list in `scope` ([] when not named; [''] for `app=`)."""
    topics: list[str] = []
    for entry in meta_get(metadata, scope).replace(" ", "").split(";"):
        app, sep, listed = entry.partition("=")
        if sep and app == app_id:
            topics += [topic for topic in listed.split(",") if topic not in topics]
    return topics


def is_allowed(topic: str, metadata: Mapping[str, str], app_id: str, scope: str) -> bool:
    """IsOperationAllowed for `app_id` publishing (PUBLISHING) or subscribing (SUBSCRIPTION) to `topic`."""
    allowed = _topics(meta_get(metadata, "allowedTopics"))
    if allowed and topic not in allowed:
        return False
    scoped = scoped_topics(scope, app_id, metadata)
    if topic not in _topics(meta_get(metadata, "protectedTopics")) and not scoped:
        return True
    return topic in scoped


def publish_forbidden(pubsub: str, topic: str, app_id: str) -> ApiError:
    """daprd's PublishForbidden: PERMISSION_DENIED / 403."""
    message = f"topic {topic} is not allowed for app id {app_id}"
    return ApiError(
        grpc.StatusCode.PERMISSION_DENIED,
        message,
        error_code="ERR_PUBSUB_FORBIDDEN",
        http_status=403,
        details=(error_info("DAPR_PUBSUB_FORBIDDEN", {"appID": app_id, "topic": topic, "pubsub": pubsub}),),
    )
