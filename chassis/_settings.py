"""Typed service configuration, read once at start-up from the environment, `.env`, and the Dapr
secret store for fields marked `DaprSecret` (see _secrets.py).

A bad value stops the process with one line naming the environment variable, never a traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import AliasChoices, AliasPath, BeforeValidator, Field, ValidationError
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from chassis._secrets import DaprSecretsSource, SecretSettingError

S = TypeVar("S", bound="ServiceSettings")


DEFAULT_DAPR_GRPC_PORT = 50001
DEFAULT_DAPR_HTTP_PORT = 3500
# The sidecar's resources folders, exported to the app by `chassis run`/`chassis up` (see _resilience.py).
RESOURCES_PATH_ENV = "CHASSIS_RESOURCES_PATH"


def path_list(text: str) -> list[str]:
    """`a:b` (os.pathsep-separated, like PATH, as CHASSIS_RESOURCES_PATH holds it) -> ["a", "b"]."""
    return [part for part in text.split(os.pathsep) if part.strip()]


def split_paths(value: object) -> object:
    """Validator: a string of folders as `path_list`; a list passes through."""
    return path_list(value) if isinstance(value, str) else value


class ServiceSettings(BaseSettings):
    """What every service needs; subclass it (with your own `env_prefix`) to add service settings.

    The shared fields keep the names `dapr run` and the chassis CLI export (APP_ID, DAPR_GRPC_PORT, ...)
    whatever prefix a subclass chooses, because each names its variable explicitly.
    """

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    app_id: str = Field(validation_alias="APP_ID", min_length=1)
    app_port: int = Field(default=50051, validation_alias="APP_PORT", ge=0, le=65535)
    bind_host: str = Field(default="127.0.0.1", validation_alias="CHASSIS_BIND")
    dapr_grpc_port: int = Field(
        default=DEFAULT_DAPR_GRPC_PORT, validation_alias="DAPR_GRPC_PORT", ge=1, le=65535
    )
    dapr_http_port: int = Field(
        default=DEFAULT_DAPR_HTTP_PORT, validation_alias="DAPR_HTTP_PORT", ge=1, le=65535
    )
    state_store: str = Field(default="statestore", validation_alias="CHASSIS_STATE_STORE", min_length=1)
    pubsub: str = Field(default="pubsub", validation_alias="CHASSIS_PUBSUB", min_length=1)
    drain_seconds: float = Field(default=10.0, validation_alias="CHASSIS_DRAIN_SECONDS", ge=0)
    # The sidecar's --resources-path folders (os.pathsep-separated, like PATH): the chassis reads the
    # same Resiliency YAML so no policy runs twice (see _resilience.py). Empty: built-in policies.
    resources_path: Annotated[list[Path], NoDecode, BeforeValidator(split_paths)] = Field(
        default_factory=list, validation_alias=RESOURCES_PATH_ENV
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Arguments, then the environment, then `.env`, then Dapr secrets; defaults last."""
        return init_settings, env_settings, dotenv_settings, DaprSecretsSource(settings_cls)


def load_settings(cls: type[S]) -> S:
    """Build `cls` from the environment; on a bad value print one `config error:` line and exit 2."""
    try:
        return cls()  # type: ignore[call-arg]  # the values come from the environment
    except ValidationError as err:
        print(describe_error(cls, err), file=sys.stderr)
        raise SystemExit(2) from None
    except SecretSettingError as err:
        print(f"config error: {env_var_of(cls, err.setting)}: {err.problem}", file=sys.stderr)
        raise SystemExit(2) from None


def describe_error(cls: type[BaseSettings], err: ValidationError) -> str:
    """The one line a person needs: which variable, what is wrong, what it was set to."""
    return f"config error: {settings_problem(cls, err)}"


def settings_problem(cls: type[BaseSettings], err: ValidationError) -> str:
    """`VARIABLE: what is wrong (got value)`, for the first problem of a settings class."""
    first = err.errors()[0]
    field = str(first["loc"][0]) if first["loc"] else ""
    env_name = env_var_of(cls, field)
    shown = "not set" if first["type"] == "missing" else f"got {first['input']!r}"
    return f"{env_name}: {first['msg']} ({shown})"


def env_var_of(cls: type[BaseSettings], field_or_alias: str) -> str:
    """The environment variable that feeds a field (`loc` of an error may be its name or its alias)."""
    for name, info in cls.model_fields.items():
        alias = _first_alias(info.validation_alias)
        if field_or_alias in (name, alias):
            return alias or f"{cls.model_config.get('env_prefix', '')}{name}".upper()
    return field_or_alias.upper()


def _first_alias(alias: str | AliasPath | AliasChoices | None) -> str | None:
    if isinstance(alias, str):
        return alias
    if isinstance(alias, AliasChoices):
        first: Any = alias.choices[0]
        return first if isinstance(first, str) else None
    return None


def resources_path(settings: ServiceSettings | None) -> tuple[list[Path], str]:
    """The resources folders and the app id: from settings when a service has them, else the environment."""
    if settings is not None:
        return settings.resources_path, settings.app_id
    folders = path_list(os.environ.get(RESOURCES_PATH_ENV, ""))
    return [Path(folder) for folder in folders], os.environ.get("APP_ID", "")


def sidecar_grpc_port(settings: ServiceSettings | None) -> int:
    """The sidecar's gRPC port: from settings when a service has them, else as the Dapr SDK reads it."""
    if settings is not None:
        return settings.dapr_grpc_port
    return int(os.environ.get("DAPR_GRPC_PORT") or DEFAULT_DAPR_GRPC_PORT)
