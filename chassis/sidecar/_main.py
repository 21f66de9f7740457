"""`python -m chassis.sidecar`: daprd's flags, start-up, and a graceful stop.

A start-up failure (bad resource YAML, port in use, unsupported flag value) exits 1 with one line on
stderr and no traceback; logs go to stdout, as daprd's do. SIGTERM, SIGINT or the Shutdown API stop
it gracefully: in-flight deliveries finish, servers stop, the app is unregistered, stores close, exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import grpc.aio
from aiohttp import web
from dapr.proto.runtime.v1 import dapr_pb2_grpc
from opentelemetry.trace import Tracer

from chassis._errors import ConfigError
from chassis.sidecar import _app_health, _auth, _limits
from chassis.sidecar._app_grpc import GrpcApp
from chassis.sidecar._bindings import InputBindings
from chassis.sidecar._delivery import AppChannel, Deliverer
from chassis.sidecar._errors import ResourceError, SidecarError
from chassis.sidecar._grpc_api import ApiContext, DaprApi, DecodeErrors, SubscriptionInfo
from chassis.sidecar._http_api import HttpApi
from chassis.sidecar._http_app import HttpApp
from chassis.sidecar._metrics import serve_metrics
from chassis.sidecar._outbox import start_outbox
from chassis.sidecar._proxy import AppProxy
from chassis.sidecar._registry import AppRegistry, default_registry_path
from chassis.sidecar._resources import Resources, open_resources
from chassis.sidecar._tracing import flush_tracing, setup_tracing

log = logging.getLogger("chassis.sidecar")

HOST = "127.0.0.1"
APP_PROTOCOLS = ("grpc", "http")
DRAIN_GRACE = 10.0  # seconds in-flight deliveries get to finish on stop
SERVER_GRACE = 5.0  # seconds in-flight API calls get to finish on stop
_LOG_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
}
_LOG_LEVELS |= {"error": logging.ERROR, "fatal": logging.CRITICAL}


class StartupError(Exception):
    """A reason not to start, told to the user in one line."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m chassis.sidecar", description="The embedded Dapr-compatible sidecar of mooc-chassis."
    )
    parser.add_argument("--app-id", required=True, help="the app's Dapr id")
    parser.add_argument(
        "--app-port", type=int, help="the app's gRPC port (enables delivery and healthz gating)"
    )
    parser.add_argument("--app-protocol", default="grpc", help="grpc or http (default %(default)s)")
    parser.add_argument("--app-host", default=HOST, help="the app's host (default %(default)s)")
    parser.add_argument("--dapr-grpc-port", type=int, default=50001, help="default %(default)s")
    parser.add_argument("--dapr-http-port", type=int, default=3500, help="default %(default)s")
    parser.add_argument(
        "--resources-path",
        "--components-path",
        action="append",
        dest="resources_path",
        help="Dapr resource YAML folder or file; repeatable (default ./components, else ~/.dapr/components)",
    )
    parser.add_argument(
        "--log-level", default="info", choices=sorted(_LOG_LEVELS), help="default %(default)s"
    )
    parser.add_argument(
        "--dapr-listen-addresses",
        default=_auth.DEFAULT_LISTEN,
        help="comma-separated hosts the APIs listen on (default %(default)s: loopback only)",
    )
    parser.add_argument(
        "--max-body-size",
        type=_body_size,
        default=_limits.DEFAULT_MAX_BODY_SIZE,
        help="largest request body/message accepted, e.g. 4Mi, 16Mi (default %(default)s)",
    )
    parser.add_argument(
        "--metrics-port", type=int, help="serve Prometheus metrics on /metrics here (default: no metrics)"
    )
    _app_health.add_arguments(parser)
    return parser.parse_args(argv)


def _body_size(text: str) -> int:
    try:
        return _limits.parse_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _resource_paths(given: list[str] | None) -> list[Path]:
    if given:
        return [Path(path).expanduser() for path in given]
    for default in (Path("components"), Path.home() / ".dapr" / "components"):
        if default.is_dir():
            return [default]
    raise StartupError(
        "no resources: pass --resources-path (./components and ~/.dapr/components do not exist)"
    )


def _check_args(args: argparse.Namespace) -> None:
    if args.app_protocol not in APP_PROTOCOLS:
        raise StartupError(
            f"--app-protocol {args.app_protocol} is not supported by the embedded sidecar (use grpc or http)"
        )
    for flag, port in (("--dapr-grpc-port", args.dapr_grpc_port), ("--dapr-http-port", args.dapr_http_port)):
        _check_port_free(flag, port)


