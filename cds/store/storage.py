"""Durable storage of card feedback (SQLite by default, PostgreSQL supported).

Feedback is what tells knowledge authors which cards clinicians act on and which they
override, so an acknowledged entry must never be lost and a repeated entry (clients resend)
must be stored once: a unique key and INSERT ... ON CONFLICT DO NOTHING give both.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    inspect,
    select,
    text,
)
from sqlalchemy import delete as sql_delete
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.pool import NullPool

from cds.cdshooks import FeedbackEntry

metadata = MetaData()

feedback = Table(
    "feedback",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("service_id", String(128), nullable=False),
    Column("card_uuid", String(128), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("outcome_timestamp", DateTime(timezone=True), nullable=False),
    Column("accepted_suggestions", Text, nullable=True),
    Column("override_reason_system", String(512), nullable=True),
    Column("override_reason_code", String(512), nullable=True),
    Column("override_comment", Text, nullable=True),
    Column("received_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint(
        "service_id", "card_uuid", "outcome", "outcome_timestamp", name="uq_feedback_entry"
    ),
)

jwt_seen = Table(
    "jwt_seen",
    metadata,
    Column("issuer", String(512), primary_key=True),
    Column("jti", String(256), primary_key=True),
    Column("expires_at", BigInteger, nullable=False, index=True),
)

# The cards this service answered with, so that feedback (which names only a card's uuid)
# can be counted per card topic: written in batches by cds.store.issued_cards, read by
# `twitch-cds feedback-report`. No patient data: uuid, service, topic, indicator, time.
card_issued = Table(
    "card_issued",
    metadata,
    Column("card_uuid", String(128), primary_key=True),
    Column("service_id", String(128), nullable=False),
    Column("topic", String(128), nullable=False),
    Column("indicator", String(16), nullable=False),
    Column("issued_at", DateTime(timezone=True), nullable=False),
)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# The newest revision in cds/store/migrations/versions (tests/test_storage.py checks that it is
# Alembic's head). A process that finds the database at it does not load Alembic at all: that
# is ~10 MB less in every worker, since `twitch-cds serve` migrates in a child process first.
SCHEMA_HEAD = "0002"


# pg_advisory_xact_lock key serialising migrations across processes ("twitch-cds"); public
# for the test that holds it to make replicas queue behind it (tests/test_replicas_start.py).
MIGRATION_LOCK_KEY = 0x7477_6974_6368


def migrate(engine: Engine) -> None:
    """Bring the schema to the latest Alembic revision; safe on an existing database.

    Several processes may run this at the same moment: the init containers of replicas that
    start together, or the workers of a server started by another ASGI runner than
    `twitch-cds serve` (which migrates once, in a child, before its workers start). On a fresh
    database two unserialised upgrades both see no `alembic_version` table and both create
    it, and the loser fails at start. So the upgrade runs
    in one transaction that first takes a lock: a transaction-scoped advisory lock on
    PostgreSQL (whose DDL is transactional), `BEGIN IMMEDIATE` (the database's write lock)
    on SQLite. The next process waits, then finds the schema at head and does nothing.
    """
    if schema_revision(engine) == SCHEMA_HEAD:
        return
    from alembic import command  # only when there is something to migrate (SCHEMA_HEAD)

    config = _alembic_config()
    if engine.dialect.name == "sqlite" and not _in_memory(engine):
        locked_engine = _sqlite_immediate_engine(engine)
        try:
            with locked_engine.begin() as connection:
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
        finally:
            locked_engine.dispose()
        return
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
            )
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def migrate_database(url: str) -> str | None:
    """`migrate` on the database at `url` with an engine of its own; the revision it is at."""
    engine = make_engine(url)
    try:
        migrate(engine)
        return schema_revision(engine)
    finally:
        engine.dispose()


def schema_revision(engine: Engine) -> str | None:
    """The Alembic revision the database is at (None before the first migration), read with
    SQLAlchemy alone from Alembic's one-row `alembic_version` table."""
    with engine.connect() as connection:
        if not inspect(connection).has_table("alembic_version"):
            return None
        revision = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
        return None if revision is None else str(revision)


def head_revision() -> str | None:
    """The newest revision of cds/store/migrations, as Alembic reads it."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


def _alembic_config() -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def _in_memory(engine: Engine) -> bool:
    return engine.url.database in (None, "", ":memory:") or "mode=memory" in str(engine.url)


def _sqlite_immediate_engine(engine: Engine) -> Engine:
    """A one-connection engine on the same SQLite file whose transactions are BEGIN IMMEDIATE.

    The sqlite3 driver begins transactions lazily and never before DDL, so Alembic's
    CREATE TABLEs would each commit on their own; with the driver's own transaction handling
    off and an explicit BEGIN IMMEDIATE, the whole upgrade is one transaction that holds the
    write lock from its first statement (others wait up to the busy timeout).
    """
    locked = make_engine(engine.url.render_as_string(hide_password=False), poolclass=NullPool)

    @event.listens_for(locked, "connect")
    def _driver_autocommit(connection: Any, _record: Any) -> None:
        connection.isolation_level = None

    @event.listens_for(locked, "begin")
    def _begin_immediate(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return locked


def _insert(engine: Engine) -> Any:
    return pg_insert if engine.dialect.name == "postgresql" else sqlite_insert


def make_engine(url: str, **options: Any) -> Engine:
    """An engine with SQLite set up for concurrent writers and crash-safe commits.

    A PostgreSQL URL without a driver (`postgresql://`, `postgres://`: what managed databases
    and CloudNativePG's generated Secret hand out) means psycopg 3, the driver installed;
    SQLAlchemy would otherwise look for psycopg2, which is not.
    """
    url = _with_postgres_driver(url)
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"timeout": 30, "check_same_thread": False}, **options
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(connection: Any, _record: Any) -> None:
            cursor = connection.cursor()
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA synchronous=FULL")
            _enable_wal(cursor)
            cursor.close()

        return engine
    return create_engine(
        url, **{"pool_pre_ping": True, "pool_size": 10, "max_overflow": 20, **options}
    )


SQLITE_BUSY_TIMEOUT_MS = 30_000


def _with_postgres_driver(url: str) -> str:
    scheme, separator, rest = url.partition("://")
    if separator and scheme in ("postgresql", "postgres"):
        return f"postgresql+psycopg://{rest}"
    return url


def _enable_wal(cursor: Any) -> None:
    """Switch the file to WAL (persistent), retrying while another connection holds it.

    Changing the journal mode needs an exclusive lock and SQLite answers "database is
    locked" at once instead of waiting for the busy timeout: two worker processes opening a
    fresh database at the same moment failed their start in 3 of 20 trials without this.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    delay = 0.005
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.1)


def _row(service_id: str, entry: FeedbackEntry, received_at: datetime) -> dict[str, Any]:
    reason = entry.overrideReason.reason if entry.overrideReason else None
    accepted = [s.id for s in entry.acceptedSuggestions or []]
    return {
        "service_id": service_id,
        "card_uuid": entry.card,
        "outcome": entry.outcome,
        "outcome_timestamp": entry.outcomeTimestamp.astimezone(UTC),
        "accepted_suggestions": json.dumps(accepted) if accepted else None,
        "override_reason_system": reason.system if reason else None,
        "override_reason_code": reason.code if reason else None,
        "override_comment": entry.overrideReason.userComment if entry.overrideReason else None,
        "received_at": received_at,
    }


@dataclass(frozen=True)
class StoredFeedback:
    """A newly stored feedback entry, with the topic of its card ("unknown" when this
    deployment has no record of issuing it, e.g. still in another replica's batch)."""

    card_uuid: str
    outcome: str
    topic: str


@dataclass(frozen=True)
class IssuedCard:
    card_uuid: str
    service_id: str
    topic: str
    indicator: str
    issued_at: datetime


UNKNOWN_TOPIC = "unknown"


class FeedbackStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def save(self, service_id: str, entries: Iterable[FeedbackEntry]) -> int:
        """Store entries in one transaction; returns how many were new."""
        return len(self.store(service_id, entries))

    def store(self, service_id: str, entries: Iterable[FeedbackEntry]) -> list[StoredFeedback]:
        """Store entries in one transaction; returns the new ones with their card topics."""
        now = datetime.now(UTC)
        rows = [_row(service_id, entry, now) for entry in entries]
        # RETURNING, not rowcount: SQLAlchemy 2.1 with psycopg reports rowcount -1 here.
        statement = (
            _insert(self.engine)(feedback)
            .values(rows)
            .on_conflict_do_nothing()
            .returning(feedback.c.card_uuid, feedback.c.outcome)
        )
        with self.engine.begin() as connection:
            new = connection.execute(statement).all()
            topics = dict(
                connection.execute(
                    select(card_issued.c.card_uuid, card_issued.c.topic).where(
                        card_issued.c.card_uuid.in_({row.card_uuid for row in new})
                    )
                ).all()
            )
        return [
            StoredFeedback(row.card_uuid, row.outcome, topics.get(row.card_uuid, UNKNOWN_TOPIC))
            for row in new
        ]

    def record_issued(self, cards: Iterable[IssuedCard]) -> None:
        """Remember issued cards (a repeated hook call yields the same uuids: kept once)."""
        rows = [vars(card) for card in cards]
        if rows:
            # executemany of one statement: compiled once and cached, and no bound-parameter
            # limit (PostgreSQL's 65,535) however many cards accumulated, unlike one
            # multi-row VALUES, which is compiled anew for every row count.
            with self.engine.begin() as connection:
                connection.execute(_insert(self.engine)(card_issued).on_conflict_do_nothing(), rows)

    def count(self, service_id: str | None = None) -> int:
        query = select(func.count()).select_from(feedback)
        if service_id is not None:
            query = query.where(feedback.c.service_id == service_id)
        with self.engine.connect() as connection:
            return int(connection.execute(query).scalar_one())


_LATEST_EXPIRY = 2**63 - 1  # the largest BigInteger


class DatabaseReplayCache:
    """JWT `jti` replay protection shared by every worker process through the database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def check_and_store(self, jti: str, issuer: str, expires_at: int) -> bool:
        """True when the jti is new (and now remembered until `expires_at`).

        `expires_at` is held within the column's signed 64 bits: a later expiry means the same
        (remembered for ever), and the database would refuse it as an overflow.
        """
        expires_at = max(0, min(expires_at, _LATEST_EXPIRY))
        now = int(time.time())
        # RETURNING, not rowcount: with psycopg, SQLAlchemy 2.1 reports rowcount -1 for this
        # INSERT, which `bool()` took for "new": every replayed jti was accepted.
        statement = (
            _insert(self.engine)(jwt_seen)
            .values(issuer=issuer, jti=jti, expires_at=expires_at)
            .on_conflict_do_nothing()
            .returning(jwt_seen.c.jti)
        )
        with self.engine.begin() as connection:
            connection.execute(
                sql_delete(jwt_seen).where(
                    jwt_seen.c.issuer == issuer, jwt_seen.c.jti == jti, jwt_seen.c.expires_at < now
                )
            )
            return connection.execute(statement).first() is not None

    def purge_expired(self) -> int:
        with self.engine.begin() as connection:
            result = connection.execute(
                sql_delete(jwt_seen).where(jwt_seen.c.expires_at < int(time.time()))
            )
            return result.rowcount or 0
