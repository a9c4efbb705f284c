"""Feedback: stored durably through HTTP, once per distinct entry, malformed bodies refused."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import create_engine, select

from cds.store.storage import feedback
from tests.conftest import SERVICE_PV
from tests.support.outcome import refusal
from tests.support.paths import SANDBOX


def rows(database_url: str) -> list[dict]:
    engine = create_engine(database_url)
    with engine.connect() as connection:
        result = [dict(row._mapping) for row in connection.execute(select(feedback))]
    engine.dispose()
    return result


def test_sandbox_feedback_round_trip_into_the_database(make_client, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fb.sqlite3'}"
    client: TestClient = make_client(database_url=url)
    accepted = json.loads((SANDBOX / "feedback.accepted.json").read_text())
    overridden = json.loads((SANDBOX / "feedback.overridden.json").read_text())
    assert client.post(f"/cds-services/{SERVICE_PV}/feedback", json=accepted).status_code == 200
    assert client.post(f"/cds-services/{SERVICE_PV}/feedback", json=overridden).status_code == 200
    stored = sorted(rows(url), key=lambda r: r["outcome"])
    assert [r["outcome"] for r in stored] == ["accepted", "overridden"]
    assert stored[0]["card_uuid"] == "f4811443-5ef5-454e-88ef-030f17ba5de4"
    assert json.loads(stored[0]["accepted_suggestions"]) == ["39c2eb28-fce8-4b87-b592-98d23db5b2cc"]
    assert stored[0]["service_id"] == SERVICE_PV


def test_repeated_entry_is_stored_once(make_client, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fb.sqlite3'}"
    client: TestClient = make_client(database_url=url)
    entry = json.loads((SANDBOX / "feedback.overridden.json").read_text())
    first = client.post(f"/cds-services/{SERVICE_PV}/feedback", json=entry).json()
    second = client.post(f"/cds-services/{SERVICE_PV}/feedback", json=entry).json()
    assert (first["stored"], second["stored"]) == (1, 0)
    assert len(rows(url)) == 1


def test_override_reason_is_stored(make_client, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fb.sqlite3'}"
    client: TestClient = make_client(database_url=url)
    body = {
        "feedback": [
            {
                "card": "c-1",
                "outcome": "overridden",
                "overrideReason": {
                    "reason": {"code": "already-addressed", "system": "https://x/finding"}
                },
                "outcomeTimestamp": "2026-11-26T00:50:17.779Z",
            }
        ]
    }
    assert client.post(f"/cds-services/{SERVICE_PV}/feedback", json=body).status_code == 200
    assert rows(url)[0]["override_reason_code"] == "already-addressed"


def test_malformed_feedback_is_400(client: TestClient) -> None:
    url = f"/cds-services/{SERVICE_PV}/feedback"
    for body in (
        {},
        {"feedback": "x"},
        {"feedback": [{"card": "c"}]},
        {
            "feedback": [
                {"card": "c", "outcome": "maybe", "outcomeTimestamp": "2026-11-26T00:50:17Z"}
            ]
        },
        {
            "feedback": [
                {
                    "card": "c",
                    "outcome": "accepted",
                    "acceptedSuggestions": [{"id": "s"}],
                    "outcomeTimestamp": "yesterday",
                }
            ]
        },
        {
            "feedback": [
                {"card": "c", "outcome": "accepted", "outcomeTimestamp": "2026-11-26T00:50:17Z"}
            ]
        },
    ):
        refusal(client.post(url, json=body), 400)


def test_feedback_for_unknown_service_is_404(client: TestClient) -> None:
    body = json.loads((SANDBOX / "feedback.accepted.json").read_text())
    response = client.post("/cds-services/nope/feedback", json=body)
    assert "no CDS service with this id" in refusal(response, 404)
