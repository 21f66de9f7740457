"""The HTTP state API (`/v1.0/state/...`) as daprd serves it, over the operations the gRPC API uses.

HTTP values are JSON: daprd stores each item's `value` as its JSON encoding (Go's json.Marshal), so a
value saved over HTTP reads back over gRPC as JSON bytes, and GET returns the stored bytes as they are.
Every item of a request is validated before anything is written, so a bad request changes nothing.
"""

from __future__ import annotations

import json
from typing import Any

import grpc
from aiohttp import web

from chassis.sidecar import _cloudevents as ce
from chassis.sidecar._http_common import malformed, query_metadata, read_json, route, string_map
from chassis.sidecar._operations import Operations, expire_metadata
from chassis.sidecar._status import ApiError
from chassis.sidecar.components import TxOp

API = "/v1.0/state"
FIRST_WRITE = "first-write"


def _item(raw: Any, store: str, query: dict[str, str]) -> TxOp:
    """One `{key, value, etag, metadata, options}` object as an upsert (query metadata wins, as daprd)."""
    if not isinstance(raw, dict):
        raise malformed("failed deserializing HTTP body: each state item must be an object")
    key = raw.get("key")
    if not isinstance(key, str) or not key:
        raise malformed('"key" is a required field')
    etag = raw.get("etag")
    if etag is not None and not isinstance(etag, str):
        raise malformed("failed deserializing HTTP body: etag must be a string")
    metadata = string_map(raw.get("metadata"), "metadata") | query
    return Operations.upsert(
        store,
        key,
        ce.go_json(raw.get("value")),
        etag=etag,
        first_write=_concurrency(raw.get("options")) == FIRST_WRITE,
        metadata=metadata,
    )


def _concurrency(options: Any) -> str:
    if options is None:
        return ""
    if not isinstance(options, dict):
        raise malformed("failed deserializing HTTP body: options must be an object")
    value = options.get("concurrency") or ""
    if not isinstance(value, str) or not isinstance(options.get("consistency") or "", str):
        raise malformed("failed deserializing HTTP body: options values must be strings")
    return value


def _delete_item(raw: Any) -> TxOp:
    if not isinstance(raw, dict) or not isinstance(raw.get("key"), str) or not raw["key"]:
        raise malformed('"key" is a required field')
    etag = raw.get("etag")
    if etag is not None and not isinstance(etag, str):
        raise malformed("failed deserializing HTTP body: etag must be a string")
    first_write = _concurrency(raw.get("options")) == FIRST_WRITE
    return TxOp("delete", raw["key"], etag=etag, first_write=first_write)


def _transaction_op(raw: Any, store: str, query: dict[str, str]) -> TxOp:
    if not isinstance(raw, dict):
        raise malformed("failed deserializing HTTP body: each operation must be an object")
    operation = raw.get("operation")
    if operation == "upsert":
        return _item(raw.get("request"), store, query)
    if operation == "delete":
        return _delete_item(raw.get("request"))
    message = f"operation type {operation} not supported"
    raise ApiError(
        grpc.StatusCode.UNIMPLEMENTED,
        message,
        error_code="ERR_NOT_SUPPORTED_STATE_OPERATION",
        http_status=400,
    )


def _bulk_entry(key: str, value: bytes | None, etag: str, metadata: dict[str, str]) -> dict[str, Any]:
    """daprd's BulkGetResponse item: `data` is the stored JSON (a string when it is not JSON)."""
    entry: dict[str, Any] = {"key": key}
    if value is None:
        return entry
    try:
        entry["data"] = json.loads(value)
    except (ValueError, UnicodeDecodeError):
        entry["data"] = value.decode("utf-8", errors="replace")
    entry["etag"] = etag
    if metadata:
        entry["metadata"] = metadata
    return entry


class StateRoutes:
    """Handlers of the state API; `ops` is shared with the gRPC servicer."""

    def __init__(self, ops: Operations) -> None:
        self.ops = ops

    def add_to(self, app: web.Application) -> None:
        """Register the routes (bulk/transaction before the per-key ones)."""
        app.router.add_post(API + "/{store:[^/]+}/bulk", self.bulk_get)
        app.router.add_post(API + "/{store:[^/]+}/transaction", self.transaction)
        app.router.add_get(API + "/{store:[^/]+}/{key:[^/]+}", self.get)
        app.router.add_delete(API + "/{store:[^/]+}/{key:[^/]+}", self.delete)
        app.router.add_post(API + "/{store:[^/]+}", self.save)

    @route("GetState")
    async def get(self, request: web.Request) -> web.StreamResponse:
        """200 with the stored bytes and an ETag header; 204 when the key is missing."""
        item = await self.ops.get_state(request.match_info["store"], request.match_info["key"])
        if item is None:
            return web.Response(status=204)
        headers = {"ETag": item.etag}
        headers |= {f"metadata.{k}": v for k, v in expire_metadata(item.expire_time).items()}
        return web.Response(status=200, body=item.value, headers=headers, content_type="application/json")

    @route("SaveState")
    async def save(self, request: web.Request) -> web.StreamResponse:
        """A JSON array of items, saved together; 204."""
        store = request.match_info["store"]
        self.ops.store(store)
        items = await read_json(request)
        if not isinstance(items, list):
            raise malformed("failed deserializing HTTP body: expected an array of state items")
        query = query_metadata(request)
        ops = [_item(raw, store, query) for raw in items]
        await self.ops.save_state(store, ops)
        return web.Response(status=204)

    @route("DeleteState")
    async def delete(self, request: web.Request) -> web.StreamResponse:
        """The ETag comes in `If-Match`; `concurrency=first-write` as a query parameter."""
        store = request.match_info["store"]
        first_write = request.query.get("concurrency", "") == FIRST_WRITE
        etag = request.headers.get("If-Match")  # present-but-empty still counts, as in daprd
        await self.ops.delete_state(store, request.match_info["key"], etag=etag, first_write=first_write)
        return web.Response(status=204)

    @route("GetBulkState")
    async def bulk_get(self, request: web.Request) -> web.StreamResponse:
        """`{"keys": [...], "parallelism": N}` -> one entry per key, in order."""
        store = request.match_info["store"]
        self.ops.store(store)
        body = await read_json(request)
        keys = body.get("keys") if isinstance(body, dict) else None
        if not isinstance(keys, list) or not all(isinstance(key, str) for key in keys):
            raise malformed("failed deserializing HTTP body: keys must be an array of strings")
        entries = []
        for key in keys:
            item = await self.ops.get_state(store, key)
            if item is None:
                entries.append(_bulk_entry(key, None, "", {}))
            else:
                entries.append(_bulk_entry(key, item.value, item.etag, expire_metadata(item.expire_time)))
        return web.json_response(entries)

    @route("ExecuteStateTransaction")
    async def transaction(self, request: web.Request) -> web.StreamResponse:
        """`{"operations": [{"operation": "upsert"|"delete", "request": {...}}], "metadata": {...}}`."""
        store = request.match_info["store"]
        self.ops.store(store)
        body = await read_json(request)
        if not isinstance(body, dict):
            raise malformed("failed deserializing HTTP body: expected an object with operations")
        operations = body.get("operations") or []
        if not isinstance(operations, list):
            raise malformed("failed deserializing HTTP body: operations must be an array")
        query = string_map(body.get("metadata"), "metadata") | query_metadata(request)
        ops = [_transaction_op(raw, store, query) for raw in operations]
        if ops:
            await self.ops.transact(store, ops)
        return web.Response(status=204)
