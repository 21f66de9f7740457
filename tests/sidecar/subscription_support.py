"""Helpers for the subscription tests: a test app beside its sidecar, deliveries read from a JSON-lines file.

The app (tests/sidecar/apps/<script>) records every delivery it handles; tests wait on those records.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from dapr.proto.runtime.v1 import dapr_pb2_grpc, metadata_pb2
from sidecar_support import (
    Process,
    RunningSidecar,
    app_process,
    fast_components,
    free_port,
    port_accepts,
    read_jsonl,
    sidecar_process,
    wait_until,
)


@dataclass
class Pair:
    """A test app and its sidecar, sharing a tmp directory."""

    sidecar: RunningSidecar
    app: Process
    records: Path

    def deliveries(self, **match: Any) -> list[dict[str, Any]]:
        return [r for r in read_jsonl(self.records) if all(r.get(k) == v for k, v in match.items())]

    def wait_deliveries(self, count: int, timeout: float = 15.0, **match: Any) -> list[dict[str, Any]]:
        def enough() -> list[dict[str, Any]] | None:
            found = self.deliveries(**match)
            return found if len(found) >= count else None

        found: list[dict[str, Any]] = wait_until(
            enough, timeout=timeout, what=f"{count} deliveries of {match}"
        )
        return found


def grpc_metadata(sidecar: RunningSidecar) -> metadata_pb2.GetMetadataResponse:
    """The sidecar's GetMetadata answer, read with the raw generated stub (to see every field)."""
    with grpc.insecure_channel(f"127.0.0.1:{sidecar.grpc_port}") as channel:
        stub = dapr_pb2_grpc.DaprStub(channel)  # type: ignore[no-untyped-call]
        reply: metadata_pb2.GetMetadataResponse = stub.GetMetadata(
            metadata_pb2.GetMetadataRequest(), timeout=5
        )
        return reply


def start_pair(
    workdir: Path,
    started: list[Process],
    *,
    script: str,
    app_id: str,
    resources: dict[str, str] | None = None,
    protocol: str = "grpc",
    sidecar_args: tuple[str, ...] = (),
    app_ready: Callable[[int], bool] = port_accepts,
) -> Pair:
    """Start the app, then its sidecar with the embedded components plus `resources` (file name -> YAML).

    Ready when /v1.0/healthz answers 204 (the app is subscribed). Both go into `started` first, so a
    failed start is still reaped.
    """
    records = workdir / "deliveries.jsonl"
    app_port = free_port()
    app = app_process(script, app_port, workdir, {"RECORD_FILE": str(records)})
    started.append(app)
    app.spawn()
    app.wait_ready(lambda: app_ready(app_port), "listening")
    components = fast_components(workdir / "components")
    for name, text in (resources or {}).items():
        (components / name).write_text(text)
    sidecar = sidecar_process(app_id, workdir, app_port=app_port, resources=[components])
    if protocol != "grpc":
        sidecar.argv[sidecar.argv.index("--app-protocol") + 1] = protocol
    sidecar.argv += sidecar_args
    started.append(sidecar)
    sidecar.spawn()
    sidecar.wait_ready(lambda: sidecar.healthy("/v1.0/healthz"), "subscribed (/v1.0/healthz 204)")
    return Pair(sidecar, app, records)
