"""The real server under load and under faults (issue 5, item 4), on loopback only.

- 20,000 patient-view calls at concurrency 32 against `serve --workers 2`: no error, the
  expected cards every time, and flat memory (the workers' RSS after a 2,000-call warm-up
  and at the end differ by less than 10 %).
- 2,000 concurrent feedback posts, with repeats: each distinct entry stored exactly once, on
  SQLite (WAL) and on PostgreSQL.
- SIGKILL of every server process in the middle of feedback posts: every entry acknowledged
  with a 200 before the kill is in the database, and the server starts again on it.
- Start, stop and start again on an existing database: the data is there, the schema at the
  Alembic head, and no error in the logs.

Run with `-s` to see throughput and memory figures.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
import psutil
import pytest
from sqlalchemy import Engine, select

from bench.cases import EXPECTED_CARDS, bench_body, card_codes
from cds.store.storage import feedback, head_revision, make_engine, schema_revision
from tests.conftest import SERVICE_PV, LiveServer
from tests.support.raw_http import RawConnection

LOAD_CALLS = 20_000
LOAD_WARMUP = 2_000
LOAD_CONCURRENCY = 32
MAX_RSS_GROWTH = 0.10
JSON = {"Content-Type": "application/json"}

StartServer = Callable[..., LiveServer]


@pytest.fixture
def db(db_url: str) -> Iterator[Engine]:
    """A second, independent connection to the server's database, to count what it stored."""
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


def stored_cards(engine: Engine) -> list[str]:
    with engine.connect() as connection:
        return [card for (card,) in connection.execute(select(feedback.c.card_uuid))]


def worker_rss_mb(server: LiveServer) -> float:
    """Resident memory of the server's worker processes (children of the supervisor)."""
    children = psutil.Process(server.process.pid).children(recursive=True)
    assert children, "no worker processes found"
    return sum(child.memory_info().rss for child in children) / 1e6


def worker_cpu_seconds(server: LiveServer) -> list[float]:
    """CPU time of each worker: shows whether the load was shared between them."""
    children = psutil.Process(server.process.pid).children(recursive=True)
    return sorted(round(sum(child.cpu_times()[:2]), 1) for child in children)


def log_records(server: LiveServer) -> list[dict[str, Any]]:
    """Every line of the server's log, each of which must be a JSON object."""
    records = []
    for number, line in enumerate(server.log_path.read_text().splitlines(), 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"{server.log_path}:{number} is not JSON: {line[:300]}")
    return records


def assert_no_error_logged(server: LiveServer) -> None:
    errors = [
        r
        for r in log_records(server)
        if r.get("level") in ("error", "critical") or "exception" in r
    ]
    assert not errors, errors[:3]


def client_limits(connections: int) -> httpx.Limits:
    """A pool that drops a connection idle for 2 s, well before uvicorn's 5 s keep-alive.

    Otherwise httpx may pick a connection that sat idle for ~5 s just as the server closes it:
    the request meets a reset (seen once in 20,000 calls). EHR clients need the same setting.
    """
    return httpx.Limits(
        max_connections=connections, max_keepalive_connections=connections, keepalive_expiry=2.0
    )


async def run_bounded(jobs: int, concurrency: int, job: Callable[[int], Awaitable[None]]) -> None:
    """Run job(0) .. job(jobs - 1) with at most `concurrency` in flight."""
    numbers = iter(range(jobs))

    async def lane() -> None:
        for number in numbers:
            await job(number)

    await asyncio.gather(*(lane() for _ in range(concurrency)))


# --- (a) patient-view load with flat memory -----------------------------------------------


