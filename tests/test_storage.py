"""Storage on SQLite and on a real PostgreSQL: feedback stored once, JWT ids used once,
migrations safe to run again and from several processes at the same moment.

Each test runs against both databases (`db` fixture). Races between processes use real
processes: Alembic keeps per-run state in module globals, so threads cannot stand in for the
workers of a server.
"""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import Engine, func, inspect, select, text

from cds.cdshooks import FeedbackEntry
from cds.store import storage
from cds.store.storage import (
    DatabaseReplayCache,
    FeedbackStore,
    IssuedCard,
    card_issued,
    feedback,
    head_revision,
    jwt_seen,
    make_engine,
    migrate,
    schema_revision,
)
from tests.conftest import SERVICE_OS, SERVICE_PV
from tests.support.migration_lock import migration_lock_held
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def db(db_url: str) -> Iterator[Engine]:
    """A migrated engine on the fresh database."""
    engine = make_engine(db_url)
    migrate(engine)
    yield engine
    engine.dispose()


def entry(
    card: str, outcome: str = "overridden", when: str = "2026-11-26T10:00:00Z", **extra: Any
) -> FeedbackEntry:
    body: dict[str, Any] = {"card": card, "outcome": outcome, "outcomeTimestamp": when, **extra}
    if outcome == "accepted":
        body.setdefault("acceptedSuggestions", [{"id": f"{card}-suggestion"}])
    return FeedbackEntry.model_validate(body)


def rows(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        return [
            dict(row._mapping)
            for row in connection.execute(select(feedback).order_by(feedback.c.id))
        ]


def count(engine: Engine, table: Any = feedback) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(table)).scalar_one())


def run_threads(count_: int, target: Callable[[int], None]) -> None:
    """Start `count_` threads at the same moment (barrier) and re-raise their first error."""
    barrier = threading.Barrier(count_)
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            barrier.wait()
            target(index)
        except BaseException as error:  # reported below, in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count_)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "threads hung"
    if errors:
        raise errors[0]


# --- migrations ---------------------------------------------------------------------------


def test_the_schema_head_the_service_checks_is_alembics_head() -> None:
    assert head_revision() == storage.SCHEMA_HEAD


