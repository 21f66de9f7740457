"""State and publish operations shared by the gRPC and HTTP APIs, so both answer with the same errors.

Each operation looks the component up, validates the request as daprd does and maps storage errors to
an `ApiError` carrying both the gRPC code and daprd's HTTP status/errorCode; the API layers only
translate their wire format to these calls.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, TypeVar

import grpc
from opentelemetry import trace

from chassis.sidecar import _cloudevents as ce
from chassis.sidecar import _outbox, _status
from chassis.sidecar._errors import EtagInvalid, EtagMismatch, IllegalKey, SidecarError
from chassis.sidecar._status import ApiError
from chassis.sidecar._topic_scopes import PUBLISHING, is_allowed, publish_forbidden
from chassis.sidecar._tracing import traceparent, tracestate
from chassis.sidecar.components import PubSub, StateItem, StateStore, TxOp, meta_get

if TYPE_CHECKING:
    from chassis.sidecar._grpc_api import ApiContext


_T = TypeVar("_T")


def _retryable(error: BaseException) -> bool:
    """A caller's mistake (bad key, ETag) is not retried and does not count against the breaker."""
    return not isinstance(error, EtagMismatch | EtagInvalid | IllegalKey)


def state_error(err: SidecarError, message: str, store: str, error_code: str = "ERR_STATE_SAVE") -> ApiError:
    """daprd's stateErrorResponse: ETag mismatch ABORTED/409, bad ETag INVALID_ARGUMENT/400, else 500."""
    if isinstance(err, IllegalKey):
        return _status.illegal_key(store, err.key)
    if isinstance(err, EtagMismatch):
        return ApiError(grpc.StatusCode.ABORTED, message, error_code=error_code, http_status=409)
    if isinstance(err, EtagInvalid):
        return ApiError(grpc.StatusCode.INVALID_ARGUMENT, message, error_code=error_code, http_status=400)
    return ApiError(grpc.StatusCode.INTERNAL, message, error_code=error_code, http_status=500)


def ttl(metadata: dict[str, str], store: str) -> int | None:
    """The `ttlInSeconds` metadata as an int; a non-integer is daprd's ERR_STATE_SAVE."""
    text = meta_get(metadata, "ttlInSeconds")
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        message = (
            f"failed saving state in state store {store}: incorrect value for metadata 'ttlInSeconds': {text}"
        )
        raise ApiError(grpc.StatusCode.INTERNAL, message, error_code="ERR_STATE_SAVE") from None


def expire_metadata(expire_time: datetime | None) -> dict[str, str]:
    """The `ttlExpireTime` response metadata of an item with a TTL."""
    return {"ttlExpireTime": ce.rfc3339(expire_time)} if expire_time else {}


