"""The HTTP surface an integrator relies on: discovery, errors, CORS, security headers."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from tests.conftest import SERVICE_OS, SERVICE_PV, SERVICE_SIGN
from tests.support.cards import assert_no_empty_values
from tests.support.fhir import hook_request, twitch
from tests.support.outcome import refusal
from tests.support.paths import SANDBOX

CONTRACT_KEYS = {
    "patient",
    "conditions",
    "observations",
    "medicationRequests",
    "medicationStatements",
    "familyHistory",
}


def test_discovery_lists_one_service_per_hook_with_contract_prefetch(client: TestClient) -> None:
    response = client.get("/cds-services")
    assert response.status_code == 200
    services = response.json()["services"]
    assert_no_empty_values(response.json())
    assert {s["hook"]: s["id"] for s in services} == {
        "patient-view": SERVICE_PV,
        "order-select": SERVICE_OS,
        "order-sign": SERVICE_SIGN,
    }
    for service in services:
        assert service["title"] and service["description"]
        assert set(service["prefetch"]) == CONTRACT_KEYS
        assert service["prefetch"]["patient"] == "Patient/{{context.patientId}}"
        observations = service["prefetch"]["observations"]
        assert observations.startswith("Observation?patient={{context.patientId}}&code=")
        for code in (
            "http://loinc.org|19123-9",
            "http://loinc.org|17861-6",
            "http://loinc.org|62292-8",
            "http://snomed.info/sct|82470000",
        ):
            assert code in observations
        assert "${" not in observations


def test_unknown_service_is_404_operation_outcome(client: TestClient) -> None:
    response = client.post("/cds-services/nope", json=hook_request(twitch()))
    refusal(response, 404)
    refusal(client.post("/cds-services/nope/feedback", json={"feedback": []}), 400)


def test_hook_not_matching_the_service_is_400(client: TestClient) -> None:
    request = hook_request(twitch(), hook="order-sign")
    message = refusal(client.post(f"/cds-services/{SERVICE_PV}", json=request), 400)
    assert "patient-view" in message


def test_malformed_json_is_400(client: TestClient) -> None:
    response = client.post(
        f"/cds-services/{SERVICE_PV}",
        content=b'{"hook": "patient-view",',
        headers={"Content-Type": "application/json"},
    )
    assert "malformed JSON" in refusal(response, 400)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda r: r.pop("hookInstance"),
        lambda r: r.update(hookInstance="not-a-uuid"),
        lambda r: r["context"].pop("patientId"),
        lambda r: r["context"].update(patientId=42),
        lambda r: r["context"].update(patientId="../../etc/passwd"),
        lambda r: r.update(context="p1"),
        lambda r: r.update(prefetch=["not", "an", "object"]),
        lambda r: r.update(fhirServer="not a url"),
        lambda r: r.update(fhirAuthorization={"access_token": "x"}),
        lambda r: r.update(hook=7),
    ],
)
def test_wrong_or_missing_fields_are_400_naming_the_field(client: TestClient, mutate) -> None:
    request = hook_request(twitch())
    mutate(request)
    message = refusal(client.post(f"/cds-services/{SERVICE_PV}", json=request), 400)
    assert "/etc/passwd" not in message  # errors never echo input values


def test_body_over_the_limit_is_413(make_client) -> None:
    client = make_client(max_body_bytes=4096)
    request = hook_request(twitch())
    request["prefetch"]["padding"] = {"resourceType": "Basic", "text": "x" * 10_000}
    refusal(client.post(f"/cds-services/{SERVICE_PV}", json=request), 413)


def test_wrong_content_type_is_415(client: TestClient) -> None:
    response = client.post(
        f"/cds-services/{SERVICE_PV}",
        content=json.dumps(hook_request(twitch())),
        headers={"Content-Type": "text/plain"},
    )
    refusal(response, 415)


def test_security_headers_on_every_response(client: TestClient) -> None:
    for response in (
        client.get("/cds-services"),
        client.post("/cds-services/nope", json=hook_request()),
    ):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["x-request-id"]


def test_sandbox_cors_preflights_are_allowed(client: TestClient) -> None:
    preflights = json.loads((SANDBOX / "cors-preflights.json").read_text())
    for preflight in preflights:
        response = client.options(preflight["path"], headers=preflight["headers"])
        assert response.status_code == 200, preflight["path"]
        assert response.headers["access-control-allow-origin"] == "*"
        methods = response.headers["access-control-allow-methods"]
        assert {"GET", "POST", "OPTIONS"} <= {m.strip() for m in methods.split(",")}
        allowed = response.headers["access-control-allow-headers"].lower()
        assert "authorization" in allowed and "content-type" in allowed


def test_cors_header_on_actual_responses(client: TestClient) -> None:
    response = client.get("/cds-services", headers={"Origin": "http://127.0.0.1:8080"})
    assert response.headers["access-control-allow-origin"] == "*"
