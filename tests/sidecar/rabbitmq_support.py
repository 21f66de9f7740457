"""Helpers for tests against the real RabbitMQ on 127.0.0.1:5672: the server check and cleanup.

Tests name their exchanges and queues with a run-wide marker (plus a uuid per test); `delete_marked`
removes everything carrying it once per module, because listing queues (rabbitmqctl) costs about a
second and the AMQP protocol itself cannot list.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import threading
import uuid

import aio_pika

from chassis.testing import requires_server

HOST, PORT = "127.0.0.1", 5672
RABBITMQ_URL = f"amqp://guest:guest@{HOST}:{PORT}"
START_RABBITMQ = "rabbitmq-server -detached"
# In the name of every exchange and queue the tests create, so cleanup finds exactly those.
RUN_MARKER = f"chassis-test-{uuid.uuid4().hex[:8]}"


def require_rabbitmq() -> None:
    """Skip the test with one line when RabbitMQ is down (fail under CI=true)."""
    requires_server("RabbitMQ", HOST, PORT, START_RABBITMQ)


def unique(label: str = "t") -> str:
    """A name no other test (or test run) uses, carrying RUN_MARKER."""
    return f"{label}-{RUN_MARKER}-{uuid.uuid4().hex[:8]}"


def _names(what: str) -> list[str]:
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        return []  # a remote broker: nothing to list with, leave it be
    listed = subprocess.run(
        [ctl, "-q", "--no-table-headers", what, "name"], capture_output=True, text=True, timeout=60
    )
    return [name for name in listed.stdout.split() if RUN_MARKER in name]


async def _delete(queues: list[str], exchanges: list[str]) -> None:
    connection = await aio_pika.connect(RABBITMQ_URL)
    async with connection:
        channel = await connection.channel()
        for queue in queues:
            await channel.queue_delete(queue)
        for exchange in exchanges:
            await channel.exchange_delete(exchange)


def delete_marked() -> None:
    """Delete every queue and exchange whose name carries RUN_MARKER (from any thread or loop)."""
    queues, exchanges = _names("list_queues"), _names("list_exchanges")
    if not (queues or exchanges):
        return
    # A thread of its own: the caller may be inside a running event loop (a pytest-asyncio fixture).
    worker = threading.Thread(target=asyncio.run, args=(_delete(queues, exchanges),))
    worker.start()
    worker.join(timeout=60)
