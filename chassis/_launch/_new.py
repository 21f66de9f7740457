"""`chassis new`: scaffold a service from `templates/service`, move its contract into `proto/`, and
register it in the project's multi-app run file so `chassis up` starts it at once.
"""

from __future__ import annotations

import keyword
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

import chassis
from chassis._errors import ConfigError
from chassis._launch import _runfile

NAME_RULE = re.compile(r"[a-z][a-z0-9-]{1,39}")
# Names whose package would shadow something every service imports.
RESERVED = frozenset({"chassis", "mooc", "dapr", "grpc", "google", "tests", "test", "services"})
DEFAULT_DESCRIPTION = "A MOOC domain service built on mooc-chassis."
DEFAULT_AUTHOR = "MOOC platform team"
RUN_FILE_HEADER = """\
# Multi-app run file in Dapr's `dapr run -f` format: `chassis up -f dapr.yaml` starts every app below
# beside its own sidecar. Ports left out are picked free at start.
version: 1
"""


def template_dir() -> Path:
    """The service template, beside the `chassis` package (a checkout or an editable install)."""
    return Path(chassis.__file__).resolve().parents[1] / "templates" / "service"


@dataclass(frozen=True)
class NewOptions:
    name: str
    project_dir: Path
    no_input: bool = False
    description: str | None = None
    author: str | None = None


def check_name(name: str) -> str:
    """The service's Python package name (its slug); ConfigError saying what is wrong with `name`."""
    if not NAME_RULE.fullmatch(name):
        raise ConfigError(
            f"invalid service name {name!r}: use 2-40 lowercase letters, digits and hyphens, "
            "starting with a letter (e.g. quiz-analytics)"
        )
    slug = name.replace("-", "_")
    if slug in RESERVED or keyword.iskeyword(slug) or name.endswith("-") or "--" in name:
        raise ConfigError(f"invalid service name {name!r}: reserved, or not usable as a Python package name")
    return slug


def pascal(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("-"))


def new_service(opts: NewOptions) -> Path:
    """Generate the service; return its folder. Everything is checked before anything is written."""
    slug = check_name(opts.name)
    project = opts.project_dir.resolve()
    target = project / "services" / slug
    if target.exists():
        raise ConfigError(f"{target}: already exists; choose another name or remove it")
    run_file = project / _runfile.DEFAULT_NAME
    _check_not_registered(run_file, opts.name)
    context = _context(opts, slug)
    _render(context, project / "services")
    proto = _move_proto(target, project, slug)
    _register(run_file, opts.name, slug, project)
    print(f"created {target}")
    print(f"contract {proto}")
    print(f"registered '{opts.name}' in {run_file}")
    return target


def _context(opts: NewOptions, slug: str) -> dict[str, str]:
    description = opts.description or _ask("description", DEFAULT_DESCRIPTION, opts.no_input)
    author = opts.author or _ask("author", DEFAULT_AUTHOR, opts.no_input)
    return {
        "service_name": opts.name,
        "service_slug": slug,
        "service_pascal": pascal(opts.name),
        "description": description,
        "author": author,
    }


def _ask(what: str, default: str, no_input: bool) -> str:
    """Prompt on a terminal; the name is never asked again, so it cannot escape validation."""
    if no_input or not sys.stdin.isatty():
        return default
    answer = input(f"{what} [{default}]: ").strip()
    return answer or default


def _render(context: dict[str, str], output_dir: Path) -> None:
    from cookiecutter.main import cookiecutter  # slow import, only needed here

    output_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="chassis-new-") as scratch:
        # Keep cookiecutter's replay and cache files out of the user's home directory.
        config = Path(scratch) / "cookiecutter.yaml"
        config.write_text(yaml.safe_dump({"cookiecutters_dir": scratch, "replay_dir": scratch}))
        cookiecutter(
            str(template_dir()),
            no_input=True,
            extra_context=context,
            output_dir=str(output_dir),
            config_file=str(config),
        )


def _move_proto(service_dir: Path, project: Path, slug: str) -> Path:
    """Contracts live in the project's `proto/`; an existing one (the lead's, say) is kept, not replaced."""
    relative = Path("proto") / "mooc" / slug / "v1" / f"{slug}.proto"
    generated = service_dir / relative
    destination = project / relative
    if destination.exists():
        print(f"kept the existing contract {destination}")
    else:
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(generated), destination)
    shutil.rmtree(service_dir / "proto")
    return destination


def _check_not_registered(run_file: Path, name: str) -> None:
    if not run_file.is_file():
        return
    apps = _load_yaml(run_file).get("apps") or []
    if any(isinstance(app, dict) and app.get("appID") == name for app in apps):
        raise ConfigError(f"{run_file}: apps: '{name}' is already registered")


def _load_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: (top level): expected a mapping with version, common and apps")
    return data


def _app_entry(name: str, slug: str) -> dict[str, Any]:
    return {
        "appID": name,
        "appDirPath": f"./services/{slug}",
        "appProtocol": "grpc",
        "command": ["python", "-m", slug],
    }


def _entry_text(entry: dict[str, Any], indent: str) -> str:
    lines = [
        f"{indent}- appID: {entry['appID']}",
        f"{indent}  appDirPath: {entry['appDirPath']}",
        f"{indent}  appProtocol: {entry['appProtocol']}",
        f"{indent}  command: [{', '.join(entry['command'])}]",
    ]
    return "\n".join(lines) + "\n"


def _register(run_file: Path, name: str, slug: str, project: Path) -> None:
    """Append the app to `apps:` keeping the file's comments; rewrite it only when appending cannot work."""
    entry = _app_entry(name, slug)
    if not run_file.is_file():
        run_file.write_text(_new_run_file(project) + _entry_text(entry, "  "), encoding="utf-8")
        return
    text = run_file.read_text(encoding="utf-8")
    appended = _append_to_apps(text, entry)
    if appended is None or not _registers(appended, name):
        data = _load_yaml(run_file)
        data["apps"] = [*(data.get("apps") or []), entry]
        appended = yaml.safe_dump(data, sort_keys=False)
    run_file.write_text(appended, encoding="utf-8")


def _new_run_file(project: Path) -> str:
    embedded = project / "dapr" / "components" / "embedded"
    common = "common:\n  resourcesPath: ./dapr/components/embedded\n" if embedded.is_dir() else ""
    return RUN_FILE_HEADER + common + "apps:\n"


def _append_to_apps(text: str, entry: dict[str, Any]) -> str | None:
    """`text` with the entry added, when `apps:` is the file's last block; None otherwise."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if re.fullmatch(r"apps:\s*(#.*)?", line)]
    if len(starts) != 1:
        return None
    after = lines[starts[0] + 1 :]
    if any(re.match(r"[A-Za-z_]", line) for line in after):
        return None
    item = next((re.match(r"(\s*)- ", line) for line in after if re.match(r"\s*- ", line)), None)
    indent = item.group(1) if item else "  "
    return text.rstrip("\n") + "\n" + _entry_text(entry, indent)


def _registers(text: str, name: str) -> bool:
    try:
        apps = (yaml.safe_load(text) or {}).get("apps") or []
    except yaml.YAMLError:
        return False
    return bool(apps) and isinstance(apps[-1], dict) and apps[-1].get("appID") == name
