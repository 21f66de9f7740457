"""Sidecar metrics (API calls, latency, deliveries, redeliveries, dead-letters) in Prometheus text format.

Instruments come from the OpenTelemetry metrics API, so they cost nothing until `serve_metrics` installs
a MeterProvider with the Prometheus reader (only when `--metrics-port` is given); `GET /metrics` on
that port then answers what daprd's metrics endpoint would, under daprd's metric names where one exists.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from aiohttp import web
from opentelemetry import metrics

_F = TypeVar("_F", bound=Callable[..., Awaitable[Any]])

__all__ = ["metered", "record_call", "record_dead_letter", "record_delivery", "serve_metrics"]

log = logging.getLogger("chassis.sidecar.metrics")

_meter = metrics.get_meter("chassis.sidecar")
_calls = _meter.create_counter(
    "dapr_grpc_io_server_completed_rpcs", description="Dapr API calls completed, by method and status"
)
_latency = _meter.create_histogram(
    "dapr_grpc_io_server_server_latency", unit="ms", description="Dapr API call latency"
)
_deliveries = _meter.create_counter(
    "dapr_component_pubsub_ingress_count", description="Pub/sub deliveries to the app, by outcome"
)
_redeliveries = _meter.create_counter(
    "chassis_pubsub_redeliveries", description="Pub/sub deliveries of a message seen before"
)
_dead_letters = _meter.create_counter(
    "chassis_pubsub_dead_letters", description="Messages sent to a dead-letter topic"
)


def record_call(method: str, status: str, millis: float, app_id: str) -> None:
    """One finished Dapr API call (gRPC status name, e.g. OK, ABORTED)."""
    attributes = {"app_id": app_id, "grpc_server_method": method, "grpc_server_status": status}
    _calls.add(1, attributes)
    _latency.record(millis, attributes)


def metered(rpc: str, handler: _F) -> _F:
    """Count and time a Dapr API servicer method `(self, request, context)`; self.ctx.app_id labels it."""

    @functools.wraps(handler)
    async def wrapper(self: Any, request: Any, context: Any) -> Any:
        started = time.perf_counter()
        status = "OK"
        try:
            return await handler(self, request, context)
        except BaseException:
            code = context.code()  # set by context.abort before it raised
            status = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
            raise
        finally:
            millis = (time.perf_counter() - started) * 1000
            record_call(rpc, status, millis, getattr(self.ctx, "app_id", ""))

    return wrapper  # type: ignore[return-value]


def record_delivery(pubsub: str, topic: str, outcome: str, attempts: int) -> None:
    """One delivery attempt settled: outcome ack / retry / drop / requeue; `attempts` counts this one."""
    status = "success" if outcome == "ack" else outcome  # daprd's process_status values
    attributes = {"component": pubsub, "topic": topic, "process_status": status}
    _deliveries.add(1, attributes)
    if attempts > 1:
        _redeliveries.add(1, {"component": pubsub, "topic": topic})


def record_dead_letter(pubsub: str, topic: str, dead_letter_topic: str) -> None:
    """A message moved to its subscription's dead-letter topic."""
    _dead_letters.add(1, {"component": pubsub, "topic": topic, "dead_letter_topic": dead_letter_topic})


async def serve_metrics(host: str, port: int) -> web.AppRunner:
    """Install the Prometheus-backed MeterProvider and serve `GET /metrics`; the caller cleans up."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

    metrics.set_meter_provider(MeterProvider(metric_readers=[PrometheusMetricReader()]))

    async def handler(request: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(REGISTRY))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    app = web.Application()
    app.router.add_get("/metrics", handler)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError:
        await runner.cleanup()
        raise
    log.info("metrics listening on %s:%d/metrics", host, port)
    return runner