class Operations:
    """The state and pub/sub building blocks over the sidecar's loaded components."""

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx
        self.kinds = {spec.name: spec.type for spec in ctx.resources.specs}

    # ---- components -----------------------------------------------------------------------------

    async def outbound(self, component: str, call: Callable[[], Awaitable[_T]]) -> _T:
        """Run a component call under its outbound resiliency policy (timeout, retries, breaker)."""
        policy = self.ctx.resources.resiliency.component_outbound(component, self.kinds.get(component, ""))
        if policy.empty:
            return await call()
        return await policy.run(call, retryable=_retryable)

    def store(self, name: str) -> StateStore:
        """The named state store, or daprd's not-configured / not-found error."""
        stores = self.ctx.resources.state_stores
        if not stores:
            raise _status.state_not_configured()
        if name not in stores:
            raise _status.state_store_not_found(name)
        return stores[name]

    def pubsub(self, name: str, topic: str) -> PubSub:
        """The named broker, validating name and topic in daprd's order."""
        brokers = self.ctx.resources.pubsubs
        if not brokers:
            raise _status.pubsub_not_configured()
        if not name:
            raise _status.pubsub_name_empty()
        if name not in brokers:
            raise _status.pubsub_not_found(name)
        if not topic:
            raise _status.pubsub_topic_empty(name, self.kinds.get(name, "pubsub"))
        return brokers[name]

    def publisher(self, name: str, topic: str) -> PubSub:
        """The named broker for publishing to `topic`: validated, and the topic within the app's scopes."""
        broker = self.pubsub(name, topic)
        metadata = next((spec.metadata for spec in self.ctx.resources.specs if spec.name == name), {})
        if not is_allowed(topic, metadata, self.ctx.app_id, PUBLISHING):
            raise publish_forbidden(name, topic, self.ctx.app_id)
        return broker

    # ---- state ----------------------------------------------------------------------------------

    async def get_state(self, store_name: str, key: str) -> StateItem | None:
        """One item, or None when the key is missing (not an error, as in daprd)."""
        store = self.store(store_name)
        try:
            return await self.outbound(store_name, lambda: store.get(key))
        except SidecarError as err:
            message = f"fail to get {key} from state store {store_name}: {err}"
            raise state_error(err, message, store_name, "ERR_STATE_GET") from None

    @staticmethod
    def upsert(
        store_name: str,
        key: str,
        value: bytes,
        *,
        etag: str | None,
        first_write: bool,
        metadata: dict[str, str],
    ) -> TxOp:
        """A validated upsert operation (an empty key is rejected before anything is written)."""
        if not key:
            raise _status.invalid_argument("state key cannot be empty")
        return TxOp(
            "upsert",
            key,
            value,
            etag=etag,
            first_write=first_write,
            ttl_seconds=ttl(metadata, store_name),
            metadata=tuple(metadata.items()),
        )

    async def save_state(self, store_name: str, ops: Sequence[TxOp]) -> None:
        """Save items: one is a plain set, several go in one transaction (as daprd's BulkSet on SQLite)."""
        store = self.store(store_name)
        try:
            if len(ops) == 1:
                op = ops[0]
                await self.outbound(
                    store_name,
                    lambda: store.set(
                        op.key, op.value, etag=op.etag, first_write=op.first_write, ttl_seconds=op.ttl_seconds
                    ),
                )
            elif ops:
                await self.outbound(store_name, lambda: store.transact(ops))
        except SidecarError as err:
            message = f"failed saving state in state store {store_name}: {err}"
            raise state_error(err, message, store_name) from None

    async def delete_state(self, store_name: str, key: str, *, etag: str | None, first_write: bool) -> None:
        """Delete one key, honouring its ETag."""
        store = self.store(store_name)
        try:
            await self.outbound(store_name, lambda: store.delete(key, etag=etag, first_write=first_write))
        except SidecarError as err:
            message = f"failed deleting state with key {key}: {err}"
            raise state_error(err, message, store_name, "ERR_STATE_DELETE") from None

    async def transact(self, store_name: str, ops: Sequence[TxOp]) -> None:
        """All operations atomically."""
        store = self.store(store_name)
        try:
            await self.outbound(  # plain when no outbox
                store_name, lambda: _outbox.transact(self.ctx.outbox, store_name, store, ops)
            )
        except SidecarError as err:
            # daprd answers INTERNAL here for every failure; we keep ABORTED for an ETag mismatch so
            # callers can tell a concurrency conflict from a broken store (the chassis relies on it).
            message = f"error while executing state transaction: {err}"
            raise state_error(err, message, store_name, "ERR_STATE_TRANSACTION") from None

    # ---- pub/sub --------------------------------------------------------------------------------

    async def publish(
        self, pubsub_name: str, topic: str, data: bytes, content_type: str, metadata: dict[str, str]
    ) -> None:
        """Wrap `data` in daprd's CloudEvent (unless rawPayload) and store it in the broker."""
        broker = self.publisher(pubsub_name, topic)
        kind = self.kinds.get(pubsub_name, "pubsub")
        message = self.message(pubsub_name, topic, data, content_type, metadata)
        try:
            await self.outbound(pubsub_name, lambda: broker.publish(topic, message, metadata))
        except SidecarError as err:
            raise _status.pubsub_publish_failed(pubsub_name, kind, topic, err) from None

    def message(
        self, pubsub_name: str, topic: str, data: bytes, content_type: str, metadata: dict[str, str]
    ) -> bytes:
        """The bytes stored in the broker: the CloudEvent JSON, or the payload itself for rawPayload."""
        span = trace.get_current_span().get_span_context()
        if ce.is_raw_payload(metadata):
            # Without an envelope the trace context travels in the message metadata (daprd does the same).
            metadata.setdefault("traceparent", traceparent(span))
            return data
        try:
            envelope = ce.new_envelope(
                source=self.ctx.app_id,
                topic=topic,
                pubsub=pubsub_name,
                content_type=content_type,
                data=data,
                traceparent=traceparent(span),
                tracestate=tracestate(span),
                metadata=metadata,
            )
        except ce.EnvelopeError:
            kind = self.kinds.get(pubsub_name, "pubsub")
            raise _status.pubsub_cloudevent_creation(pubsub_name, kind) from None
        ce.apply_ttl(envelope, metadata)
        return ce.go_json(envelope)
