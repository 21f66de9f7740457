"""Load Dapr resource YAML (`--resources-path`) and open the components it declares.

Every mistake is reported as one line, `<file>: <field>: <what is wrong>`, before anything opens,
so `python -m chassis.sidecar` can exit 1 with a message the user can act on.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import yaml

from chassis.sidecar._errors import InvalidMetadata, ResourceError, SidecarError
from chassis.sidecar._resiliency import Resiliency, parse_resiliency
from chassis.sidecar._subscriptions import Subscription, parse_declarative
from chassis.sidecar.components import (
    Driver,
    InputBinding,
    OutputBinding,
    PubSub,
    SecretStore,
    StateStore,
    bindings_cron,
    bindings_http,
    bindings_smtp,
    parse_duration,
    pubsub_jetstream,
    pubsub_kafka,
    pubsub_mqtt3,
    pubsub_rabbitmq,
    pubsub_redis,
    pubsub_sqlite,
    secretstores_local_env,
    secretstores_local_file,
    state_in_memory,
    state_postgresql,
    state_redis,
    state_sqlite,
)

__all__ = ["DRIVERS", "ComponentSpec", "Resources", "load_specs", "open_resources", "parse_duration"]

# One entry per Dapr component type; a new driver is a module in components/ plus one line here.
DRIVERS: dict[str, Driver] = {
    "state.sqlite": state_sqlite.DRIVER,
    "pubsub.sqlite": pubsub_sqlite.DRIVER,
    "state.redis": state_redis.DRIVER,
    "pubsub.redis": pubsub_redis.DRIVER,
    "state.postgresql": state_postgresql.DRIVER,
    "state.in-memory": state_in_memory.DRIVER,
}

# Bindings and secret stores (H10).
DRIVERS |= {
    "bindings.cron": bindings_cron.DRIVER,
    "bindings.http": bindings_http.DRIVER,
    "bindings.smtp": bindings_smtp.DRIVER,
    "secretstores.local.env": secretstores_local_env.DRIVER,
    "secretstores.local.file": secretstores_local_file.DRIVER,
}

# Brokers (H7).
DRIVERS |= {
    "pubsub.rabbitmq": pubsub_rabbitmq.DRIVER,
    "pubsub.jetstream": pubsub_jetstream.DRIVER,
    "pubsub.kafka": pubsub_kafka.DRIVER,
    "pubsub.mqtt3": pubsub_mqtt3.DRIVER,
}

YAML_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class ComponentSpec:
    """One `kind: Component` document, validated."""

    name: str
    type: str
    version: str
    metadata: dict[str, str]
    scopes: tuple[str, ...]
    source: Path
    # secretKeyRef entries: (metadata field, secret name, key), resolved from `auth.secretStore` on open.
    secret_refs: tuple[tuple[str, str, str], ...] = ()
    secret_store: str = ""

    def in_scope(self, app_id: str) -> bool:
        """Dapr loads a component for an app when `scopes` is empty or names the app."""
        return not self.scopes or app_id in self.scopes


@dataclass
class Resources:
    """The opened components of one sidecar, by component name."""

    state_stores: dict[str, StateStore] = field(default_factory=dict)
    pubsubs: dict[str, PubSub] = field(default_factory=dict)
    specs: list[ComponentSpec] = field(default_factory=list)

    output_bindings: dict[str, OutputBinding] = field(default_factory=dict)
    input_bindings: dict[str, InputBinding] = field(default_factory=dict)
    secret_stores: dict[str, SecretStore] = field(default_factory=dict)
    resiliency: Resiliency = field(default_factory=Resiliency)
    subscriptions: list[Subscription] = field(default_factory=list)  # declarative, in scope for the app

    async def close(self) -> None:
        """Close every component (each closes its own worker thread)."""
        await _close_h10(self)
        for store in self.state_stores.values():
            await store.close()
        for broker in self.pubsubs.values():
            await broker.close()
        self.state_stores.clear()
        self.pubsubs.clear()


async def _close_h10(resources: Resources) -> None:
    """Close bindings and secret stores (a component that is both binding kinds closes once)."""
    seen: set[int] = set()
    groups: list[Mapping[str, Any]] = [
        resources.input_bindings,
        resources.output_bindings,
        resources.secret_stores,
    ]
    for group in groups:
        for component in group.values():
            if id(component) not in seen:
                seen.add(id(component))
                await component.close()
    resources.input_bindings.clear()
    resources.output_bindings.clear()
    resources.secret_stores.clear()


def load_resiliency(paths: Sequence[Path], app_id: str) -> Resiliency:
    """Merge every `kind: Resiliency` document in scope for `app_id`; raise ResourceError."""
    resiliency = Resiliency()
    for file in _yaml_files(paths):
        for where, doc in _documents(file):
            if doc.get("kind") == "Resiliency" and app_id in (_scopes(where, doc.get("scopes")) or (app_id,)):
                parse_resiliency(resiliency, where, doc)
    return resiliency


def load_subscriptions(paths: Sequence[Path], app_id: str) -> list[Subscription]:
    """Every `kind: Subscription` document (declarative subscriptions) in scope for `app_id`."""
    found = []
    for file in _yaml_files(paths):
        for where, doc in _documents(file):
            if doc.get("kind") == "Subscription" and (sub := parse_declarative(where, doc)).in_scope(app_id):
                found.append(sub)
    return found


def component_types(paths: Sequence[Path]) -> dict[str, str]:
    """Each Component's name -> type, the rest unchecked (a type only daprd knows is fine here).

    What the chassis needs for Dapr's default policy names; checking components is the sidecar's job.
    """
    types = {}
    for file in _yaml_files(paths):
        for _, doc in _documents(file):
            name, kind = _field(doc, "metadata", "name"), _field(doc, "spec", "type")
            if doc.get("kind") == "Component" and name is not None and kind is not None:
                types[name] = kind
    return types


def _field(doc: Mapping[str, Any], section: str, key: str) -> str | None:
    value = doc.get(section)
    return str(value[key]) if isinstance(value, dict) and key in value else None


def load_specs(paths: Sequence[Path]) -> list[ComponentSpec]:
    """Parse every Component in the YAML files of `paths` (folders or files); raise ResourceError."""
    specs: list[ComponentSpec] = []
    seen: dict[str, Path] = {}
    for file in _yaml_files(paths):
        for where, doc in _documents(file):
            if doc.get("kind") != "Component":
                continue  # Subscription, Resiliency, Configuration... are not loaded here (yet)
            spec = _component(where, file, doc)
            if spec.name in seen:
                raise ResourceError(
                    where,
                    "metadata.name",
                    f"duplicate component name {spec.name!r} (also in {seen[spec.name]})",
                )
            seen[spec.name] = file
            specs.append(spec)
    return specs


def _yaml_files(paths: Sequence[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_file():
            yield path
        elif path.is_dir():
            yield from sorted(p for p in path.iterdir() if p.suffix in YAML_SUFFIXES and p.is_file())
        else:
            raise ResourceError(path, "resources path", "no such file or directory")


def _documents(file: Path) -> list[tuple[str, dict[str, Any]]]:
    """The documents of a (multi-document) YAML file, each with a label for error messages."""
    try:
        docs = [doc for doc in yaml.safe_load_all(file.read_text(encoding="utf-8")) if doc is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"line {mark.line + 1} column {mark.column + 1}" if mark is not None else "document"
        problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
        raise ResourceError(file, line, f"invalid YAML: {problem}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ResourceError(file, "file", f"cannot read: {exc}") from None
    except RecursionError:  # PyYAML builds nested collections recursively
        raise ResourceError(file, "document", "invalid YAML: nested too deeply") from None
    except (ValueError, TypeError, AttributeError) as exc:
        # PyYAML's value constructors raise these: `2024-02-30`, `!!int x`, `!!timestamp x`, 5000 digits.
        raise ResourceError(file, "document", f"invalid YAML: {' '.join(str(exc).split())}") from None
    for index, doc in enumerate(docs):
        if not isinstance(doc, dict):
            raise ResourceError(
                _label(file, index, len(docs)), "document", "expected a mapping (apiVersion, kind, ...)"
            )
    return [(_label(file, index, len(docs)), doc) for index, doc in enumerate(docs)]


def _label(file: Path, index: int, count: int) -> str:
    # Multi-document files: say which document, as `file#2`.
    return f"{file}#{index + 1}" if count > 1 else str(file)


def _component(where: str, file: Path, doc: dict[str, Any]) -> ComponentSpec:
    meta = _mapping(where, doc, "metadata")
    spec = _mapping(where, doc, "spec")
    name = _text(where, "metadata.name", meta.get("name"))
    ctype = _text(where, "spec.type", spec.get("type"))
    version = _text(where, "spec.version", spec.get("version"))
    driver = DRIVERS.get(ctype)
    if driver is None:
        raise ResourceError(
            where, "spec.type", f"unknown component type {ctype!r} (supported: {', '.join(sorted(DRIVERS))})"
        )
    if version not in driver.versions:
        raise ResourceError(
            where,
            "spec.version",
            f"{ctype} has no version {version!r} (supported: {', '.join(driver.versions)})",
        )
    metadata = _metadata(where, spec.get("metadata"))
    refs = _secret_refs(where, spec.get("metadata"))
    _check_metadata(where, ctype, driver, metadata, refs)
    scopes = _scopes(where, doc.get("scopes"))
    store = _secret_store(where, doc, refs)
    return ComponentSpec(name, ctype, version, metadata, scopes, file, refs, store)


def _secret_refs(where: str, items: object) -> tuple[tuple[str, str, str], ...]:
    """`{name, secretKeyRef: {name, key}}` entries; key defaults to the secret name, as in daprd."""
    refs = []
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict) and "secretKeyRef" in item:
            field_name = f"spec.metadata.{item.get('name')}.secretKeyRef"
            ref = item["secretKeyRef"]
            if not isinstance(ref, dict):
                raise ResourceError(where, field_name, "expected a mapping with name and key")
            secret = _text(where, f"{field_name}.name", ref.get("name"))
            key = str(ref.get("key") or secret)
            refs.append((str(item.get("name")), secret, key))
    return tuple(refs)


def _secret_store(where: str, doc: Mapping[str, Any], refs: tuple[tuple[str, str, str], ...]) -> str:
    auth = doc.get("auth")
    store = auth.get("secretStore") if isinstance(auth, dict) else None
    if refs and not store:
        raise ResourceError(where, "auth.secretStore", "required when metadata uses secretKeyRef")
    return str(store or "")


def _mapping(where: str, doc: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = doc.get(key)
    if not isinstance(value, dict):
        raise ResourceError(where, key, "missing or not a mapping")
    return value


def _text(where: str, field_name: str, value: object) -> str:
    if value is None or value == "":
        raise ResourceError(where, field_name, "missing")
    if not isinstance(value, str | int | float):
        raise ResourceError(where, field_name, f"expected a string, got {type(value).__name__}")
    return str(value)


def _metadata(where: str, items: object) -> dict[str, str]:
    if items is None:
        return {}
    if not isinstance(items, list):
        raise ResourceError(where, "spec.metadata", "expected a list of {name, value} entries")
    metadata: dict[str, str] = {}
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise ResourceError(where, f"spec.metadata[{index}]", "expected a mapping with name and value")
        name = _text(where, f"spec.metadata[{index}].name", item.get("name"))
        field_name = f"spec.metadata.{name}"
        if "secretKeyRef" in item:
            continue  # resolved from the secret store when the component opens (_secret_refs)
        metadata[name] = _scalar(where, f"{field_name}.value", item.get("value"))
    return metadata


def _scalar(where: str, field_name: str, value: object) -> str:
    """Stringify a metadata value the way Go's YAML decoding would print it."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    raise ResourceError(where, field_name, f"expected a scalar, got {type(value).__name__}")


