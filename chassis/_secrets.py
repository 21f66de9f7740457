"""Settings from a Dapr secret store: a field marked `DaprSecret(...)` is read through the sidecar's
secrets API (GetSecret, with the official SDK) when the environment and `.env` do not set it.

    class Settings(ServiceSettings):
        db_password: Annotated[SecretStr, DaprSecret("db", key="password")]

The sidecar may still be starting when a service reads its settings, so the first request waits for
it (up to `WAIT_SECONDS`); a secret that cannot be read stops the start with one line naming the
setting, as a bad environment variable does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import grpc
from dapr.clients import DaprClient
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from chassis._errors import ConfigError

WAIT_SECONDS = 30  # how long a start waits for the sidecar to report healthy
DEFAULT_STORE_ENV = "CHASSIS_SECRET_STORE"
DEFAULT_STORE = "secretstore"


@dataclass(frozen=True)
class DaprSecret:
    """Where a setting's value lives: secret `name` (its `key`, default the name) in `store`
    (default: $CHASSIS_SECRET_STORE, else `secretstore`)."""

    name: str
    key: str | None = None
    store: str | None = None


class SecretSettingError(ConfigError):
    """A setting's secret could not be read; `setting` names the field."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"{setting}: {problem}")
        self.setting = setting
        self.problem = problem


class DaprSecretsSource(PydanticBaseSettingsSource):
    """Values of `DaprSecret` fields that no earlier source (init, environment, .env) provided."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)
        self._secrets: dict[tuple[str, str], dict[str, str]] = {}  # (store, name) -> its keys

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads every marked field itself

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, field in self.settings_cls.model_fields.items():
            secret = next((m for m in field.metadata if isinstance(m, DaprSecret)), None)
            if secret is None or self._already_set(name, field):
                continue
            values[name] = self._read(name, secret)
        return values

    def _already_set(self, name: str, field: FieldInfo) -> bool:
        state = self.current_state
        return name in state or (isinstance(field.validation_alias, str) and field.validation_alias in state)

    def _read(self, setting: str, secret: DaprSecret) -> str:
        store = secret.store or os.environ.get(DEFAULT_STORE_ENV) or DEFAULT_STORE
        if (store, secret.name) not in self._secrets:
            self._secrets[store, secret.name] = _fetch(setting, store, secret.name)
        found = self._secrets[store, secret.name]
        key = secret.key or secret.name
        if key not in found:
            raise SecretSettingError(setting, f"secret {secret.name!r} in store {store!r} has no key {key!r}")
        return found[key]


def _fetch(setting: str, store: str, name: str) -> dict[str, str]:
    """One secret's keys, through the official SDK's GetSecret; the SDK first waits for the sidecar."""
    # Imported here, not at the top: both modules import the settings module, which imports this one.
    from chassis._dapr import sdk_setting
    from chassis._settings import DEFAULT_DAPR_GRPC_PORT, DEFAULT_DAPR_HTTP_PORT

    grpc_port = os.environ.get("DAPR_GRPC_PORT") or str(DEFAULT_DAPR_GRPC_PORT)
    http_port = os.environ.get("DAPR_HTTP_PORT") or str(DEFAULT_DAPR_HTTP_PORT)
    try:
        with (
            sdk_setting("DAPR_HTTP_ENDPOINT", f"http://127.0.0.1:{http_port}"),
            sdk_setting("DAPR_HEALTH_TIMEOUT", WAIT_SECONDS),
            DaprClient(address=f"127.0.0.1:{grpc_port}") as client,
        ):
            return dict(client.get_secret(store, name).secret)
    except grpc.RpcError as err:  # the sidecar's answer: the store or the secret is missing
        details = getattr(err, "details", None)
        reason = details() if callable(details) else str(err)
        raise SecretSettingError(setting, f"cannot read secret {name!r} from {store!r}: {reason}") from None
    except Exception as err:  # the SDK's own errors, e.g. the sidecar never became healthy
        problem = f"cannot read secret {name!r} from {store!r} through the sidecar: {err}"
        raise SecretSettingError(setting, problem) from None
