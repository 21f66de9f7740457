"""Which app listens where: a SQLite file shared by every sidecar on the machine.

Each sidecar registers its app (`app-id -> host:port`) and looks other apps up there to proxy
service invocation, so apps started by separate `chassis run` commands still find each other.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

from chassis.sidecar._sqlite import DEFAULT_BUSY_TIMEOUT, SqliteWorker, write_transaction

__all__ = ["AppRegistry", "default_registry_path"]

REGISTRY_ENV = "CHASSIS_REGISTRY"


def default_registry_path(base_dir: Path) -> Path:
    """`$CHASSIS_REGISTRY` if set, else `<base_dir>/.chassis/registry.db`."""
    override = os.environ.get(REGISTRY_ENV)
    if override:
        path = Path(override).expanduser()
        return path if path.is_absolute() else base_dir / path
    return base_dir / ".chassis" / "registry.db"


class AppRegistry:
    """app-id -> address, with the time of the last registration as a heartbeat."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._worker = SqliteWorker(str(path), uri=False, busy_timeout=DEFAULT_BUSY_TIMEOUT, label="registry")
        self._ready = False

    async def _started(self) -> None:
        # The constructor cannot await, so the table is created by the first call.
        if not self._ready:
            await self._worker.started()
            await self._worker.run(_create_table)
            self._ready = True

    async def register(self, app_id: str, address: str) -> None:
        """Record (or refresh) that `app_id` listens on `address` ("127.0.0.1:50051")."""
        await self._started()
        await self._worker.run(_upsert, app_id, address, os.getpid())

    async def lookup(self, app_id: str) -> str | None:
        """The address registered last for `app_id`, or None."""
        await self._started()
        return await self._worker.run(_select, app_id)

    async def unregister(self, app_id: str, address: str) -> None:
        """Forget `app_id`, unless another instance has since registered a different address."""
        await self._started()
        await self._worker.run(_delete, app_id, address)

    async def close(self) -> None:
        """Close the connection and stop the worker thread."""
        await self._worker.close()


def _create_table(conn: sqlite3.Connection) -> None:
    with write_transaction(conn):
        conn.execute(
            "CREATE TABLE IF NOT EXISTS apps (app_id TEXT NOT NULL PRIMARY KEY, address TEXT NOT NULL,"
            " pid INTEGER NOT NULL, heartbeat REAL NOT NULL)"
        )


def _upsert(conn: sqlite3.Connection, app_id: str, address: str, pid: int) -> None:
    with write_transaction(conn):
        conn.execute(
            "INSERT INTO apps (app_id, address, pid, heartbeat) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (app_id) DO UPDATE SET address = excluded.address, pid = excluded.pid,"
            " heartbeat = excluded.heartbeat",
            (app_id, address, pid, time.time()),
        )


def _select(conn: sqlite3.Connection, app_id: str) -> str | None:
    row = conn.execute("SELECT address FROM apps WHERE app_id = ?", (app_id,)).fetchone()
    return None if row is None else str(row[0])


def _delete(conn: sqlite3.Connection, app_id: str, address: str) -> None:
    with write_transaction(conn):
        conn.execute("DELETE FROM apps WHERE app_id = ? AND address = ?", (app_id, address))