def _check_metadata(
    where: str,
    ctype: str,
    driver: Driver,
    metadata: Mapping[str, str],
    refs: Sequence[tuple[str, str, str]] = (),
) -> None:
    present = {key.lower() for key, value in metadata.items() if value != ""}
    present |= {ref[0].lower() for ref in refs}
    for required in driver.required:
        if required.lower() not in present:
            raise ResourceError(where, f"spec.metadata.{required}", f"required by {ctype} but missing")
    if refs:
        return  # checked once the secrets are resolved (_resolve_secrets)
    try:
        driver.check(metadata)
    except InvalidMetadata as exc:
        raise ResourceError(where, f"spec.metadata.{exc.field}", exc.problem) from None


def _scopes(where: str, scopes: object) -> tuple[str, ...]:
    if scopes is None:
        return ()
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        raise ResourceError(where, "scopes", "expected a list of app ids")
    return tuple(scopes)


async def open_resources(paths: Sequence[Path], *, app_id: str, base_dir: Path) -> Resources:
    """Load the specs and open the components in scope for `app_id`; all or nothing."""
    resources = Resources(specs=load_specs(paths), resiliency=load_resiliency(paths, app_id))
    resources.subscriptions = load_subscriptions(paths, app_id)
    # Secret stores first: other components' secretKeyRef values are read from them.
    ordered = sorted(resources.specs, key=lambda spec: DRIVERS[spec.type].kind != "secretstores")
    try:
        for spec in ordered:
            if spec.in_scope(app_id):
                await _open(resources, spec, app_id=app_id, base_dir=base_dir)
    except BaseException:
        await resources.close()
        raise
    return resources


