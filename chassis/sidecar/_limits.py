"""Request size limits: daprd's `--max-body-size` (a Kubernetes quantity such as `4Mi`, default 4Mi).

The same limit bounds HTTP request bodies (413 with a message naming the flag; checked on the
Content-Length before any handler runs, and while reading a chunked body) and inbound gRPC messages
(gRPC's own RESOURCE_EXHAUSTED), so an oversized request is refused before it can change state.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from chassis.sidecar._http_common import too_large

DEFAULT_MAX_BODY_SIZE = "4Mi"
_QUANTITY = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(Ki|Mi|Gi|Ti|k|K|M|G|T|B|)\s*")
_FACTORS = {
    "": 1,
    "B": 1,
    "k": 1000,
    "K": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
}


def parse_size(text: str) -> int:
    """`4Mi` -> 4194304, `100k` -> 100000, `512` -> 512; ValueError saying what is accepted."""
    match = _QUANTITY.fullmatch(text)
    if match is None:
        raise ValueError(
            f"invalid size {text!r}: expected a number with an optional unit (Ki, Mi, Gi, k, M, G)"
        )
    size = int(float(match.group(1)) * _FACTORS[match.group(2)])
    if size <= 0:
        raise ValueError(f"invalid size {text!r}: must be positive")
    return size


def http_middleware(limit: int) -> Any:
    """aiohttp middleware answering 413 for a declared Content-Length over `limit`."""

    @web.middleware
    async def check_size(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        length = request.content_length
        if length is not None and length > limit:
            return too_large(length, limit)
        return await handler(request)

    return check_size


def grpc_options(limit: int) -> list[tuple[str, int]]:
    """Server options bounding each inbound gRPC message."""
    return [("grpc.max_receive_message_length", limit)]
