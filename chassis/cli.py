"""The `chassis` command: run one app or a whole platform beside embedded sidecars, scaffold services.

`run` and `up` take the flags and the run file of `dapr run` / `dapr run -f`, so what works here works
with the Dapr CLI and real daprd too.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from chassis._errors import ChassisError

Handler = Callable[[argparse.Namespace], int]


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"port out of range 1-65535: {port}")
    return port


def _cmd_run(args: argparse.Namespace) -> int:
    from chassis._launch._run import RunOptions, main_run

    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    opts = RunOptions(
        app_id=args.app_id,
        command=command,
        cwd=Path.cwd(),
        app_port=args.app_port,
        app_protocol=args.app_protocol,
        dapr_grpc_port=args.dapr_grpc_port,
        dapr_http_port=args.dapr_http_port,
        resources=[Path(p) for p in args.resources_path],
    )
    return main_run(opts)


def _cmd_up(args: argparse.Namespace) -> int:
    from chassis._launch._up import main_up

    return main_up(Path(args.run_file))


def _cmd_demo(args: argparse.Namespace) -> int:
    from chassis._launch._demo import main_demo

    return main_demo(Path(args.run_file), Path(args.journey) if args.journey else None, args.timeout)


def _cmd_new(args: argparse.Namespace) -> int:
    from chassis._launch._new import InvalidName, NewOptions, new_service

    opts = NewOptions(
        name=args.name,
        project_dir=Path(args.project_dir),
        no_input=args.no_input,
        description=args.description,
        author=args.author,
    )
    try:
        new_service(opts)
    except InvalidName as err:
        # A usage error, refused before anything is written: argparse's exit status for bad arguments.
        print(f"chassis new: {err}", file=sys.stderr)
        return 2
    return 0


def _cmd_template_check(args: argparse.Namespace) -> int:
    from chassis._launch._new import template_drift, template_version

    project = Path(args.project_dir).resolve()
    drift = template_drift(project)
    for service, problem in drift:
        print(f"{service.relative_to(project)}: {problem or 'in step with the template'}")
    if not drift:
        print(f"no services under {project / 'services'}")
    version = template_version(project / "templates" / "service")
    if version is not None and version.dirty:
        # Commits are compared; once these changes are committed, every service above falls behind.
        print(f"note: {version.directory} has uncommitted changes, not part of commit {version.commit[:12]}")
    return 1 if any(problem for _, problem in drift) else 0


def _cmd_protoc(args: argparse.Namespace) -> int:
    from chassis._protogen import ensure_generated, find_project_root

    root = find_project_root(Path(args.project_dir))
    if root is None:
        where = Path(args.project_dir).resolve()
        print(f"chassis protoc: no proto/ folder at or above {where}", file=sys.stderr)
        return 1
    print(ensure_generated(root))
    return 0


def _add_run(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = commands.add_parser("run", help="run one app beside an embedded sidecar (as `dapr run`)")
    run.add_argument("--app-id", "-a", required=True, help="the app's id, used for service discovery")
    run.add_argument("--app-port", "-p", type=_port, help="the port the app listens on (default: a free one)")
    run.add_argument(
        "--app-protocol", "-P", default="grpc", help="how the sidecar calls the app (default: grpc)"
    )
    run.add_argument(
        "--dapr-grpc-port", "-G", type=_port, help="the sidecar's gRPC port (default: a free one)"
    )
    run.add_argument(
        "--dapr-http-port", "-H", type=_port, help="the sidecar's HTTP port (default: a free one)"
    )
    run.add_argument(
        "--resources-path",
        "-d",
        action="append",
        default=[],
        metavar="DIR",
        help="a folder of component YAML (repeatable; default: the project's dapr/components/embedded)",
    )
    run.add_argument("command", nargs=argparse.REMAINDER, help="-- the app's command line")
    run.set_defaults(handler=_cmd_run)


def _add_up_and_demo(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    up = commands.add_parser("up", help="run every app of a multi-app run file (as `dapr run -f`)")
    up.add_argument(
        "-f", "--run-file", default="dapr.yaml", help="the run file, or a folder holding dapr.yaml"
    )
    up.set_defaults(handler=_cmd_up)
    demo = commands.add_parser("demo", help="start the platform, run the learner journey, stop everything")
    demo.add_argument("-f", "--run-file", default="dapr.yaml", help="the run file (default: dapr.yaml)")
    demo.add_argument("--journey", help="the journey script (default: examples/learner_journey.py)")
    demo.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for the platform")
    demo.set_defaults(handler=_cmd_demo)


def _add_new_and_protoc(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    new = commands.add_parser("new", help="scaffold a service from templates/service")
    new.add_argument("name", help="lowercase letters, digits and hyphens, e.g. quiz-analytics")
    new.add_argument("--no-input", action="store_true", help="do not prompt; use defaults")
    new.add_argument("--project-dir", default=".", help="the project holding services/, proto/, dapr.yaml")
    new.add_argument("--description", help="one line saying what the service is for")
    new.add_argument("--author", help="who maintains it")
    new.set_defaults(handler=_cmd_new)
    protoc = commands.add_parser("protoc", help="compile proto/ into .chassis/gen and print that folder")
    protoc.add_argument("--project-dir", default=".", help="a folder at or below the project root")
    protoc.set_defaults(handler=_cmd_protoc)
    check = commands.add_parser(
        "template-check", help="fail when a service's .cruft.json is behind templates/service's last commit"
    )
    check.add_argument("--project-dir", default=".", help="the project holding services/ and templates/")
    check.set_defaults(handler=_cmd_template_check)


def _cmd_trace(args: argparse.Namespace) -> int:
    from chassis._trace_view import default_trace_file, main_trace

    return main_trace(args.trace_id, Path(args.file) if args.file else default_trace_file())


def _add_trace(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    trace = commands.add_parser("trace", help="draw one trace of the span file as a waterfall")
    trace.add_argument("trace_id", metavar="TRACE_ID", help="32 hex digits (every JSON log line carries one)")
    trace.add_argument(
        "--file",
        metavar="PATH",
        help="the span file (default: $CHASSIS_TRACE_FILE, else .chassis/traces.jsonl)",
    )
    trace.set_defaults(handler=_cmd_trace)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chassis", description=__doc__.splitlines()[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="subcommand", required=True, metavar="COMMAND")
    _add_run(commands)
    _add_up_and_demo(commands)
    _add_new_and_protoc(commands)
    _add_trace(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `chassis` console script; returns the process exit status."""
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except ChassisError as err:
        print(f"chassis {args.subcommand}: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