async def _open(resources: Resources, spec: ComponentSpec, *, app_id: str, base_dir: Path) -> None:
    driver = DRIVERS[spec.type]
    spec = await _resolve_secrets(resources, spec, driver)
    kwargs: dict[str, Any] = {"app_id": app_id, "base_dir": base_dir}
    if driver.kind == "state":
        # daprd's `namespace` key prefix reads the NAMESPACE variable.
        kwargs["namespace"] = os.environ.get("NAMESPACE", "")
    try:
        component = await driver.open(spec.name, spec.metadata, **kwargs)
    except InvalidMetadata as exc:
        raise ResourceError(spec.source, f"spec.metadata.{exc.field}", exc.problem) from None
    except SidecarError as exc:
        raise ResourceError(spec.source, f"component {spec.name!r}", str(exc)) from None
    if driver.kind in ("bindings", "secretstores"):
        _register_h10(resources, spec.name, component)
    elif driver.kind == "state":
        resources.state_stores[spec.name] = cast(StateStore, component)
    else:
        resources.pubsubs[spec.name] = cast(PubSub, component)


def _register_h10(resources: Resources, name: str, component: object) -> None:
    if isinstance(component, InputBinding):
        resources.input_bindings[name] = component
    if isinstance(component, OutputBinding):
        resources.output_bindings[name] = component
    if not isinstance(component, InputBinding | OutputBinding):
        resources.secret_stores[name] = cast(SecretStore, component)


async def _resolve_secrets(resources: Resources, spec: ComponentSpec, driver: Driver) -> ComponentSpec:
    """The spec with its secretKeyRef values filled in from `auth.secretStore`, then checked."""
    if not spec.secret_refs:
        return spec
    store = resources.secret_stores.get(spec.secret_store)
    if store is None:
        problem = f"secret store {spec.secret_store!r} is not loaded"
        raise ResourceError(spec.source, "auth.secretStore", problem)
    metadata = dict(spec.metadata)
    for field_name, secret, key in spec.secret_refs:
        where = f"spec.metadata.{field_name}.secretKeyRef"
        try:
            values = await store.get(secret, {})
        except KeyError:
            problem = f"secret {secret!r} not found in {spec.secret_store}"
            raise ResourceError(spec.source, where, problem) from None
        if key not in values:
            raise ResourceError(spec.source, where, f"secret {secret!r} has no key {key!r}")
        metadata[field_name] = values[key]
    _check_metadata(str(spec.source), spec.type, driver, metadata)
    return replace(spec, metadata=metadata)
