"""Helpers for tests against the real NATS JetStream on 127.0.0.1:4222: the server check and cleanup.

Every test stores its messages in a stream of its own (a fresh `streamName`), deleted at the end
together with its consumers.
"""

from __future__ import annotations

import asyncio
import threading
import uuid

import nats
import nats.js.errors

from chassis.testing import requires_server

HOST, PORT = "127.0.0.1", 4222
NATS_URL = f"nats://{HOST}:{PORT}"
START_NATS = (
    "start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server --"
    " -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log"
)


def require_nats() -> None:
    """Skip the test with one line when NATS is down (fail under CI=true)."""
    requires_server("NATS JetStream", HOST, PORT, START_NATS)


def unique_stream() -> str:
    """A stream name no other test (or test run) uses."""
    return f"chassis-test-{uuid.uuid4().hex[:12]}"


async def _delete(stream: str) -> None:
    nc = await nats.connect(NATS_URL)
    try:
        await nc.jetstream().delete_stream(stream)
    except nats.js.errors.NotFoundError:
        pass  # the test never created it
    finally:
        await nc.close()


def delete_stream(stream: str) -> None:
    """Delete a test's stream and its consumers (from any thread or loop)."""
    # A thread of its own: the caller may be inside a running event loop (a pytest-asyncio fixture).
    worker = threading.Thread(target=asyncio.run, args=(_delete(stream),))
    worker.start()
    worker.join(timeout=30)
