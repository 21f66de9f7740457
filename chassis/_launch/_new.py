"""`chassis new`: scaffold a service from `templates/service`, move its contract into `proto/`, and
register it in the project's multi-app run file so `chassis up` starts it at once.

Every service records the template commit it was made from in `.cruft.json` (cruft's format), so
`chassis template-check` can say which services have not taken a later change of the template.
"""

from __future__ import annotations

import importlib.metadata
import json
import keyword
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

import chassis
from chassis._errors import ConfigError
from chassis._launch import _runfile

# A DNS-1123 label (a Kubernetes name and a Dapr app id) that also makes a Python package once `-` is `_`.
NAME_RULE = re.compile(r"[a-z][a-z0-9-]{1,39}")
# Packages every service imports, and folders of the project that pytest or `python -m` could pick up.
RESERVED = frozenset(
    {"chassis", "mooc", "dapr", "grpc", "google", "tests", "test", "services", "benchmarks", "examples"}
)
DEFAULT_DESCRIPTION = "A MOOC domain service built on mooc-chassis."
DEFAULT_AUTHOR = "MOOC platform team"
CRUFT_FILE = ".cruft.json"
RUN_FILE_HEADER = """\
# Multi-app run file in Dapr's `dapr run -f` format: `chassis up -f dapr.yaml` starts every app below
# beside its own sidecar. Ports left out are picked free at start.
version: 1
"""


def template_dir() -> Path:
    """The service template, beside the `chassis` package (a checkout or an editable install)."""
    return Path(chassis.__file__).resolve().parents[1] / "templates" / "service"


class InvalidName(ConfigError):
    """A name `chassis new` refuses; nothing has been written when it is raised (the CLI exits 2)."""

    def __init__(self, name: str, why: str) -> None:
        super().__init__(f"invalid service name {name!r}: {why}")


@dataclass(frozen=True)
class NewOptions:
    name: str
    project_dir: Path
    no_input: bool = False
    description: str | None = None
    author: str | None = None
    template: Path | None = None  # default: the template beside the chassis package (template_dir())


def check_name(name: str, project: Path | None = None) -> str:
    """The service's Python package name (its slug); InvalidName saying what is wrong with `name`.

    With `project`, a name already taken there (a folder under services/, an app id in dapr.yaml) is
    refused too.
    """
    if not NAME_RULE.fullmatch(name) or name.endswith("-") or "--" in name:
        raise InvalidName(
            name,
            "use 2-40 lowercase letters, digits and single hyphens, starting with a letter and ending "
            "with a letter or digit (e.g. quiz-analytics), so it is a Dapr app id, a Kubernetes name "
            "and a Python package",
        )
    slug = name.replace("-", "_")
    if keyword.iskeyword(slug):
        raise InvalidName(name, f"{slug!r} is a Python keyword, so it cannot be a package name")
    if project is not None:
        _check_free(name, slug, project)
    shadowed = _shadows(slug)
    if shadowed:
        raise InvalidName(name, f"the package {slug!r} would shadow {shadowed}; choose another name")
    return slug


def _check_free(name: str, slug: str, project: Path) -> None:
    target = project / "services" / slug
    if target.exists():
        raise InvalidName(name, f"{target} already exists; choose another name or remove it")
    run_file = project / _runfile.DEFAULT_NAME
    if run_file.is_file():
        apps = _load_yaml(run_file).get("apps") or []
        if any(isinstance(app, dict) and app.get("appID") == name for app in apps):
            raise InvalidName(name, f"{run_file} already registers the app id '{name}'")


def _shadows(slug: str) -> str | None:
    """What importing `slug` would hide instead of the service (a service runs as `python -m slug`)."""
    if slug in RESERVED:
        return "a package every service imports, or a folder of the project"
    if slug in sys.stdlib_module_names or slug in sys.builtin_module_names:
        return "the standard library module of that name"
    installed = importlib.metadata.packages_distributions().get(slug)
    if installed:
        return f"the installed module of that name (from {', '.join(sorted(set(installed)))})"
    return None


def pascal(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("-"))


def new_service(opts: NewOptions) -> Path:
    """Generate the service; return its folder. Everything is checked before anything is written."""
    project = opts.project_dir.resolve()
    slug = check_name(opts.name, project)
    target = project / "services" / slug
    run_file = project / _runfile.DEFAULT_NAME
    context = _context(opts, slug)
    template = opts.template or template_dir()
    rendered = _render(template, context, project / "services")
    proto = _move_proto(target, project, slug)
    _register(run_file, opts.name, slug, project)
    print(f"created {target}")
    print(f"contract {proto}")
    print(f"registered '{opts.name}' in {run_file}")
    _record_template(template, target, rendered)
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