def _check_port_free(flag: str, port: int) -> None:
    """Fail with a clear line before a server half-starts (gRPC would otherwise share it via SO_REUSEPORT)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR as the servers use it: TIME_WAIT leftovers of a killed sidecar are no conflict,
        # a live listener is.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError as err:
            raise StartupError(f"{flag} {port}: cannot listen on {HOST}:{port}: {err.strerror}") from None


class Sidecar:
    """One running sidecar: components, API servers, registration and delivery, stopped in reverse order."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.stopping = asyncio.Event()
        self._stack = contextlib.AsyncExitStack()
        self.app_address = f"{args.app_host}:{args.app_port}" if args.app_port else None
        self._deliverer: Deliverer | None = None

    async def start(self) -> None:
        """Bring everything up; on failure whatever started is stopped again before raising."""
        started = time.monotonic()
        try:
            await self._start()
        except (SidecarError, OSError) as err:  # e.g. the registry file cannot be opened
            await self._stack.aclose()
            raise StartupError(str(err)) from None
        except BaseException:
            await self._stack.aclose()
            raise
        elapsed = (time.monotonic() - started) * 1000
        log.info("dapr initialized. Status: Running. Init Elapsed %.0fms", elapsed)

    async def _start(self) -> None:
        args = self.args
        try:
            tracer = setup_tracing(args.app_id)
        except ConfigError as err:
            raise StartupError(str(err)) from None
        self._stack.callback(flush_tracing)
        try:
            paths = _resource_paths(args.resources_path)
            resources = await open_resources(paths, app_id=args.app_id, base_dir=Path.cwd())
        except ResourceError as err:
            raise StartupError(str(err)) from None
        self._stack.push_async_callback(resources.close)
        log.info(
            "loaded components: %s", ", ".join(f"{s.name} ({s.type}/{s.version})" for s in resources.specs)
        )
        registry = AppRegistry(default_registry_path(Path.cwd()))
        self._stack.push_async_callback(registry.close)
        app_ready = asyncio.Event() if self.app_address else None
        ctx = ApiContext(
            app_id=args.app_id,
            resources=resources,
            tracer=tracer,
            request_shutdown=self.stopping.set,
            app_port=args.app_port,
            app_protocol=args.app_protocol,
            app_host=args.app_host,
            subscriptions=self._subscriptions,
        )
        ctx.deliverer = self._make_deliverer(resources, tracer, app_ready)  # streams bind to it
        ctx.outbox = await start_outbox(self._stack, resources, app_id=args.app_id)  # before serving
        await self._serve_grpc(ctx, registry)
        await self._serve_http(ctx, app_ready)
        ctx.registry = registry  # InvokeService looks other apps up there
        await self._register(registry)
        self._start_bindings(resources, tracer)
        await self._serve_metrics()
        self._start_delivery()

    async def _serve_metrics(self) -> None:
        """daprd serves metrics on :9090 by default; the embedded sidecar only given --metrics-port."""
        port = self.args.metrics_port
        if port is None:
            return
        try:
            runner = await serve_metrics(HOST, port)
        except OSError as err:
            problem = f"cannot listen on {HOST}:{port}: {err.strerror}"
            raise StartupError(f"--metrics-port {port}: {problem}") from None
        self._stack.push_async_callback(runner.cleanup)

    def _start_bindings(self, resources: Resources, tracer: Tracer) -> None:
        """Input bindings feed the app (gRPC OnBindingEvent or HTTP POST /<binding>)."""
        bindings = InputBindings(
            resources=resources,
            address=self.app_address,
            tracer=tracer,
            app_id=self.args.app_id,
            protocol=self.args.app_protocol,
        )
        bindings.start()
        self._stack.push_async_callback(bindings.stop)

    def _subscriptions(self) -> Sequence[SubscriptionInfo]:
        return self._deliverer.subscriptions() if self._deliverer else ()

    def _make_deliverer(self, resources: Resources, tracer: Tracer, ready: asyncio.Event | None) -> Deliverer:
        app: AppChannel | None = None
        if self.app_address is not None:
            app = HttpApp(self.app_address) if self.args.app_protocol == "http" else GrpcApp(self.app_address)
        self._deliverer = Deliverer(
            app_id=self.args.app_id,
            resources=resources,
            tracer=tracer,
            app=app,
            declared=resources.subscriptions,
            ready=ready,
            health=_app_health.from_args(self.args, self.app_address),
        )
        return self._deliverer

    def _start_delivery(self) -> None:
        assert self._deliverer is not None
        self._deliverer.start()
        # Stopped first (last in): handlers may still publish or save state while they drain.
        self._stack.push_async_callback(self._deliverer.stop, DRAIN_GRACE)

    async def _serve_grpc(self, ctx: ApiContext, registry: AppRegistry) -> None:
        # so_reuseport off: a second sidecar on the same port must fail, not silently share it.
        token = _auth.api_token()
        server = grpc.aio.server(
            options=[("grpc.so_reuseport", 0), *_limits.grpc_options(self.args.max_body_size)],
            interceptors=[DecodeErrors(), *([_auth.TokenInterceptor(token)] if token else [])],
        )
        dapr_pb2_grpc.add_DaprServicer_to_server(DaprApi(ctx), server)  # type: ignore[no-untyped-call]
        proxy = AppProxy(
            registry=registry,
            tracer=ctx.tracer,
            app_id=ctx.app_id,
            app_address=self.app_address,
            resiliency=ctx.resources.resiliency,
        )
        server.add_generic_rpc_handlers((proxy,))  # after the Dapr service: only unknown methods reach it
        for host in _auth.listen_hosts(self.args.dapr_listen_addresses):
            address = _auth.host_port(host, self.args.dapr_grpc_port)
            try:
                server.add_insecure_port(address)
            except RuntimeError:
                raise StartupError(
                    f"--dapr-grpc-port {self.args.dapr_grpc_port}: cannot listen on {address}"
                ) from None
        await server.start()
        self._stack.push_async_callback(proxy.close)
        self._stack.push_async_callback(server.stop, SERVER_GRACE)
        log.info("gRPC API listening on %s", self.args.dapr_listen_addresses)

    async def _serve_http(self, ctx: ApiContext, app_ready: asyncio.Event | None) -> None:
        api = HttpApi(ctx, app_ready, api_token=_auth.api_token(), max_body_size=self.args.max_body_size)
        runner = web.AppRunner(api.application(), access_log=None, handle_signals=False)
        await runner.setup()
        self._stack.push_async_callback(runner.cleanup)
        port = self.args.dapr_http_port
        for host in _auth.listen_hosts(self.args.dapr_listen_addresses):
            site = web.TCPSite(runner, host, port)
            try:
                await site.start()
            except OSError as err:
                raise StartupError(
                    f"--dapr-http-port {port}: cannot listen on {host}:{port}: {err.strerror}"
                ) from None
        log.info("HTTP API listening on %s port %d", self.args.dapr_listen_addresses, port)

    async def _register(self, registry: AppRegistry) -> None:
        if self.app_address is None:
            return
        await registry.register(self.args.app_id, self.app_address)
        self._stack.push_async_callback(registry.unregister, self.args.app_id, self.app_address)
        log.info("registered app %s at %s in %s", self.args.app_id, self.app_address, registry.path)

    def watch_signals(self) -> None:
        """SIGTERM/SIGINT ask for a graceful stop from now on, also while starting.

        Installed before anything answers: a supervisor that sees the sidecar healthy and stops it at
        once must get the drain and the registry clean-up, not the default action (death by signal).
        """
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stopping.set)

    async def run_until_stopped(self) -> None:
        """Wait for SIGTERM/SIGINT or the Shutdown API, then stop everything."""
        try:
            await self.stopping.wait()
            log.info("stopping: draining deliveries and closing components")
        finally:
            await self._stack.aclose()
        log.info("stopped")


async def _serve(args: argparse.Namespace) -> int:
    _check_args(args)
    sidecar = Sidecar(args)
    sidecar.watch_signals()
    await sidecar.start()
    await sidecar.run_until_stopped()
    return 0


def _configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(_LOG_LEVELS[level])
    for noisy in ("grpc", "asyncio", "aiohttp"):  # their debug output drowns ours
        logging.getLogger(noisy).setLevel(max(_LOG_LEVELS[level], logging.INFO))


def main(argv: list[str] | None = None) -> int:
    """Run the sidecar until it is stopped; the process exit code."""
    args = parse_args(argv)
    _configure_logging(args.log_level)
    try:
        return asyncio.run(_serve(args))
    except StartupError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers were installed
        return 0
