"""`secretstores.local.env`: the process environment as a secret store (development only, as in Dapr).

A secret is one variable: GetSecret("X") answers {"X": value}. The optional `prefix` metadata limits
the store to variables starting with it (and strips it from bulk keys, as components-contrib does).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from chassis.sidecar.components import Driver, meta_get

__all__ = ["DRIVER", "EnvSecretStore"]


class EnvSecretStore:
    """Reads `os.environ` on every call, so a restarted sidecar sees the current values."""

    def __init__(self, name: str, prefix: str) -> None:
        self.name = name
        self.prefix = prefix

    @classmethod
    async def open(
        cls, name: str, metadata: Mapping[str, str], *, app_id: str, base_dir: Path
    ) -> EnvSecretStore:
        return cls(name, meta_get(metadata, "prefix"))

    async def get(self, key: str, metadata: Mapping[str, str]) -> dict[str, str]:
        value = os.environ.get(self.prefix + key)
        if value is None:
            raise KeyError(key)
        return {key: value}

    async def bulk(self, metadata: Mapping[str, str]) -> dict[str, dict[str, str]]:
        found = {
            name.removeprefix(self.prefix): value
            for name, value in os.environ.items()
            if name.startswith(self.prefix)
        }
        return {name: {name: value} for name, value in found.items()}

    async def close(self) -> None:
        """Nothing to release."""


def _check(metadata: Mapping[str, str]) -> None:
    """Every metadata value is acceptable."""


DRIVER = Driver(kind="secretstores", versions=("v1",), required=(), check=_check, open=EnvSecretStore.open)