def test_a_process_finding_the_schema_current_does_not_load_alembic(tmp_path: Path) -> None:
    """What `twitch-cds serve` relies on: it migrates in a child process, and the process
    that then serves finds the schema current and never imports Alembic (~10 MB)."""
    url = f"sqlite:///{tmp_path / 'cds.sqlite3'}"
    engine = make_engine(url)
    migrate(engine)
    engine.dispose()
    check = (
        "import sys; from cds.store.storage import make_engine, migrate, schema_revision; "
        f"e = make_engine({url!r}); migrate(e); "
        "print(schema_revision(e), 'alembic' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == [storage.SCHEMA_HEAD, "False"]


def test_migrations_reach_head_and_are_idempotent(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        assert schema_revision(engine) is None
        migrate(engine)
        assert schema_revision(engine) == head_revision() is not None
        store = FeedbackStore(engine)
        assert store.save(SERVICE_PV, [entry("kept")]) == 1
        for _ in range(3):  # every start of every worker runs it again
            migrate(engine)
        assert schema_revision(engine) == head_revision()
        with engine.connect() as connection:
            versions = connection.execute(text("SELECT version_num FROM alembic_version")).all()
        assert [v for (v,) in versions] == [head_revision()]
        assert {"feedback", "jwt_seen"} <= set(inspect(engine).get_table_names())
        assert [r["card_uuid"] for r in rows(engine)] == ["kept"]
    finally:
        engine.dispose()


def test_migrated_schema_matches_the_tables_the_code_uses(db: Engine) -> None:
    inspector = inspect(db)
    for table in (feedback, jwt_seen):
        assert {c["name"] for c in inspector.get_columns(table.name)} == set(table.c.keys())
    unique = inspector.get_unique_constraints("feedback")
    assert [sorted(u["column_names"]) for u in unique] == [
        sorted(["service_id", "card_uuid", "outcome", "outcome_timestamp"])
    ]


MIGRATE_WHEN_TOLD = """
import sys
from cds.store.storage import make_engine, migrate
engine = make_engine(sys.argv[1])
engine.connect().close()
print("ready", flush=True)
sys.stdin.readline()
print("migrating", flush=True)
migrate(engine)
"""


def test_workers_migrating_a_fresh_database_at_the_same_moment_all_start(db_url: str) -> None:
    """`serve --workers N` runs N migrations at once on a fresh database: none may fail.

    Without a lock around the upgrade, 8 of 8 SQLite trials and 5 of 5 PostgreSQL trials
    failed (both create `alembic_version`), and a failed worker stops the whole server.

    The migrations are proven to overlap: the test holds the migration lock while every
    process, connected and told to go, enters `migrate`; none can finish meanwhile, so all
    are inside it at once (on PostgreSQL, the database shows every one of them waiting for
    the lock). Then the lock is let go and they race.
    """
    processes = 4
    children = [
        subprocess.Popen(
            [sys.executable, "-c", MIGRATE_WHEN_TOLD, db_url],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(processes)
    ]
    try:
        for child in children:
            assert child.stdout is not None and child.stdout.readline() == "ready\n"
        with migration_lock_held(db_url) as waiting:
            for child in children:
                assert child.stdin is not None
                child.stdin.write("go\n")
                child.stdin.flush()
            for child in children:
                assert child.stdout is not None and child.stdout.readline() == "migrating\n"
            if waiting is not None:
                wait_for(lambda: waiting() == processes, "every migration waiting for the lock")
            assert all(child.poll() is None for child in children), "a migration ended early"
        outputs = [child.communicate(timeout=120)[0] for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    failed = [
        out[-1500:] for child, out in zip(children, outputs, strict=True) if child.returncode != 0
    ]
    assert not failed, failed[0]
    engine = make_engine(db_url)
    try:
        assert schema_revision(engine) == head_revision()
        with engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
    finally:
        engine.dispose()


def test_sqlite_is_set_up_for_concurrent_crash_safe_writes(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'pragmas.sqlite3'}")
    try:
        with engine.connect() as connection:
            pragma = {
                name: connection.exec_driver_sql(f"PRAGMA {name}").scalar()
                for name in ("journal_mode", "synchronous", "busy_timeout")
            }
        assert pragma == {"journal_mode": "wal", "synchronous": 2, "busy_timeout": 30000}
    finally:
        engine.dispose()


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_a_postgresql_url_without_a_driver_uses_psycopg(postgres_url: str, scheme: str) -> None:
    """Managed databases and CloudNativePG hand out `postgresql://` URIs; SQLAlchemy alone
    would look for psycopg2 (not installed) and `postgres://` it refuses outright."""
    _, _, rest = postgres_url.partition("://")
    engine = make_engine(f"{scheme}://{rest}")
    try:
        migrate(engine)
        assert engine.dialect.driver == "psycopg"
        assert FeedbackStore(engine).save(SERVICE_PV, [entry("driverless")]) == 1
    finally:
        engine.dispose()


# --- feedback -----------------------------------------------------------------------------


def test_each_entry_is_stored_once(db: Engine) -> None:
    store = FeedbackStore(db)
    assert store.save(SERVICE_PV, [entry("a")]) == 1
    assert store.save(SERVICE_PV, [entry("a")]) == 0
    # The same instant written with another offset is the same entry.
    assert store.save(SERVICE_PV, [entry("a", when="2026-11-26T11:00:00+01:00")]) == 0
    # A duplicate inside one body, next to a new entry: the new one is stored, once.
    assert store.save(SERVICE_PV, [entry("b"), entry("b"), entry("a")]) == 1
    # Another outcome, another moment or another service is another entry.
    assert store.save(SERVICE_PV, [entry("a", "accepted")]) == 1
    assert store.save(SERVICE_PV, [entry("a", when="2026-11-26T10:00:00.001Z")]) == 1
    assert store.save(SERVICE_OS, [entry("a")]) == 1
    assert store.count() == 5
    assert store.count(SERVICE_PV) == 4


def test_entry_fields_round_trip(db: Engine) -> None:
    store = FeedbackStore(db)
    store.save(
        SERVICE_PV,
        [
            entry(
                "c-accepted",
                "accepted",
                "2026-11-26T00:50:14.379Z",
                acceptedSuggestions=[{"id": "s-1"}, {"id": "s-2"}],
            ),
            entry(
                "c-overridden",
                when="2026-11-26T02:50:17+02:00",
                overrideReason={
                    "reason": {"code": "already-addressed", "system": "https://x/r"},
                    "userComment": "seen by neurology last week",
                },
            ),
        ],
    )
    accepted, overridden = rows(db)
    assert accepted["accepted_suggestions"] == '["s-1", "s-2"]'
    assert accepted["override_reason_code"] is None
    assert (
        overridden["override_reason_system"],
        overridden["override_reason_code"],
        overridden["override_comment"],
    ) == ("https://x/r", "already-addressed", "seen by neurology last week")
    stamp = overridden["outcome_timestamp"]
    stamp = stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)  # SQLite keeps it naive (UTC)
    assert stamp == datetime(2026, 11, 26, 0, 50, 17, tzinfo=UTC)
    assert accepted["outcome_timestamp"].replace(tzinfo=None) == datetime(
        2026, 11, 26, 0, 50, 14, 379000
    )


def test_concurrent_threads_store_every_distinct_entry_exactly_once(db: Engine) -> None:
    """8 threads send the same 300 entries (each in its own order, one or a few per call)."""
    store = FeedbackStore(db)
    entries = [entry(f"card-{i}", "accepted" if i % 3 == 0 else "overridden") for i in range(300)]
    new_counts: list[int] = []
    lock = threading.Lock()

    def send(index: int) -> None:
        mine = entries[:]
        random.Random(index).shuffle(mine)
        position, stored = 0, 0
        while position < len(mine):
            size = 1 + (position + index) % 3
            stored += store.save(SERVICE_PV, mine[position : position + size])
            position += size
        with lock:
            new_counts.append(stored)

    run_threads(8, send)
    assert sum(new_counts) == 300  # every entry reported new by exactly one call
    assert count(db) == 300
    assert {r["card_uuid"] for r in rows(db)} == {f"card-{i}" for i in range(300)}


# --- JWT replay cache ---------------------------------------------------------------------


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The replay cache's clock, settable by the test (`clock[0] = ...`)."""
    now = [1_800_000_000.0]
    fake = SimpleNamespace(time=lambda: now[0], monotonic=time.monotonic, sleep=time.sleep)
    monkeypatch.setattr(storage, "time", fake)
    return now


def test_replay_cache_rejects_a_reused_jti_until_it_expires(db: Engine, clock: list[float]) -> None:
    cache = DatabaseReplayCache(db)
    issuer, expires = "https://ehr.example.org", int(clock[0]) + 300
    assert cache.check_and_store("jti-1", issuer, expires) is True
    assert cache.check_and_store("jti-1", issuer, expires) is False
    assert cache.check_and_store("jti-1", "https://other.example.org", expires) is True
    assert cache.check_and_store("jti-2", issuer, expires) is True
    clock[0] = expires  # at the expiry instant the token is still remembered
    assert cache.check_and_store("jti-1", issuer, expires + 300) is False
    clock[0] = expires + 1  # after it, the old entry is gone and the jti may be seen anew
    assert cache.check_and_store("jti-1", issuer, expires + 300) is True
    assert cache.check_and_store("jti-1", issuer, expires + 300) is False


def test_replay_cache_purges_only_expired_entries(db: Engine, clock: list[float]) -> None:
    cache = DatabaseReplayCache(db)
    now = int(clock[0])
    for index, expires in enumerate((now - 10, now - 1, now + 1, now + 100)):
        assert cache.check_and_store(f"jti-{index}", "iss", expires)
    assert cache.purge_expired() == 2
    assert count(db, jwt_seen) == 2
    assert cache.check_and_store("jti-2", "iss", now + 1) is False


@pytest.mark.parametrize("expires", [10**20, 2**63, -(10**20)], ids=["1e20", "2^63", "-1e20"])
def test_replay_cache_holds_any_expiry_without_overflow(
    db: Engine, clock: list[float], expires: int
) -> None:
    """An expiry beyond the 64-bit column is held as its end (remembered for ever): it once
    reached the database as is, and PostgreSQL's overflow became a 500."""
    cache = DatabaseReplayCache(db)
    assert cache.check_and_store("jti-far", "iss", expires) is True
    assert cache.check_and_store("jti-far", "iss", expires) is (expires < 0)


def test_replay_cache_accepts_a_jti_once_among_concurrent_threads(db: Engine) -> None:
    cache = DatabaseReplayCache(db)
    expires = int(time.time()) + 300
    for round_ in range(5):
        results: list[bool] = []

        def check(_index: int, jti: str = f"jti-race-{round_}", out: list[bool] = results) -> None:
            out.append(cache.check_and_store(jti, "iss", expires))

        run_threads(8, check)
        assert sorted(results) == [False] * 7 + [True], round_


def test_two_stores_on_one_database_share_the_replay_cache(db_url: str, db: Engine) -> None:
    """Workers are separate processes with separate engines: the database is the cache."""
    other = make_engine(db_url)
    try:
        expires = int(time.time()) + 60
        assert DatabaseReplayCache(db).check_and_store("shared", "iss", expires)
        assert not DatabaseReplayCache(other).check_and_store("shared", "iss", expires)
    finally:
        other.dispose()


def test_timestamps_compare_as_instants_whatever_the_offset(db: Engine) -> None:
    store = FeedbackStore(db)
    base = datetime(2026, 11, 26, 23, 30, tzinfo=timezone(timedelta(hours=-5)))
    assert store.save(SERVICE_PV, [entry("tz", when=base.isoformat())]) == 1
    assert store.save(SERVICE_PV, [entry("tz", when="2026-11-27T04:30:00Z")]) == 0
    assert store.save(SERVICE_PV, [entry("tz", when="2026-11-26T23:30:00Z")]) == 1


def test_a_large_backlog_of_issued_cards_is_stored_in_one_flush(db: Engine) -> None:
    """After the database was down, or at high throughput, one flush may carry thousands of
    cards (up to 50,000 are kept): more than PostgreSQL's 65,535 bound parameters for one
    multi-row INSERT of 5 columns."""
    now = datetime.now(UTC)
    cards = [
        IssuedCard(f"card-{n}", "fasciculation-pv", "hypomagnesemia", "warning", now)
        for n in range(20_000)
    ]

    FeedbackStore(db).record_issued(cards)
    FeedbackStore(db).record_issued(cards[:10])  # repeated uuids are kept once

    assert count(db, card_issued) == 20_000