def test_twenty_thousand_patient_view_calls_without_error_and_with_flat_memory(
    start_server: StartServer,
) -> None:
    """Zero errors and the same cards for every call; workers' RSS after warm-up vs at the end.

    The client is `tests.support.raw_http.RawConnection`: 32 keep-alive connections, each used
    by one lane for the whole run, as wrk does. With httpx as the client (about as much CPU per call
    as the server on this 2-core machine) the run took ~180 s when the machine was busy, and
    the starved workers queued bursts of requests whose bodies raised their RSS in ~10 MB
    steps: +2 to +10 % in six runs, noise as large as the leak looked for. With this client
    (and with wrk) the same server stayed within ~1 %.
    """
    server = start_server(workers=2)
    url = f"{server.base_url}/cds-services/{SERVICE_PV}"
    body = bench_body()
    failures: list[str] = []
    failed = 0
    completed = 0
    rss_series: list[tuple[int, float]] = []

    async def drive(connections: list[RawConnection], calls: int, ramp: float = 0) -> float:
        remaining = iter(range(calls))

        async def lane(number: int, connection: RawConnection) -> None:
            nonlocal failed, completed
            await asyncio.sleep(number * ramp)
            for _ in remaining:
                try:
                    status, answer = await connection.post()
                    ok = status == 200 and card_codes(json.loads(answer)) == EXPECTED_CARDS
                    detail = f"{status} {answer[:200]!r}"
                except (OSError, ValueError, asyncio.IncompleteReadError) as error:
                    ok, detail = False, repr(error)
                if not ok:
                    failed += 1
                    if len(failures) < 5:
                        failures.append(detail)
                completed += 1
                if completed % 2000 == 0:
                    rss_series.append((completed, round(worker_rss_mb(server), 1)))

        started = time.perf_counter()
        await asyncio.gather(*(lane(n, connection) for n, connection in enumerate(connections)))
        return time.perf_counter() - started

    async def run() -> tuple[float, float, float, float]:
        connections = [RawConnection(url, body) for _ in range(LOAD_CONCURRENCY)]
        try:
            # Connections opened one by one while the first ones already load the workers:
            # opened in one burst, all 32 were accepted by one worker in one run of three,
            # which then did all the work at 100 % CPU while the other idled (half the
            # throughput; uvicorn's workers share one listening socket).
            warmup_seconds = await drive(connections, LOAD_WARMUP, ramp=0.05)
            rss_after_warmup = worker_rss_mb(server)
            seconds = await drive(connections, LOAD_CALLS - LOAD_WARMUP)
            return warmup_seconds, rss_after_warmup, seconds, worker_rss_mb(server)
        finally:
            for connection in connections:
                await connection.close()

    warmup_seconds, rss_after_warmup, seconds, rss_at_end = asyncio.run(run())
    growth = rss_at_end / rss_after_warmup - 1
    print(
        f"\npatient-view load: {LOAD_CALLS} calls, concurrency {LOAD_CONCURRENCY}, "
        f"2 workers, body {len(body) / 1024:.1f} KiB; warm-up {LOAD_WARMUP} calls in "
        f"{warmup_seconds:.1f} s ({LOAD_WARMUP / warmup_seconds:.0f} req/s); "
        f"then {LOAD_CALLS - LOAD_WARMUP} calls in {seconds:.1f} s "
        f"({(LOAD_CALLS - LOAD_WARMUP) / seconds:.0f} req/s); failed: {failed}; "
        f"workers' RSS {rss_after_warmup:.1f} MB after warm-up, {rss_at_end:.1f} MB at the "
        f"end ({growth:+.1%}); RSS MB every 2,000 calls: {rss_series}; CPU seconds per "
        f"worker: {worker_cpu_seconds(server)}"
    )
    assert failed == 0, failures
    assert growth < MAX_RSS_GROWTH, rss_series
    assert_no_error_logged(server)
    hooks = [r for r in log_records(server) if r.get("event") == "hook"]
    assert len(hooks) == LOAD_CALLS
    assert {r["cards"] for r in hooks} == {len(EXPECTED_CARDS)}


# --- (b) concurrent feedback, each distinct entry stored once -----------------------------


def feedback_entry(card: str, index: int) -> dict[str, Any]:
    if index % 2:
        return {
            "card": card,
            "outcome": "accepted",
            "acceptedSuggestions": [{"id": f"s-{card}"}],
            "outcomeTimestamp": f"2026-11-26T10:{index // 60 % 60:02d}:{index % 60:02d}Z",
        }
    return {
        "card": card,
        "outcome": "overridden",
        "overrideReason": {
            "reason": {"code": "not-relevant", "system": "https://example.org/override"}
        },
        "outcomeTimestamp": f"2026-11-26T11:{index // 60 % 60:02d}:{index % 60:02d}Z",
    }


def test_two_thousand_concurrent_feedback_posts_store_each_entry_once(
    start_server: StartServer, db_url: str, db: Engine
) -> None:
    server = start_server(workers=2, TWITCH_CDS_DATABASE_URL=db_url)
    url = f"{server.base_url}/cds-services/{SERVICE_PV}/feedback"
    rng = random.Random(5)
    distinct = [feedback_entry(f"card-{i:04d}", i) for i in range(1850)]
    posts = [[entry] for entry in distinct]
    posts += [[rng.choice(distinct)] for _ in range(100)]  # a client resending
    posts += [[rng.choice(distinct), rng.choice(distinct)] for _ in range(30)]
    posts += [[entry, entry] for entry in rng.sample(distinct, 20)]  # twice in one body
    rng.shuffle(posts)
    assert len(posts) == 2000
    answers: list[dict[str, Any]] = []
    problems: list[str] = []

    async def post_all() -> float:
        limits = client_limits(64)
        async with httpx.AsyncClient(limits=limits, timeout=120) as client:

            async def post(entries: list[dict[str, Any]]) -> None:
                response = await client.post(url, json={"feedback": entries})
                if response.status_code == 200:
                    answers.append(response.json())
                else:
                    problems.append(f"{response.status_code} {response.text[:200]}")

            started = time.perf_counter()
            # 64 in flight at any moment across both workers (a semaphore in front of
            # httpx's pool: 2,000 requests queued inside httpx make the client, not the
            # server, the bottleneck).
            await run_bounded(len(posts), 64, lambda number: post(posts[number]))
            return time.perf_counter() - started

    seconds = asyncio.run(post_all())
    cards = stored_cards(db)
    print(
        f"\nfeedback on {db.dialect.name}: {len(posts)} concurrent posts in {seconds:.1f} s "
        f"({len(posts) / seconds:.0f}/s), {len(distinct)} distinct entries, "
        f"{len(cards)} rows stored"
    )
    assert problems == []
    assert len(answers) == len(posts)
    assert sum(a["stored"] for a in answers) == len(distinct)  # each reported new once
    assert len(cards) == len(distinct)
    assert sorted(cards) == sorted(entry["card"] for entry in distinct)
    assert_no_error_logged(server)


