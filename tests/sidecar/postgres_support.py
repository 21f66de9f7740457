"""Helpers for tests against the real PostgreSQL on 127.0.0.1:5432 (trust auth, database `test`).

Several test runs share the server, so each test works in tables named with a fresh uuid and drops
exactly those tables at the end.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

import psycopg
from psycopg import sql

from chassis.testing import requires_server

HOST, PORT = "127.0.0.1", 5432
# Dapr's documented keyword form (pgx spells the database `database`, libpq `dbname`).
CONNECTION_STRING = f"host={HOST} user=postgres port={PORT} database=test"
URL = f"postgres://postgres@{HOST}:{PORT}/test"
START_POSTGRES = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"


def require_postgres() -> None:
    """Skip the test with one line when PostgreSQL is down (fail under CI=true)."""
    requires_server("PostgreSQL", HOST, PORT, START_POSTGRES)


def unique_table(label: str = "t") -> str:
    """A table name no other test (or test run) uses; a plain SQL identifier."""
    return f"{label}_{uuid.uuid4().hex[:12]}"


def connect() -> psycopg.Connection[tuple[object, ...]]:
    """A raw autocommit connection, for looking at what the driver stored."""
    return psycopg.connect(URL, autocommit=True)


def drop_tables(names: Iterable[str]) -> None:
    """Remove the tables a test created (missing ones are fine)."""
    with connect() as conn:
        for name in names:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))
