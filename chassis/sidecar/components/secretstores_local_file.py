"""`secretstores.local.file`: secrets from a JSON file (development only, as in Dapr).

Nested objects are flattened with `nestedSeparator` (default ":"): {"db": {"pw": "x"}} gives the
secret "db:pw". With `multiValued: "true"` the top-level keys are the secrets and everything under
one is flattened into that secret's map, so GetSecret("db") answers {"pw": "x"}.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from chassis.sidecar._errors import InvalidMetadata
from chassis.sidecar.components import Driver, meta_get

__all__ = ["DRIVER", "FileSecretStore"]


def _flatten(value: Any, prefix: str, separator: str, into: dict[str, str]) -> None:
    """JSON -> {"a:b": "..."}; arrays are indexed ("a:0"), scalars printed as JSON would (no quotes)."""
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(item, f"{prefix}{separator}{key}" if prefix else str(key), separator, into)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _flatten(item, f"{prefix}{separator}{index}" if prefix else str(index), separator, into)
    elif isinstance(value, str):
        into[prefix] = value
    else:
        into[prefix] = json.dumps(value)


class FileSecretStore:
    """The file is read once when the component opens (as daprd does at init)."""

    def __init__(self, name: str, secrets: dict[str, dict[str, str]]) -> None:
        self.name = name
        self._secrets = secrets

    @classmethod
    async def open(
        cls, name: str, metadata: Mapping[str, str], *, app_id: str, base_dir: Path
    ) -> FileSecretStore:
        document = _load(meta_get(metadata, "secretsFile"), base_dir)
        separator = meta_get(metadata, "nestedSeparator", ":") or ":"
        multi = meta_get(metadata, "multiValued").lower() == "true"
        return cls(name, _secrets(document, separator, multi))

    async def get(self, key: str, metadata: Mapping[str, str]) -> dict[str, str]:
        return dict(self._secrets[key])

    async def bulk(self, metadata: Mapping[str, str]) -> dict[str, dict[str, str]]:
        return {key: dict(value) for key, value in self._secrets.items()}

    async def close(self) -> None:
        """Nothing to release."""


def _load(name: str, base_dir: Path) -> dict[str, Any]:
    """The JSON object in the secrets file (relative paths resolve against the sidecar's cwd)."""
    path = Path(name).expanduser()
    path = path if path.is_absolute() else base_dir / path
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise InvalidMetadata("secretsFile", f"cannot read {path}: {err}") from None
    except json.JSONDecodeError as err:
        raise InvalidMetadata("secretsFile", f"{path} is not valid JSON: {err}") from None
    if not isinstance(document, dict):
        raise InvalidMetadata("secretsFile", f"{path} must hold a JSON object")
    return document


def _secrets(document: dict[str, Any], separator: str, multi: bool) -> dict[str, dict[str, str]]:
    if not multi:
        flat: dict[str, str] = {}
        _flatten(document, "", separator, flat)
        return {key: {key: value} for key, value in flat.items()}
    secrets: dict[str, dict[str, str]] = {}
    for key, value in document.items():
        values: dict[str, str] = {}
        if isinstance(value, dict | list):
            _flatten(value, "", separator, values)
        else:
            _flatten(value, str(key), separator, values)
        secrets[str(key)] = values
    return secrets


def _check(metadata: Mapping[str, str]) -> None:
    multi = meta_get(metadata, "multiValued").lower()
    if multi not in ("", "true", "false"):
        raise InvalidMetadata("multiValued", f"expected true or false, got {multi!r}")


DRIVER = Driver(
    kind="secretstores", versions=("v1",), required=("secretsFile",), check=_check, open=FileSecretStore.open
)