# --- (c) SIGKILL mid-load loses no acknowledged feedback ----------------------------------


def test_sigkill_mid_load_loses_no_acknowledged_feedback(
    start_server: StartServer, db_url: str, db: Engine
) -> None:
    server = start_server(workers=2, TWITCH_CDS_DATABASE_URL=db_url)
    url = f"{server.base_url}/cds-services/{SERVICE_PV}/feedback"
    acknowledged: list[str] = []
    sent: list[str] = []
    killed_at: list[int] = []

    async def post_until_dead() -> None:
        limits = client_limits(16)
        async with httpx.AsyncClient(limits=limits, timeout=10) as client:
            stop = asyncio.Event()

            async def lane(lane_number: int) -> None:
                for index in range(lane_number, 1_000_000, 16):
                    if stop.is_set():
                        return
                    card = f"kill-{index:06d}"
                    sent.append(card)
                    try:
                        response = await client.post(
                            url, json={"feedback": [feedback_entry(card, index)]}
                        )
                    except httpx.TransportError:
                        stop.set()  # the server is gone: unknown outcome, not acknowledged
                        return
                    if response.status_code == 200 and response.json()["stored"] == 1:
                        acknowledged.append(card)
                    if len(acknowledged) >= 400 and not killed_at:
                        killed_at.append(len(acknowledged))
                        server.stop(kill=True)  # while the other lanes' posts are in flight

            await asyncio.gather(*(lane(n) for n in range(16)))

    asyncio.run(post_until_dead())
    assert killed_at, "the server was not killed"
    in_database = set(stored_cards(db))
    lost = sorted(set(acknowledged) - in_database)
    print(
        f"\nSIGKILL on {db.dialect.name}: {len(acknowledged)} entries acknowledged "
        f"(kill after {killed_at[0]}), {len(sent)} sent, {len(in_database)} in the "
        f"database, lost: {len(lost)}"
    )
    assert lost == []
    assert in_database <= set(sent)

    # The server starts again on the database it was killed on, and keeps working.
    again = start_server(workers=2, TWITCH_CDS_DATABASE_URL=db_url)
    response = httpx.post(
        f"{again.base_url}/cds-services/{SERVICE_PV}/feedback",
        json={"feedback": [feedback_entry(acknowledged[0], 0), feedback_entry("after-restart", 1)]},
    )
    assert response.status_code == 200
    assert set(stored_cards(db)) == in_database | {"after-restart"}
    assert_no_error_logged(again)


# --- (d) clean start on an existing database ----------------------------------------------


def test_service_starts_cleanly_on_an_existing_database(
    start_server: StartServer, db_url: str, db: Engine
) -> None:
    entries = [feedback_entry(f"keep-{i}", i) for i in range(10)]
    first = start_server(workers=2, TWITCH_CDS_DATABASE_URL=db_url)  # fresh database
    url = f"{first.base_url}/cds-services/{SERVICE_PV}/feedback"
    assert httpx.post(url, json={"feedback": entries}).json() == {"stored": 10, "received": 10}
    first.stop()
    assert schema_revision(db) == head_revision()

    servers = [first]
    for _ in range(2):  # and again, on the database it left behind
        server = start_server(workers=2, TWITCH_CDS_DATABASE_URL=db_url)
        servers.append(server)
        url = f"{server.base_url}/cds-services/{SERVICE_PV}/feedback"
        assert httpx.get(f"{server.base_url}/cds-services").status_code == 200
        assert httpx.post(url, json={"feedback": entries}).json() == {"stored": 0, "received": 10}
        server.stop()
    assert sorted(stored_cards(db)) == sorted(e["card"] for e in entries)
    assert schema_revision(db) == head_revision()
    for server in servers:
        assert_no_error_logged(server)
        started = [r for r in log_records(server) if r.get("event") == "started"]
        assert len(started) == 2  # both workers, neither failed its start
