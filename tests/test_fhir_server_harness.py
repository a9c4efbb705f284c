"""Tests of the FHIR test server harness itself (tests/support/fhir_server.py).

Why: every integration test of the CDS service trusts this server to behave like an EHR's
FHIR API: transactions that resolve urn:uuid references, real paging, auth and slowness.
If one of those silently broke, the service's tests would pass for the wrong reason.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.fhir_server import FhirTestServer, node_available, run_fhir_server
from tests.support.paths import SYNTHEA

pytestmark = pytest.mark.skipif(not node_available(), reason="node/npm not installed")

SYNTHEA_DIR = SYNTHEA
LUPE = SYNTHEA_DIR / "Lupe_Little_f8a42e66-8c03-4ee6-85e3-3817c2942de1.json"
TWANDA = SYNTHEA_DIR / "Twanda_Rippin_28529cd4-05d7-4df6-aa7c-7fb4d7af2e0f.json"
TOKEN = "harness-secret"


def read_bundle(path: Path) -> dict[str, Any]:
    bundle: dict[str, Any] = json.loads(path.read_text())
    return bundle


def count_type(bundle: dict[str, Any], resource_type: str) -> int:
    return sum(e["resource"]["resourceType"] == resource_type for e in bundle["entry"])


def created_id(response: dict[str, Any], resource_type: str) -> str:
    """The server-assigned id of the first `resource_type` in a transaction-response."""
    for entry in response["entry"]:
        location: str = entry["response"]["location"]
        if location.startswith(f"{resource_type}/"):
            return location.split("/")[1]
    raise AssertionError(f"no {resource_type} in transaction response")


@pytest.fixture(scope="module")
def fhir() -> Iterator[FhirTestServer]:
    yield from run_fhir_server()


@pytest.fixture(scope="module")
def lupe(fhir: FhirTestServer) -> str:
    """Loads Lupe Little once for the module; returns the server-assigned Patient id."""
    return created_id(fhir.load(read_bundle(LUPE)), "Patient")


def test_metadata_is_a_capability_statement(fhir: FhirTestServer) -> None:
    response = httpx.get(f"{fhir.base_url}/metadata")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/fhir+json")
    body = response.json()
    assert body["resourceType"] == "CapabilityStatement"
    assert body["fhirVersion"] == "4.0.1"
    observation = next(r for r in body["rest"][0]["resource"] if r["type"] == "Observation")
    assert {"patient", "code"} <= {p["name"] for p in observation["searchParam"]}


def test_transaction_rewrites_urn_uuid_references(fhir: FhirTestServer, lupe: str) -> None:
    patient = httpx.get(f"{fhir.base_url}/Patient/{lupe}").json()
    assert patient["name"][0]["family"] == "Little"
    page = httpx.get(f"{fhir.base_url}/Observation", params={"patient": lupe, "_count": 1}).json()
    assert page["entry"][0]["resource"]["subject"]["reference"] == f"Patient/{lupe}"


def test_paging_follows_next_links(fhir: FhirTestServer, lupe: str) -> None:
    expected = count_type(read_bundle(LUPE), "Observation")
    url: str | None = f"{fhir.base_url}/Observation?patient={lupe}&_count=5"
    ids: list[str] = []
    pages = 0
    while url:
        assert url.startswith(fhir.base_url), "next must be an absolute URL on this server"
        bundle = httpx.get(url).json()
        assert bundle["type"] == "searchset"
        assert bundle["total"] == expected
        assert len(bundle.get("entry", [])) <= 5
        for entry in bundle.get("entry", []):
            assert entry["fullUrl"] == f"{fhir.base_url}/Observation/{entry['resource']['id']}"
            ids.append(entry["resource"]["id"])
        url = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)
        pages += 1
    assert pages == -(-expected // 5)
    assert len(ids) == len(set(ids)) == expected


def test_token_and_code_search(fhir: FhirTestServer, lupe: str) -> None:
    # Body weight (29463-7) and body height (8302-2), comma = OR, as the CDS service sends them.
    codes = "http://loinc.org|29463-7,http://loinc.org|8302-2"
    bundle = httpx.get(
        f"{fhir.base_url}/Observation", params={"patient": lupe, "code": codes}
    ).json()
    found = {e["resource"]["code"]["coding"][0]["code"] for e in bundle["entry"]}
    assert found == {"29463-7", "8302-2"}


def test_post_search_form_encoded(fhir: FhirTestServer, lupe: str) -> None:
    response = httpx.post(
        f"{fhir.base_url}/Observation/_search", data={"patient": lupe, "_count": "3"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/fhir+json")
    bundle = response.json()
    assert len(bundle["entry"]) == 3
    assert bundle["total"] == count_type(read_bundle(LUPE), "Observation")
    next_url = next(link["url"] for link in bundle["link"] if link["relation"] == "next")
    second = httpx.get(next_url).json()
    first_ids = {e["resource"]["id"] for e in bundle["entry"]}
    assert first_ids.isdisjoint(e["resource"]["id"] for e in second["entry"])


def test_load_keep_ids_preserves_synthea_ids(fhir: FhirTestServer) -> None:
    bundle = read_bundle(TWANDA)
    patient_id = next(
        e["resource"]["id"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"
    )
    fhir.load(bundle, keep_ids=True)
    assert httpx.get(f"{fhir.base_url}/Patient/{patient_id}").status_code == 200
    observations = httpx.get(
        f"{fhir.base_url}/Observation", params={"patient": patient_id, "_summary": "count"}
    ).json()
    assert observations["total"] == count_type(bundle, "Observation")


def test_search_params_the_engine_would_ignore_are_400(fhir: FhirTestServer, lupe: str) -> None:
    url = f"{fhir.base_url}/Observation"
    for params in ({"patient": lupe, "bogus": "1"}, {"value-quantity": "gt100"}):
        response = httpx.get(url, params=params)
        assert response.status_code == 400, params
        assert response.json()["resourceType"] == "OperationOutcome"
    lenient = httpx.get(url, params={"bogus": "1"}, headers={"Prefer": "handling=lenient"})
    assert lenient.status_code == 200
    assert lenient.json()["total"] == 0  # Medplum's own behaviour: matches nothing
    by_id = httpx.get(f"{fhir.base_url}/Patient", params={"_id": lupe}).json()
    assert by_id["total"] == 1


def test_unknown_resource_is_404_operation_outcome(fhir: FhirTestServer) -> None:
    response = httpx.get(f"{fhir.base_url}/Patient/does-not-exist")
    assert response.status_code == 404
    assert response.json()["resourceType"] == "OperationOutcome"


def test_bearer_token_and_delay() -> None:
    with FhirTestServer(token=TOKEN, delay_ms=300) as fhir:
        assert httpx.get(f"{fhir.base_url}/healthz").status_code == 200  # stays open, no delay

        for headers in ({}, {"Authorization": "Bearer wrong"}):
            response = httpx.get(f"{fhir.base_url}/metadata", headers=headers)
            assert response.status_code == 401
            assert response.json()["resourceType"] == "OperationOutcome"

        started = time.monotonic()
        response = httpx.get(f"{fhir.base_url}/Patient", headers=fhir.headers)
        assert response.status_code == 200
        assert time.monotonic() - started >= 0.3

        with pytest.raises(httpx.ReadTimeout):
            httpx.get(f"{fhir.base_url}/Patient", headers=fhir.headers, timeout=0.1)

        patient = {"resourceType": "Patient", "id": "p1"}
        fhir.load(
            {
                "resourceType": "Bundle",
                "type": "transaction",
                "entry": [{"resource": patient, "request": {"method": "PUT", "url": "Patient/p1"}}],
            }
        )
        with fhir.client() as client:
            assert client.get("/Patient/p1").status_code == 200
            fhir.reset()
            assert client.get("/Patient/p1").status_code == 404
        pid = fhir.pid
    assert pid is not None and fhir.pid is None
