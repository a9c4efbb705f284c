"""What an operator relies on: liveness and readiness, Prometheus metrics (summed over worker
processes), graceful shutdown, a 413 that clients writing their whole body first can read,
and log lines that name the route of a CORS preflight and the issuer of a verified call."""

from __future__ import annotations

import json
import re
import signal
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from cds.store import housekeeping
from cds.store.storage import DatabaseReplayCache, jwt_seen, make_engine, migrate
from tests.conftest import SERVICE_PV, LiveServer
from tests.support.cards import cards_by_code
from tests.support.fhir import hook_request, lab, twitch
from tests.support.fhir_stub import running_stub
from tests.support.jwt_tokens import TokenFactory, bearer
from tests.support.outcome import refusal
from tests.support.postgres import running_postgres
from tests.support.waiting import wait_for
from tests.support.workers import calls_on_every_worker, worker_of


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if match:
            found = dict(re.findall(r'(\w+)="([^"]*)"', match[1]))
            if all(found.get(key) == value for key, value in labels.items()):
                return float(match[2])
    return 0.0


def log_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def low_magnesium_call() -> dict[str, Any]:
    return hook_request(twitch(), lab("19123-9", 1.4, "mg/dL"))


# --- health and readiness ---------------------------------------------------------------


def test_health_and_ready_answer_without_a_token(make_client: Callable[..., TestClient]) -> None:
    client = make_client(
        auth="jwt",
        public_base_url="http://testserver",
        trusted_issuers=TokenFactory().trusted_issuers(),
    )
    for path in ("/health", "/healthz"):
        assert client.get(path).json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": {"rules": "ok", "database": "ok"}}
    assert refusal(client.get("/cds-services"), 401) == "missing bearer token"


def test_ready_fails_while_the_database_is_down_and_health_does_not(
    make_client: Callable[..., TestClient],
) -> None:
    with running_postgres() as server:
        client = make_client(database_url=server.url())
        assert client.get("/ready").status_code == 200
        server.stop()
        ready = client.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["checks"] == {"rules": "ok", "database": "failed"}
        assert "postgres" not in ready.text  # no connection string, no driver message
        assert client.get("/health").status_code == 200


# --- metrics ----------------------------------------------------------------------------


def test_metrics_are_summed_over_worker_processes(start_server: Callable[..., LiveServer]) -> None:
    """Whichever worker answers /metrics, it reports the calls of both: calls go on until both
    workers have served some, and /metrics is read until each worker has answered it once."""
    server = start_server(workers=2)
    url = f"{server.base_url}/cds-services/{SERVICE_PV}"
    served = calls_on_every_worker(url, low_magnesium_call(), workers=2)
    calls = served.total()
    labels = {"method": "POST", "route": "/cds-services/{service_id}", "service": SERVICE_PV}
    reported_by: set[str] = set()

    def both_report_every_call() -> bool:
        with httpx.Client() as client:
            response = client.get(f"{server.base_url}/metrics")
        text = response.text
        assert response.headers["content-type"].startswith("text/plain")
        assert metric(text, "twitch_cds_http_requests_total", status="200", **labels) == calls
        assert metric(text, "twitch_cds_http_request_duration_seconds_count", **labels) == calls
        cards = metric(
            text,
            "twitch_cds_cards_total",
            service=SERVICE_PV,
            indicator="warning",
            topic="hypomagnesemia",
        )
        assert cards == calls
        reported_by.add(worker_of(response))
        return reported_by == set(served)

    wait_for(both_report_every_call, "/metrics answered by both workers")


def test_unknown_service_ids_do_not_become_metric_labels(client: TestClient) -> None:
    client.post("/cds-services/patient-12345", json=low_magnesium_call())
    text = client.get("/metrics").text
    assert "patient-12345" not in text
    assert (
        metric(
            text,
            "twitch_cds_http_requests_total",
            route="/cds-services/{service_id}",
            service="",
            status="404",
        )
        >= 1
    )


def test_fhir_fallback_calls_and_failures_are_counted(client: TestClient) -> None:
    before = client.get("/metrics").text
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    request = {
        **hook_request(twitch()),
        "prefetch": {},
        "fhirServer": f"http://127.0.0.1:{port}/fhir",
    }
    unreachable = refusal(client.post(f"/cds-services/{SERVICE_PV}", json=request), 412)
    assert "conditions: FHIR server unreachable" in unreachable
    after = client.get("/metrics").text
    for key in ("conditions", "observations", "medicationRequests", "patient"):
        for name in (
            "twitch_cds_fhir_fallback_queries_total",
            "twitch_cds_fhir_fallback_failures_total",
        ):
            assert metric(after, name, key=key) == metric(before, name, key=key) + 1, name


# --- graceful shutdown ------------------------------------------------------------------


