"""Checks that the throwaway PostgreSQL harness is fit for storage tests.

Storage tests rely on it for real concurrency semantics and clean teardown,
so both are exercised here: concurrent idempotent inserts through SQLAlchemy,
and that stop() leaves no server process or files behind.
"""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert

from tests.support.postgres import (
    PostgresBinariesNotFound,
    PostgresTestServer,
    running_postgres,
)

THREADS = 8
ROWS_PER_THREAD = 500
BATCH = 50


def _thread_keys(thread: int) -> list[str]:
    """500 keys per thread: each key twice within the thread, and each thread
    overlapping its neighbour, so conflicts happen both inside a batch and
    across concurrent transactions."""
    return [f"key-{thread * 200 + i // 2:05d}" for i in range(ROWS_PER_THREAD)]


def _children_of(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("PPid:") and int(line.split()[1]) == pid:
                children.append(int(entry.name))
    return children


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_concurrent_on_conflict_inserts_and_clean_stop() -> None:
    metadata = sa.MetaData()
    items = sa.Table(
        "items",
        metadata,
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("key", sa.Text, nullable=False, unique=True),
        sa.Column("thread", sa.Integer, nullable=False),
    )

    with running_postgres() as server:
        pid, tmpdir = server.pid, server.tmpdir
        assert _pid_alive(pid)

        url = server.create_database("harness_check")
        assert url == f"postgresql+psycopg://postgres@127.0.0.1:{server.port}/harness_check"

        engine = sa.create_engine(url, pool_size=THREADS, max_overflow=0)
        try:
            with engine.connect() as conn:
                assert conn.execute(sa.text("SHOW fsync")).scalar_one() == "on"
            metadata.create_all(engine)

            start = threading.Barrier(THREADS)
            errors: list[BaseException] = []

            def worker(thread: int) -> None:
                try:
                    keys = _thread_keys(thread)
                    start.wait(timeout=30)
                    for offset in range(0, len(keys), BATCH):
                        # Sorted keys per transaction: concurrent speculative
                        # inserts of overlapping keys in different orders can
                        # deadlock under ON CONFLICT DO NOTHING.
                        batch = sorted(keys[offset : offset + BATCH])
                        stmt = pg_insert(items).on_conflict_do_nothing(index_elements=["key"])
                        with engine.begin() as conn:
                            conn.execute(stmt, [{"key": k, "thread": thread} for k in batch])
                except BaseException as exc:  # surfaced in the main thread below
                    errors.append(exc)

            threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=120)
            assert not any(t.is_alive() for t in threads)
            assert not errors, errors

            all_keys = [k for t in range(THREADS) for k in _thread_keys(t)]
            distinct = len(set(all_keys))
            assert distinct < len(all_keys)  # the workload really contained duplicates
            with engine.connect() as conn:
                count = conn.execute(sa.select(sa.func.count()).select_from(items)).scalar_one()
                distinct_in_db = conn.execute(
                    sa.select(sa.func.count(sa.distinct(items.c.key)))
                ).scalar_one()
            assert count == distinct_in_db == distinct
        finally:
            engine.dispose()

        server.drop_database("harness_check")
        with server.connect_admin() as admin:
            row = admin.execute(
                "SELECT count(*) FROM pg_database WHERE datname = 'harness_check'"
            ).fetchone()
        assert row == (0,)

    assert not _pid_alive(pid), f"postmaster {pid} still running after stop()"
    assert _children_of(pid) == []
    assert not tmpdir.exists()


def test_stop_is_idempotent_and_rejects_odd_names() -> None:
    server = PostgresTestServer().start()
    try:
        with pytest.raises(ValueError):
            server.create_database("bad-name; DROP")
    finally:
        server.stop()
    server.stop()  # second stop is a no-op


def test_missing_binaries_error_points_to_install_script(tmp_path: Path) -> None:
    with pytest.raises(PostgresBinariesNotFound, match=r"scripts/install-test-deps\.sh"):
        PostgresTestServer(bindir=tmp_path)


def test_stop_falls_back_to_signals_when_pg_ctl_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    server = PostgresTestServer().start()
    pid, tmpdir = server.pid, server.tmpdir

    def pg_ctl_hangs(*args: object, **kwargs: object) -> None:
        raise subprocess.TimeoutExpired("pg_ctl", 40)

    monkeypatch.setattr(server, "_run", pg_ctl_hangs)
    server.stop()
    assert not _pid_alive(pid)
    assert _children_of(pid) == []
    assert not tmpdir.exists()
