"""Replicas starting together on one fresh PostgreSQL: the schema is applied once, never raced.

Kubernetes starts every pod of a new Deployment at the same moment, each running
`twitch-cds migrate` (the init container) and `twitch-cds serve`, which both migrate under a
PostgreSQL advisory lock (cds.store.storage.migrate). These tests start real processes, make
them meet at that lock, and read what PostgreSQL itself recorded:

- overlap: the test holds the migration lock before the processes start, and waits until
  PostgreSQL shows all four of them queued behind it (pg_locks) at the same time; only then is
  it released. Four processes that merely ran one after another would never be seen waiting
  together.
- once: an event trigger on the database logs every committed DDL command with the backend
  that ran it; each table must have been created exactly once, all by one backend.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
from psycopg.rows import TupleRow

from cds.store.storage import MIGRATION_LOCK_KEY, SCHEMA_HEAD
from tests.conftest import SERVICE_PV, free_port
from tests.support.cli import run
from tests.support.migration_lock import connect, waiting_for_migration_lock
from tests.support.paths import SANDBOX
from tests.support.postgres import PostgresTestServer, temporary_database
from tests.support.waiting import wait_for

REPLICAS = 4
TABLES = ("alembic_version", "feedback", "jwt_seen", "card_issued")
START_TIMEOUT_SECONDS = 90  # four Python start-ups on a shared 2-core machine

# Every DDL command that commits in the database, with the backend that ran it. A migration
# that failed and rolled back leaves no row (its process would then fail to start, which the
# tests also check).
DDL_LOG = """
CREATE TABLE ddl_log (
    command_tag text NOT NULL,
    object_identity text,
    backend_pid integer NOT NULL DEFAULT pg_backend_pid()
);
CREATE FUNCTION log_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ddl_log (command_tag, object_identity)
    SELECT command_tag, object_identity FROM pg_event_trigger_ddl_commands();
END $$;
CREATE EVENT TRIGGER log_ddl ON ddl_command_end EXECUTE FUNCTION log_ddl();
"""


@dataclass
class Replica:
    """One `twitch-cds serve` process (real uvicorn, one worker) in its own process group."""

    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    def alive(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"replica exited: {self.log_path.read_text()[-2000:]}")
        return True

    def ready(self) -> bool:
        self.alive()
        with contextlib.suppress(httpx.TransportError):
            return httpx.get(f"{self.base_url}/ready", timeout=2).status_code == 200
        return False

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)


def start_replica(database_url: str, log_path: Path, *command: str) -> Replica:
    port = free_port()
    env = {**os.environ, "TWITCH_CDS_AUTH": "none", "TWITCH_CDS_DATABASE_URL": database_url}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "cds.tools.cli", *command, "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Replica(process, f"http://127.0.0.1:{port}", log_path)


@pytest.fixture
def fresh_database(postgres_server: PostgresTestServer) -> Iterator[str]:
    """An empty database whose committed DDL is logged (DDL_LOG)."""
    with temporary_database(postgres_server) as url:
        with connect(url) as admin:
            admin.execute(DDL_LOG)
        yield url


def created_tables(admin: psycopg.Connection[TupleRow]) -> list[tuple[str, int]]:
    return [
        (str(name), int(pid))
        for name, pid in admin.execute(
            "SELECT object_identity, backend_pid FROM ddl_log "
            "WHERE command_tag = 'CREATE TABLE' ORDER BY object_identity"
        ).fetchall()
    ]


def test_four_replicas_started_together_apply_the_schema_once_and_store_feedback_once(
    fresh_database: str, tmp_path: Path
) -> None:
    replicas: list[Replica] = []
    with connect(fresh_database) as admin, connect(fresh_database) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        try:
            for number in range(REPLICAS):
                replicas.append(
                    start_replica(fresh_database, tmp_path / f"replica-{number}.log", "serve")
                )
            # All four are inside their migration at once, queued behind the held lock.
            wait_for(
                lambda: (
                    all(replica.alive() for replica in replicas)
                    and waiting_for_migration_lock(admin) == REPLICAS
                ),
                f"{REPLICAS} replicas queued on the migration lock",
                START_TIMEOUT_SECONDS,
            )
            assert not any(replica.ready() for replica in replicas)
            holder.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
            wait_for(
                lambda: all(replica.ready() for replica in replicas),
                "every replica ready",
                START_TIMEOUT_SECONDS,
            )

            created = created_tables(admin)
            assert sorted(name.removeprefix("public.") for name, _ in created) == sorted(TABLES)
            assert len({pid for _, pid in created}) == 1, created  # one migration, one backend
            versions = admin.execute("SELECT version_num FROM alembic_version").fetchall()
            assert versions == [(SCHEMA_HEAD,)]

            # The same entry sent to every replica is stored once; each replica's own, once each.
            shared = json.loads((SANDBOX / "feedback.overridden.json").read_text())
            stored: list[int] = []
            for number, replica in enumerate(replicas):
                own = json.loads((SANDBOX / "feedback.accepted.json").read_text())
                own["feedback"][0]["card"] = f"card-of-replica-{number}"
                for body in (shared, own):
                    response = httpx.post(
                        f"{replica.base_url}/cds-services/{SERVICE_PV}/feedback",
                        json=body,
                        timeout=30,
                    )
                    assert response.status_code == 200, response.text
                    stored.append(response.json()["stored"])
            assert sum(stored) == 1 + REPLICAS
            cards = admin.execute(
                "SELECT card_uuid, count(*) FROM feedback GROUP BY card_uuid ORDER BY card_uuid"
            ).fetchall()
            assert cards == sorted(
                [(shared["feedback"][0]["card"], 1)]
                + [(f"card-of-replica-{number}", 1) for number in range(REPLICAS)]
            )
        finally:
            for replica in replicas:
                replica.stop()


def test_migrate_command_applies_the_schema_once_then_finds_it_current(
    fresh_database: str,
) -> None:
    """`twitch-cds migrate` (the init container) twice: the second run changes nothing."""
    outputs = [run("migrate", "--database-url", fresh_database) for _ in range(2)]
    assert (
        outputs == [(0, f"twitch-cds migrate: database schema at revision {SCHEMA_HEAD}\n", "")] * 2
    )
    with connect(fresh_database) as admin:
        assert sorted(n.removeprefix("public.") for n, _ in created_tables(admin)) == sorted(TABLES)


def test_migrate_command_fails_in_one_line_when_the_database_is_unreachable() -> None:
    url = f"postgresql+psycopg://twitch:secret-password@127.0.0.1:{free_port()}/nowhere"
    status, _, stderr = run("migrate", "--database-url", url)
    assert status == 1
    assert stderr.startswith("twitch-cds migrate: OperationalError: ")
    assert len(stderr.splitlines()) == 1
    assert "secret-password" not in stderr
