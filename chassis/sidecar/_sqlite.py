"""One SQLite connection on one dedicated thread, so SQLite never blocks the sidecar's event loop.

Every store (state, pub/sub, app registry) owns a `SqliteWorker`. The connection is opened in the
worker thread and only ever used there; SQLite's own file locks make the file safe to share with
other sidecar processes. WAL + synchronous=NORMAL survives a killed process (not a power cut),
which is the durability the sidecar promises.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar
from urllib.parse import quote, unquote

from chassis.sidecar._errors import ComponentError

P = ParamSpec("P")
T = TypeVar("T")

DEFAULT_BUSY_TIMEOUT = 5.0


def resolve_database(connection_string: str, base_dir: Path) -> tuple[str, bool]:
    """Turn a connectionString (path or `file:` URI) into sqlite3.connect arguments (database, uri).

    Relative paths resolve against `base_dir`, and the parent directory is created, so a fresh
    checkout works without setup.
    """
    if connection_string == ":memory:":
        return connection_string, False
    if not connection_string.startswith("file:"):
        path = _absolute(Path(connection_string).expanduser(), base_dir)
        return str(path), False
    location, sep, query = connection_string[len("file:") :].partition("?")
    if location.startswith("//"):
        # file://host/path: SQLite only accepts an empty host or "localhost".
        location = "/" + location[2:].partition("/")[2]
    if location in ("", ":memory:") or "mode=memory" in query:
        return connection_string, True
    path = _absolute(Path(unquote(location)).expanduser(), base_dir)
    return f"file:{quote(str(path))}{sep}{query}", True


def _absolute(path: Path, base_dir: Path) -> Path:
    path = path if path.is_absolute() else base_dir / path
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE: take the write lock up front, so concurrent writers queue on busy_timeout
    instead of failing with SQLITE_BUSY when a read transaction tries to upgrade."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


class SqliteWorker:
    """Runs functions of one sqlite3 connection on its own single thread."""

    def __init__(self, database: str, *, uri: bool, busy_timeout: float, label: str) -> None:
        self._label = label
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sqlite-{label}")
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        # Submitted now so it runs first on the worker thread; `started()` reports its outcome.
        self._opening = self._executor.submit(self._connect, database, uri, busy_timeout)

    def _connect(self, database: str, uri: bool, busy_timeout: float) -> None:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves; nothing implicit.
        conn = sqlite3.connect(database, uri=uri, timeout=busy_timeout, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        _switch_to_wal(conn, busy_timeout)
        conn.execute("PRAGMA synchronous = NORMAL")
        self._conn = conn

    async def started(self) -> None:
        """Wait for the connection to open; raise ComponentError if it could not."""
        try:
            await asyncio.wrap_future(self._opening)
        except sqlite3.Error as exc:
            await self.close()
            raise ComponentError(f"{self._label}: cannot open database: {exc}") from exc

    async def run(
        self, fn: Callable[Concatenate[sqlite3.Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run `fn(conn, *args, **kwargs)` on the worker thread; sqlite3 errors become ComponentError."""
        if self._closed:
            raise ComponentError(f"{self._label}: store is closed")
        call = functools.partial(self._call, fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    def _call(
        self, fn: Callable[Concatenate[sqlite3.Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        if self._conn is None:
            raise ComponentError(f"{self._label}: database is not open")
        try:
            return fn(self._conn, *args, **kwargs)
        except sqlite3.Error as exc:
            raise ComponentError(f"{self._label}: {exc}") from exc

    async def close(self) -> None:
        """Close the connection on its own thread, then stop the thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._disconnect)
        self._executor.shutdown(wait=False)

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _switch_to_wal(conn: sqlite3.Connection, patience: float) -> None:
    """PRAGMA journal_mode = WAL, retried while another process is doing the same.

    Switching a new file to WAL needs an exclusive lock, and SQLite answers "database is locked" at
    once instead of waiting on busy_timeout when several processes open the file together (every
    sidecar of `chassis up` starting at the same moment).
    """
    deadline = time.monotonic() + patience
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)
