"""Real servers the bindings and resiliency tests point components at: an HTTP target and an SMTP sink.

The HTTP target (stdlib ThreadingHTTPServer) records every request and answers by path:
  /fail       500
  /unwanted   404 (an HTTP app that does not want that input binding)
  /dapr/subscribe  [] (an HTTP app without programmatic subscriptions)
  /flaky/<n>  503 for the first n requests to that path (query included), then 200
  /slow       200 after 1 s
  anything    200 echoing the body, with header X-Seen-Method
The SMTP sink is aiosmtpd's Controller (a real SMTP server in a thread).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller
from sidecar_support import free_port


@dataclass
class Seen:
    """One request the HTTP target received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class HttpTarget:
    """The running HTTP target: its base URL and what it saw."""

    url: str
    seen: list[Seen] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def requests(self, path: str) -> list[Seen]:
        with self.lock:
            return [item for item in self.seen if item.path == path]


def _handler(target: HttpTarget) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            """Quiet."""

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            with target.lock:
                target.seen.append(Seen(self.command, self.path, dict(self.headers.items()), body))
                target.counts[self.path] = count = target.counts.get(self.path, 0) + 1
            status = 200
            if self.path == "/dapr/subscribe":  # as an HTTP app: no programmatic subscriptions
                body = b"[]"
            if self.path == "/unwanted":
                status = 404
            elif self.path == "/fail":
                status = 500
            elif self.path.startswith("/flaky/") and count <= int(self.path.split("?")[0].rsplit("/", 1)[1]):
                status = 503
            elif self.path == "/slow":
                time.sleep(1.0)
            self.send_response(status)
            self.send_header("X-Seen-Method", self.command)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = do_TRACE = _answer

    return Handler


@contextmanager
def http_target() -> Iterator[HttpTarget]:
    """An HTTP target on a free loopback port, shut down on exit."""
    port = free_port()
    target = HttpTarget(f"http://127.0.0.1:{port}")
    server = ThreadingHTTPServer(("127.0.0.1", port), _handler(target))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield target
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@dataclass
class Mailbox:
    """Every message the SMTP sink accepted, with its envelope recipients."""

    port: int
    messages: list[tuple[list[str], Message]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((list(envelope.rcpt_tos), message_from_bytes(envelope.content)))
        return "250 Message accepted for delivery"


@contextmanager
def smtp_sink() -> Iterator[Mailbox]:
    """aiosmtpd on a free loopback port."""
    mailbox = Mailbox(free_port())
    controller = Controller(mailbox, hostname="127.0.0.1", port=mailbox.port)
    controller.start()
    try:
        yield mailbox
    finally:
        controller.stop()