def test_sigterm_lets_the_call_in_flight_finish(start_server: Callable[..., LiveServer]) -> None:
    """A call still at work when SIGTERM arrives gets its answer, then the app's shutdown runs
    (database connections closed, "stopped" logged).

    The call is held in flight by the EHR's FHIR server, which this test controls: the
    service fetches the observations the EHR did not prefetch, and that answer is held back
    until uvicorn has logged that it waits for the open connection to close.
    """
    server = start_server(workers=1, TWITCH_CDS_FHIR_TIMEOUT_SECONDS="60")
    request = low_magnesium_call()
    observations = request["prefetch"].pop("observations")
    release = threading.Event()
    with (
        running_stub(body=observations, hold=release) as fhir,
        ThreadPoolExecutor(1) as pool,
    ):
        call = pool.submit(
            httpx.post,
            f"{server.base_url}/cds-services/{SERVICE_PV}",
            json={**request, "fhirServer": fhir.base_url},
            timeout=60,
        )
        wait_for(fhir.arrived.is_set, "the service's fetch from the FHIR server")
        server.process.send_signal(signal.SIGTERM)
        wait_for(lambda: logged(server, "Waiting for connections to close"), "the graceful stop")
        assert not call.done()
        release.set()
        response = call.result()
    assert response.status_code == 200, response.text
    assert "hypomagnesemia" in cards_by_code(response.json())
    # uvicorn re-raises the signal after its graceful shutdown, so the exit status says so.
    assert server.process.wait(timeout=30) in (0, -signal.SIGTERM)
    events = [record.get("event") for record in log_records(server.log_path)]
    assert events.index("Shutting down") < events.index("hook") < events.index("stopped")


def logged(server: LiveServer, event: str) -> bool:
    return any(record.get("event", "").startswith(event) for record in log_records(server.log_path))


# --- 413 for clients that write the whole body first -------------------------------------


def test_oversized_body_written_in_full_before_reading_gets_413(live_server: LiveServer) -> None:
    """Like many HTTP clients: send headers and the whole 6 MB body, only then read."""
    body = b'{"hook": "patient-view", "pad": "' + b"x" * (6 * 1024 * 1024) + b'"}'
    head = (
        f"POST /cds-services/{SERVICE_PV} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", live_server.port), timeout=20) as sock:
        sock.sendall(head + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 413 Request Entity Too Large"
    assert b"connection: close" in rest.lower()
    assert json.loads(rest.partition(b"\r\n\r\n")[2])["resourceType"] == "OperationOutcome"


# --- logs ---------------------------------------------------------------------------------


def test_preflight_is_logged_under_its_route_and_a_verified_call_with_its_issuer(
    start_server: Callable[..., LiveServer],
) -> None:
    tokens = TokenFactory()
    server = start_server(
        TWITCH_CDS_AUTH="jwt", TWITCH_CDS_TRUSTED_ISSUERS=json.dumps(tokens.trusted_issuers())
    )
    url = f"{server.base_url}/cds-services/{SERVICE_PV}"
    preflight = httpx.options(
        url,
        headers={
            "Origin": "https://sandbox.cds-hooks.org",
            "Access-Control-Request-Method": "POST",
        },
    )
    assert preflight.status_code == 200
    call = httpx.post(url, json=low_magnesium_call(), headers=bearer(tokens.token(url)))
    assert call.status_code == 200
    by_request: dict[str, list[dict[str, Any]]] = {}
    for record in log_records(server.log_path):
        by_request.setdefault(record.get("request_id", ""), []).append(record)
    [preflight_line] = [
        r for r in by_request[preflight.headers["x-request-id"]] if r["event"] == "request"
    ]
    assert preflight_line["route"] == "/cds-services/{service_id}"
    assert preflight_line["method"] == "OPTIONS"
    lines = {r["event"]: r for r in by_request[call.headers["x-request-id"]]}
    assert lines["hook"]["issuer"] == tokens.issuer
    assert lines["request"]["issuer"] == tokens.issuer


# --- housekeeping -------------------------------------------------------------------------


def test_expired_token_ids_are_purged_in_the_background(
    make_client: Callable[..., TestClient], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a purge the replay table grows by one row per call, for ever."""
    database = f"sqlite:///{tmp_path / 'purge.sqlite3'}"
    engine = make_engine(database)
    migrate(engine)
    cache = DatabaseReplayCache(engine)
    now = int(time.time())
    for jti, expires in (("expired-1", now - 5), ("expired-2", now - 1), ("current", now + 300)):
        assert cache.check_and_store(jti, "https://ehr.example.org", expires)

    def remembered() -> list[str]:
        with engine.connect() as connection:
            return sorted(connection.execute(select(jwt_seen.c.jti)).scalars())

    monkeypatch.setattr(housekeeping, "REPLAY_PURGE_SECONDS", 0.1)
    make_client(
        auth="jwt",
        public_base_url="http://testserver",
        trusted_issuers=TokenFactory().trusted_issuers(),
        database_url=database,
    )
    wait_for(lambda: remembered() == ["current"], "the purge of the expired token ids")
    engine.dispose()
