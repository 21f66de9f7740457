"""Input binding events for apps behind `--app-protocol http`, as daprd's HTTP channel sends them.

On start-up `OPTIONS /<route>` asks whether the app wants a binding (404 = no; 2xx or 405 = yes;
retried until the app answers); each event is then `POST /<route>` with the data as body and the
event metadata as headers. Any answer but 2xx is a failure (retried by the inbound policy).
The route is the component's `route` metadata, else `/<binding name>`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

import aiohttp

from chassis.sidecar._auth import TOKEN_KEY, app_token
from chassis.sidecar._errors import ComponentError

__all__ = ["HttpAppBindings"]

log = logging.getLogger("chassis.sidecar.bindings")

RETRY = 0.2  # seconds between OPTIONS probes while the app is starting
TIMEOUT = aiohttp.ClientTimeout(total=60)


class HttpAppBindings:
    """The HTTP side of input bindings: one aiohttp session to the app."""

    def __init__(self, address: str, routes: Mapping[str, str]) -> None:
        self.base = f"http://{address}"
        self.routes = {name: "/" + route.lstrip("/") for name, route in routes.items()}
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=TIMEOUT)
        return self._session

    def _url(self, name: str) -> str:
        return self.base + self.routes.get(name, f"/{name}")

    async def wanted(self, name: str) -> bool:
        """OPTIONS the binding's route until the app answers; 404 means it does not want the events."""
        while True:
            try:
                async with self._client().options(self._url(name), headers=_token()) as response:
                    return response.status != 404
            except aiohttp.ClientError as err:
                log.debug("waiting for the app to answer OPTIONS for binding %s: %s", name, err)
            await asyncio.sleep(RETRY)

    async def deliver(self, name: str, data: bytes, headers: Mapping[str, str]) -> None:
        """POST one event; ComponentError unless the app answers 2xx."""
        sent = {"Content-Type": "application/json"} | dict(headers) | _token()
        try:
            async with self._client().post(self._url(name), data=data, headers=sent) as response:
                await response.read()
                status = response.status
        except aiohttp.ClientError as err:
            raise ComponentError(f"error sending binding event to the app: {err}") from None
        if not 200 <= status < 300:
            raise ComponentError(f"app responded with status {status} to binding event {name}")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def _token() -> dict[str, str]:
    token = app_token()
    return {TOKEN_KEY: token} if token else {}
