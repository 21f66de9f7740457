"""`bindings.http` (output): call an HTTP endpoint, as Dapr's HTTP binding does.

Operations `create` (= POST), `get`, `head`, `post`, `put`, `patch`, `delete`, `options`, `trace`.
The request metadata `path` is appended to the component's `url`; metadata keys starting with a
capital letter become request headers. The response metadata carries `statusCode`, `status` and
the response headers. With `errorIfNot2XX` (default true) a non-2xx answer is an error.
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from pathlib import Path

import aiohttp

from chassis.sidecar._errors import ComponentError, InvalidMetadata
from chassis.sidecar.components import Driver, meta_get

__all__ = ["DRIVER", "HttpBinding"]

OPERATIONS = ("create", "get", "head", "post", "put", "patch", "delete", "options", "trace")
_JSON = "application/json; charset=utf-8"
_SIZE_UNITS = {"": 1, "ki": 1024, "mi": 1024**2, "gi": 1024**3, "k": 1000, "m": 1000**2, "g": 1000**3}


def parse_size(text: str) -> int:
    """A Kubernetes quantity as Dapr reads `maxResponseBodySize` ("100Mi", "1k", "2048")."""
    value = text.strip()
    number = value.rstrip("KkMmGgIi")
    unit = value[len(number) :].lower()
    if not number.isdigit() or unit not in _SIZE_UNITS:
        raise ValueError(f"invalid size {text!r} (e.g. 100Mi, 512Ki, 2048)")
    return int(number) * _SIZE_UNITS[unit]


def go_status(code: int) -> str:
    """Go's `resp.Status`: "200 OK"."""
    try:
        return f"{code} {HTTPStatus(code).phrase}"
    except ValueError:
        return str(code)


class HttpBinding:
    """One aiohttp session per component, opened with it."""

    operations: tuple[str, ...] = OPERATIONS

    def __init__(self, name: str, url: str, *, error_if_not_2xx: bool, max_body: int) -> None:
        self.name = name
        self.url = url
        self.error_if_not_2xx = error_if_not_2xx
        self.max_body = max_body
        self._session = aiohttp.ClientSession(auto_decompress=True)

    @classmethod
    async def open(
        cls, name: str, metadata: Mapping[str, str], *, app_id: str, base_dir: Path
    ) -> HttpBinding:
        return cls(
            name,
            meta_get(metadata, "url"),
            error_if_not_2xx=meta_get(metadata, "errorIfNot2XX", "true").lower() != "false",
            max_body=parse_size(meta_get(metadata, "maxResponseBodySize", "100Mi")),
        )

    async def invoke(
        self, operation: str, data: bytes, metadata: Mapping[str, str]
    ) -> tuple[bytes, dict[str, str]]:
        method = "POST" if operation == "create" else operation.upper()
        url = self._url(meta_get(metadata, "path"))
        headers = {key: value for key, value in metadata.items() if key[:1].isupper()}
        if data and "Content-Type" not in headers:
            headers["Content-Type"] = _JSON
        headers.setdefault("Accept", _JSON)
        try:
            async with self._session.request(method, url, data=data or None, headers=headers) as response:
                body = await response.content.read(self.max_body)
                status = response.status
                answer = {key: value for key, value in response.headers.items()}
        except aiohttp.ClientError as err:
            raise ComponentError(f"error invoking {method} {url}: {err}") from None
        if self.error_if_not_2xx and not 200 <= status < 300:
            raise ComponentError(f"received status code {status}")
        return body, answer | {"statusCode": str(status), "status": go_status(status)}

    def _url(self, path: str) -> str:
        if not path:
            return self.url
        return self.url.rstrip("/") + "/" + path.lstrip("/")

    async def close(self) -> None:
        await self._session.close()


def _check(metadata: Mapping[str, str]) -> None:
    url = meta_get(metadata, "url")
    if not url.startswith(("http://", "https://")):
        raise InvalidMetadata("url", f"expected an http:// or https:// URL, got {url!r}")
    flag = meta_get(metadata, "errorIfNot2XX").lower()
    if flag not in ("", "true", "false"):
        raise InvalidMetadata("errorIfNot2XX", f"expected true or false, got {flag!r}")
    try:
        parse_size(meta_get(metadata, "maxResponseBodySize", "100Mi"))
    except ValueError as err:
        raise InvalidMetadata("maxResponseBodySize", str(err)) from None


DRIVER = Driver(kind="bindings", versions=("v1",), required=("url",), check=_check, open=HttpBinding.open)