def _render(template: Path, context: dict[str, str], output_dir: Path) -> dict[str, Any]:
    """Generate the service as `cruft create` does; return the full context cookiecutter rendered with."""
    # Slow imports, only needed here; the user's cookiecutter config is not read (as with --no-input).
    from cookiecutter.generate import generate_context, generate_files
    from cookiecutter.prompt import prompt_for_config

    full = generate_context(context_file=str(template / "cookiecutter.json"), extra_context=context)
    full["cookiecutter"] = prompt_for_config(full, no_input=True)
    output_dir.mkdir(parents=True, exist_ok=True)
    generate_files(repo_dir=str(template), context=full, output_dir=str(output_dir))
    return dict(full["cookiecutter"])


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


@dataclass(frozen=True)
class TemplateVersion:
    """Where the template lives in git, and the commit that last changed it (what cruft records)."""

    repo: Path
    directory: str
    commit: str
    dirty: bool
    shallow: bool


def template_version(template: Path | None = None) -> TemplateVersion | None:
    """The template's version; None when it is not in a git checkout (an installed wheel, a copied tree)."""
    template = (template or template_dir()).resolve()
    top = _git(template, "rev-parse", "--show-toplevel")
    if not top or not template.is_dir():
        return None
    repo = Path(top).resolve()
    directory = template.relative_to(repo).as_posix()
    commit = _git(repo, "log", "-1", "--format=%H", "--", directory)
    if not commit:
        return None
    dirty = bool(_git(repo, "status", "--porcelain", "--", directory))
    shallow = _git(repo, "rev-parse", "--is-shallow-repository") == "true"
    return TemplateVersion(repo, directory, commit, dirty, shallow)


def _git(cwd: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def cruft_record(service_dir: Path, context: dict[str, Any], version: TemplateVersion) -> dict[str, Any]:
    """The `.cruft.json` that `cruft create --directory` would write, pinned to the template's commit.

    cruft clones `template` and compares commits of the whole repository, so a service inside the
    template's own repository names it relatively ("../.."): that holds in any clone, and cruft's
    commands then run from the service folder (`cruft update --checkout <commit>`).
    """
    service_dir = service_dir.resolve()
    inside = service_dir.is_relative_to(version.repo)
    template = os.path.relpath(version.repo, service_dir) if inside else str(version.repo)
    cookiecutter = {**context, "_template": template, "_commit": version.commit}
    return {
        "template": template,
        "commit": version.commit,
        "checkout": None,
        "context": {"cookiecutter": cookiecutter},
        "directory": version.directory,
    }


def write_cruft_file(service_dir: Path, record: dict[str, Any]) -> Path:
    path = service_dir / CRUFT_FILE
    # cruft's own layout (utils.cruft.json_dumps), so its commands rewrite it without noise in the diff.
    path.write_text(json.dumps(record, ensure_ascii=False, indent=2, separators=(",", ": ")) + "\n")
    return path


def _record_template(template: Path, service_dir: Path, context: dict[str, Any]) -> None:
    version = template_version(template)
    if version is None:
        print(f"not recorded: {template} is not in a git checkout, so it has no commit to record")
        return
    path = write_cruft_file(service_dir, cruft_record(service_dir, context, version))
    print(f"template commit {version.commit[:12]} recorded in {path}")
    if version.dirty:
        print(f"note: {version.directory} has uncommitted changes, which that commit does not include")


def template_drift(project: Path) -> list[tuple[Path, str | None]]:
    """Each service of `project` with what keeps it from the template's current commit (None: in step).

    In step means cruft's meaning: `.cruft.json` records the commit that last changed the template, as
    `cruft check --checkout <that commit>` run in the service folder would confirm. `cruft update`
    brings a service there.
    """
    project = project.resolve()
    local = project / "templates" / "service"
    version = template_version(local if local.is_dir() else None)
    if version is None:
        raise ConfigError(f"{local}: not a template tracked in a git checkout; nothing to compare with")
    if version.shallow:
        raise ConfigError(
            f"{version.repo}: a shallow clone hides when the template last changed; "
            "fetch the history (git fetch --unshallow, or fetch-depth: 0 in CI)"
        )
    services = sorted(p for p in (project / "services").glob("*/pyproject.toml"))
    return [(p.parent, _drift(p.parent, version)) for p in services]


def _drift(service: Path, version: TemplateVersion) -> str | None:
    path = service / CRUFT_FILE
    if not path.is_file():
        return f"no {CRUFT_FILE}: not linked to the template (run `cruft link` there, or regenerate it)"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        commit, directory = record["commit"], record.get("directory")
    except (ValueError, KeyError, TypeError) as err:
        return f"{CRUFT_FILE} is not a cruft record ({err!r})"
    if directory != version.directory:
        return f"records the template folder {directory!r}, not {version.directory!r}"
    if commit != version.commit:
        return (
            f"records template commit {str(commit)[:12]}, "
            f"but {version.directory} is at {version.commit[:12]}; "
            f'take the change with `cd {service} && cruft update --checkout "{version.commit}"`'
        )
    return None
