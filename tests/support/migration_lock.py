"""The lock `cds.store.storage.migrate` takes, held and watched by a test: processes said to
migrate "at the same moment" are proven to have met there, not merely run one after another."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg
from psycopg.rows import TupleRow
from sqlalchemy.engine import make_url

from cds.store.storage import MIGRATION_LOCK_KEY


def connect(database_url: str) -> psycopg.Connection[TupleRow]:
    """A plain autocommit connection to a test PostgreSQL database (trust authentication)."""
    url = make_url(database_url)
    return psycopg.connect(
        host=url.host, port=url.port, user=url.username, dbname=url.database, autocommit=True
    )


def waiting_for_migration_lock(admin: psycopg.Connection[TupleRow]) -> int:
    """Backends of this database queued on the migration lock (a bigint advisory lock is
    shown as its high and low 32 bits, objsubid 1)."""
    row = admin.execute(
        """
        SELECT count(*) FROM pg_locks
        WHERE locktype = 'advisory' AND NOT granted AND objsubid = 1
          AND classid = %s AND objid = %s
          AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
        """,
        (MIGRATION_LOCK_KEY >> 32, MIGRATION_LOCK_KEY & 0xFFFF_FFFF),
    ).fetchone()
    assert row is not None
    return int(row[0])


@contextmanager
def migration_lock_held(database_url: str) -> Iterator[Callable[[], int] | None]:
    """Hold the migration lock until the block ends, so that no migration can finish meanwhile.

    Yields a count of the processes queued on it where the database can tell (PostgreSQL);
    SQLite cannot, and yields None: there the lock is the database's write lock, which
    `migrate` takes with BEGIN IMMEDIATE.
    """
    if database_url.startswith("sqlite"):
        connection = sqlite3.connect(make_url(database_url).database or "", isolation_level=None)
        try:
            connection.execute("BEGIN IMMEDIATE")
            yield None
        finally:
            connection.close()
        return
    with connect(database_url) as holder, connect(database_url) as admin:
        holder.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        try:
            yield lambda: waiting_for_migration_lock(admin)
        finally:
            holder.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
