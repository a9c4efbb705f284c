"""End to end against the real `twitch-cds serve` (uvicorn), called as the sandbox calls it.

The sandbox fixtures were captured with a FHIR server at 127.0.0.1:8081; here that address is
replaced by the suite's own Medplum FHIR server, so the keys the sandbox did not prefetch are
fetched for real.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.conftest import SERVICE_OS, SERVICE_PV, SERVICE_SIGN, LiveServer
from tests.support.cards import cards_by_code
from tests.support.fhir import SNOMED, condition, hook_request, lab, medication, transaction, twitch
from tests.support.fhir_server import FhirTestServer
from tests.support.outcome import refusal
from tests.support.paths import SANDBOX


def sandbox_request(name: str, fhir: FhirTestServer) -> dict[str, Any]:
    request = json.loads((SANDBOX / f"{name}.request.json").read_text())
    request["fhirServer"] = fhir.base_url
    return request


def sandbox_patient() -> dict[str, Any]:
    return {"resourceType": "Patient", "id": "p1", "gender": "female"}


def test_discovery_over_real_http(live_server: LiveServer) -> None:
    response = httpx.get(
        f"{live_server.base_url}/cds-services", headers={"Accept": "application/json"}
    )
    assert response.status_code == 200
    assert {s["id"] for s in response.json()["services"]} == {SERVICE_PV, SERVICE_OS, SERVICE_SIGN}


def test_sandbox_requests_are_answered_200(live_server: LiveServer, fhir: FhirTestServer) -> None:
    fhir.load(transaction(sandbox_patient()))
    for name, service in (
        ("patient-view", SERVICE_PV),
        ("order-select.no-drug-yet", SERVICE_OS),
        ("order-select.with-drug", SERVICE_OS),
        ("order-sign", SERVICE_SIGN),
    ):
        response = httpx.post(
            f"{live_server.base_url}/cds-services/{service}",
            json=sandbox_request(name, fhir),
            timeout=10,
        )
        assert response.status_code == 200, (name, response.text)
        # Patient p1 has no documented twitch complaint: no card, by contract.
        assert response.json() == {"cards": []}, name


def test_sandbox_patient_with_twitch_gets_cards_from_prefetch_and_fhir(
    live_server: LiveServer, fhir: FhirTestServer
) -> None:
    fhir.load(transaction(sandbox_patient(), {**twitch(), "id": "tw1"}))
    response = httpx.post(
        f"{live_server.base_url}/cds-services/{SERVICE_PV}",
        json=sandbox_request("patient-view", fhir),
        timeout=10,
    )
    cards = cards_by_code(response.json())
    # Mg 1.4 mg/dL and prednisone 20 mg come from the sandbox's own prefetch ("labs", "meds");
    # the twitch complaint comes from the FHIR server ("conditions" was not prefetched).
    assert cards["hypomagnesemia"]["indicator"] == "warning"
    assert "Prednisone 20 mg oral tablet" in cards["corticosteroid"]["detail"]


def test_full_prefetch_call_and_feedback_over_real_http(live_server: LiveServer) -> None:
    request = hook_request(
        twitch(),
        condition("26544005", SNOMED),
        lab("19123-9", 1.4, "mg/dL"),
        medication("312617", "predniSONE"),
    )
    response = httpx.post(f"{live_server.base_url}/cds-services/{SERVICE_PV}", json=request)
    cards = cards_by_code(response.json())
    red_flag = cards["red-flag-motor-neuron-disease"]
    body = {
        "feedback": [
            {
                "card": red_flag["uuid"],
                "outcome": "accepted",
                "acceptedSuggestions": [{"id": red_flag["suggestions"][0]["uuid"]}],
                "outcomeTimestamp": "2026-11-26T10:00:00Z",
            }
        ]
    }
    url = f"{live_server.base_url}/cds-services/{SERVICE_PV}/feedback"
    assert httpx.post(url, json=body).json() == {"stored": 1, "received": 1}
    assert httpx.post(url, json=body).json() == {"stored": 0, "received": 1}


def test_chunked_body_over_the_limit_is_413(live_server: LiveServer) -> None:
    def chunks():
        yield b'{"hook": "patient-view", "padding": "'
        for _ in range(6 * 1024):
            yield b"x" * 1024
        yield b'"}'

    response = httpx.post(
        f"{live_server.base_url}/cds-services/{SERVICE_PV}",
        content=chunks(),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    refusal(response, 413)
