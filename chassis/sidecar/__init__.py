"""The embedded Dapr-compatible sidecar: `python -m chassis.sidecar --app-id ... [daprd flags]`.

It serves the Dapr gRPC API the official SDK calls (state, publish, metadata), proxies gRPC calls by
`dapr-app-id`, and delivers pub/sub events to its app, on SQLite components shared by every sidecar.
"""

from __future__ import annotations

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run the sidecar until it is stopped; returns the process exit code (see `_main`)."""
    # Imported here so `chassis.sidecar.components` and friends load without the servers' dependencies.
    from chassis.sidecar._main import main as run

    return run(argv)
