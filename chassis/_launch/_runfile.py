"""Reads a Dapr multi-app run file (the `dapr run -f` format) for `chassis up`.

Paths follow Dapr's rules: `common` paths are relative to the run file's folder, an app's own paths to
its `appDirPath`. Every mistake is reported as one line naming the file and the field.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from chassis._errors import ConfigError

DEFAULT_NAME = "dapr.yaml"
APP_PROTOCOLS = ("http", "grpc", "https", "grpcs", "h2c")
_PORT_FIELDS = ("appPort", "daprGRPCPort", "daprHTTPPort")
# Every field of Dapr's run file schema (dapr/cli pkg/standalone RunConfig + SharedRunConfig), so a file
# written for `dapr run -f` is accepted as is; only the ones below `_USED` change what chassis does.
_SHARED_FIELDS = frozenset(
    {
        "configFilePath",
        "appProtocol",
        "apiListenAddresses",
        "enableProfiling",
        "logLevel",
        "appMaxConcurrency",
        "placementHostAddress",
        "schedulerHostAddress",
        "resourcesPath",
        "resourcesPaths",
        "appSSL",
        "maxBodySize",
        "readBufferSize",
        "daprHTTPMaxRequestSize",
        "daprHTTPReadBufferSize",
        "enableAppHealthCheck",
        "appHealthCheckPath",
        "appHealthProbeInterval",
        "appHealthProbeTimeout",
        "appHealthThreshold",
        "enableApiLogging",
        "runtimePath",
        "daprPath",
        "env",
        "daprdLogDestination",
        "appLogDestination",
    }
)
_APP_FIELDS = _SHARED_FIELDS | {
    "appID",
    "appDirPath",
    "appChannelAddress",
    "appPort",
    "daprHTTPPort",
    "daprGRPCPort",
    "profilePort",
    "command",
    "metricsPort",
    "unixDomainSocket",
    "daprInternalGRPCPort",
    "containerImage",
    "containerImagePullPolicy",
    "createService",
}
_TOP_FIELDS = frozenset({"version", "common", "apps", "name"})


@dataclass(frozen=True)
class AppEntry:
    """One app of the run file, its paths resolved; a port of None is picked free at launch."""

    app_id: str
    app_dir: Path
    command: list[str]
    app_protocol: str = "http"
    app_port: int | None = None
    dapr_grpc_port: int | None = None
    dapr_http_port: int | None = None
    resources: list[Path] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RunFile:
    path: Path
    apps: list[AppEntry]

    @property
    def base_dir(self) -> Path:
        return self.path.parent


def locate(given: Path) -> Path:
    """The run file itself, or `dapr.yaml` inside a folder, as `dapr run -f` accepts both."""
    path = given / DEFAULT_NAME if given.is_dir() else given
    if not path.is_file():
        raise ConfigError(f"{given}: run file not found")
    return path.resolve()


def load(given: Path) -> RunFile:
    """Parse and validate a run file; raises ConfigError with one line naming file and field."""
    path = locate(given)
    doc = _Doc(path)
    return RunFile(path, doc.apps())


class _Doc:
    """Validation of one parsed file; `fail` names the file and the field path in every message."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.base = path.parent
        self.raw = self._parse()

    def fail(self, where: str, message: str) -> ConfigError:
        return ConfigError(f"{self.path}: {where}: {message}")

    def _parse(self) -> dict[str, Any]:
        try:
            raw = yaml.safe_load(self.path.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            line = f"line {mark.line + 1}" if mark is not None else "YAML"
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise self.fail(line, f"invalid YAML: {problem}") from None
        if not isinstance(raw, dict):
            raise self.fail("(top level)", "expected a mapping with version, common and apps")
        self._check_keys("", raw, _TOP_FIELDS)
        if raw.get("version") != 1:
            raise self.fail("version", f"required, must be 1 (got {raw.get('version')!r})")
        return raw

    def _check_keys(self, where: str, mapping: dict[str, Any], known: frozenset[str]) -> None:
        for key in mapping:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise self.fail(f"{where}.{key}" if where else str(key), f"unknown field{hint}")

    def apps(self) -> list[AppEntry]:
        common = self.raw.get("common") or {}
        if not isinstance(common, dict):
            raise self.fail("common", "must be a mapping")
        self._check_keys("common", common, _SHARED_FIELDS)
        apps = self.raw.get("apps")
        if not isinstance(apps, list) or not apps:
            raise self.fail("apps", "required, a non-empty list of apps")
        entries = [self._app(f"apps[{i}]", app, common) for i, app in enumerate(apps)]
        self._check_unique(entries)
        return entries

    def _check_unique(self, entries: list[AppEntry]) -> None:
        ids: set[str] = set()
        ports: dict[int, str] = {}
        for index, entry in enumerate(entries):
            if entry.app_id in ids:
                raise self.fail(f"apps[{index}].appID", f"duplicate app id '{entry.app_id}'")
            ids.add(entry.app_id)
            for name, port in zip(_PORT_FIELDS, _ports_of(entry), strict=True):
                where = f"apps[{index}].{name}"
                if port is not None and port in ports:
                    raise self.fail(where, f"port {port} is already taken by {ports[port]}")
                if port is not None:
                    ports[port] = where

    def _app(self, where: str, app: Any, common: dict[str, Any]) -> AppEntry:
        if not isinstance(app, dict):
            raise self.fail(where, "must be a mapping (appID, appDirPath, command, ...)")
        self._check_keys(where, app, _APP_FIELDS)
        app_dir = self._dir(f"{where}.appDirPath", app.get("appDirPath"), self.base, required=True)
        ports = {name: self._port(f"{where}.{name}", app.get(name)) for name in _PORT_FIELDS}
        return AppEntry(
            app_id=self._app_id(where, app.get("appID"), app_dir),
            app_dir=app_dir,
            command=self._command(f"{where}.command", app.get("command")),
            app_protocol=self._protocol(where, app.get("appProtocol", common.get("appProtocol"))),
            app_port=ports["appPort"],
            dapr_grpc_port=ports["daprGRPCPort"],
            dapr_http_port=ports["daprHTTPPort"],
            resources=self._resources(where, app, app_dir, common),
            env={**self._env("common.env", common.get("env")), **self._env(f"{where}.env", app.get("env"))},
        )

    def _dir(self, where: str, value: Any, base: Path, *, required: bool = False) -> Path:
        if value is None or value == "":
            if required:
                raise self.fail(where, "required")
            return base
        if not isinstance(value, str):
            raise self.fail(where, f"must be a path (got {value!r})")
        folder = (base / Path(value).expanduser()).resolve()
        if not folder.is_dir():
            raise self.fail(where, f"folder not found: {folder}")
        return folder

    def _app_id(self, where: str, value: Any, app_dir: Path) -> str:
        app_id = app_dir.name if value is None else value
        if not isinstance(app_id, str) or not app_id or "." in app_id:
            raise self.fail(f"{where}.appID", f"must be a non-empty name without dots (got {value!r})")
        return app_id

    def _command(self, where: str, value: Any) -> list[str]:
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(arg, str | int | float) for arg in value):
            raise self.fail(where, f"must be a list of strings, e.g. [python, -m, app] (got {value!r})")
        return [str(arg) for arg in value]

    def _port(self, where: str, value: Any) -> int | None:
        if value is None or value in (0, -1):
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
            raise self.fail(where, f"must be a port number 1-65535 (got {value!r})")
        return value

    def _protocol(self, where: str, value: Any) -> str:
        protocol = "http" if value is None else str(value).lower()
        if protocol not in APP_PROTOCOLS:
            choices = ", ".join(APP_PROTOCOLS)
            raise self.fail(f"{where}.appProtocol", f"must be one of {choices} (got {value!r})")
        return protocol

    def _env(self, where: str, value: Any) -> dict[str, str]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(where, "must be a mapping of NAME: value")
        return {str(name): _env_value(v) for name, v in value.items()}

    def _resources(
        self, where: str, app: dict[str, Any], app_dir: Path, common: dict[str, Any]
    ) -> list[Path]:
        """Dapr's precedence: the app's own paths, then `<appDirPath>/.dapr/resources`, then `common`."""
        own = self._paths(where, app, app_dir)
        if own:
            return own
        local = app_dir / ".dapr" / "resources"
        if local.is_dir():
            return [local]
        return self._paths("common", common, self.base)

    def _paths(self, where: str, section: dict[str, Any], base: Path) -> list[Path]:
        many = section.get("resourcesPaths") or []
        if isinstance(many, str):  # Dapr's docs show a comma-separated string too
            many = [p.strip() for p in many.split(",") if p.strip()]
        if not isinstance(many, list):
            raise self.fail(f"{where}.resourcesPaths", "must be a list of folders")
        paths = [self._dir(f"{where}.resourcesPaths[{i}]", p, base) for i, p in enumerate(many)]
        if section.get("resourcesPath"):
            paths.append(self._dir(f"{where}.resourcesPath", section["resourcesPath"], base))
        return paths


def _ports_of(entry: AppEntry) -> tuple[int | None, int | None, int | None]:
    return entry.app_port, entry.dapr_grpc_port, entry.dapr_http_port


def _env_value(value: Any) -> str:
    if isinstance(value, bool):  # YAML `true` means the string "true", as Go's decoder reads it
        return "true" if value else "false"
    return "" if value is None else str(value)
