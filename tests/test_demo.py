"""`twitch-cds demo` and what the public CDS Hooks sandbox needs from both of its servers.

The sandbox (an https page) reads the FHIR server and calls the service from the tester's
browser: CORS for any origin, preflights answered, Private Network Access allowed, /metadata
with an R4 fhirVersion, form-encoded POST _search. The demo prints links with the sandbox's
own query parameters, curl lines that work, and stops both servers on Ctrl-C.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B import get_fhir_model_class

from cds.settings import PROJECT_ROOT
from cds.tools.demo import (
    DemoError,
    DemoPatient,
    ensure_node_modules,
    hook_context,
    load_patients,
    loopback,
    resolve_dates,
    sandbox_link,
)
from tests.support.demo import RunningDemo, port_is_open
from tests.support.fhir_server import FhirTestServer, node_available
from tests.support.outcome import refusal

SANDBOX_ORIGIN = "https://sandbox.cds-hooks.org"
PATIENTS = load_patients()
needs_node = pytest.mark.skipif(not node_available(), reason="needs node and npm")


def preflight(method: str, request_headers: str) -> dict[str, str]:
    """A Chromium preflight from the sandbox page to a server on the tester's machine."""
    return {
        "Origin": SANDBOX_ORIGIN,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": request_headers,
        "Access-Control-Request-Private-Network": "true",
    }


# -- the demo patients --------------------------------------------------------------------

PREFETCH_TYPES = {
    "conditions": ("Condition",),
    "observations": ("Observation",),
    "medicationRequests": ("MedicationRequest", "Medication"),
    "medicationStatements": ("MedicationStatement",),
    "familyHistory": ("FamilyMemberHistory",),
}


def full_prefetch(patient: DemoPatient) -> dict[str, Any]:
    """Every prefetch key filled from the patient's bundle, as a complete EHR would send it."""
    resources = [entry["resource"] for entry in patient.bundle(date.today())["entry"]]
    prefetch: dict[str, Any] = {
        key: {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [{"resource": r} for r in resources if r["resourceType"] in types],
        }
        for key, types in PREFETCH_TYPES.items()
    }
    prefetch["patient"] = next(r for r in resources if r["resourceType"] == "Patient")
    return prefetch


def test_demo_dates_are_relative_to_the_day_they_are_loaded() -> None:
    bundle = {"a": ["{{today - 7 days}}T08:30:00Z", {"b": "{{today - 0 days}}"}], "n": 3}
    assert resolve_dates(bundle, date(2027, 3, 2)) == {
        "a": ["2027-02-23T08:30:00Z", {"b": "2027-03-02"}],
        "n": 3,
    }


def test_demo_patients_are_valid_synthetic_r4_transactions() -> None:
    assert len(PATIENTS) >= 8
    for patient in PATIENTS:
        bundle = patient.bundle(date.today())
        assert bundle["type"] == "transaction"
        assert "{{" not in json.dumps(bundle)
        for entry in bundle["entry"]:
            resource = entry["resource"]
            assert entry["request"] == {
                "method": "PUT",
                "url": f"{resource['resourceType']}/{resource['id']}",
            }
            assert resource["meta"]["tag"][0]["code"] == "synthetic"
            get_fhir_model_class(resource["resourceType"]).model_validate(resource)


def test_every_demo_pathway_of_the_issue_is_there() -> None:
    shown = {code for patient in PATIENTS for codes in patient.cards.values() for code in codes}
    assert {
        "hypomagnesemia",
        "vitamin-d-deficiency",
        "corticosteroid",
        "red-flag-motor-neuron-disease",
        "red-flag-neuropathy",
    } <= shown
    assert any(p.exact and p.cards == {"patient-view": ["lifestyle-review"]} for p in PATIENTS)
    assert any(p.exact and p.cards == {"patient-view": []} for p in PATIENTS)
    order_patients = [p for p in PATIENTS if "order-select" in p.cards]
    assert order_patients and all(p.draft_order and "order-sign" in p.cards for p in order_patients)


def test_demo_patients_get_their_cards_through_the_http_api(client: TestClient) -> None:
    """The same expectations as the browser test, with the whole bundle as prefetch."""
    services = {s["hook"]: s["id"] for s in client.get("/cds-services").json()["services"]}
    today = date.today()
    for patient in PATIENTS:
        prefetch = full_prefetch(patient)
        for hook, expected in patient.cards.items():
            response = client.post(
                f"/cds-services/{services[hook]}",
                json={
                    "hookInstance": "0b0e7a1e-4b8d-4c1c-9d1e-4f5a6b7c8d9e",
                    "hook": hook,
                    "context": hook_context(patient, hook, today),
                    "prefetch": prefetch,
                },
            )
            shown = [card["source"]["topic"]["code"] for card in response.json()["cards"]]
            assert set(expected) <= set(shown), (patient.patient_id, hook, shown)
            if patient.exact:
                assert sorted(shown) == sorted(expected), (patient.patient_id, hook)
            assert not set(patient.absent) & set(shown)


def test_corticosteroid_patient_names_its_drug_only_by_medication_reference() -> None:
    patient = next(p for p in PATIENTS if p.patient_id == "demo-steroid-medref")
    resources = [entry["resource"] for entry in patient.bundle(date.today())["entry"]]
    requests = [r for r in resources if r["resourceType"] == "MedicationRequest"]
    medications = {f"Medication/{r['id']}" for r in resources if r["resourceType"] == "Medication"}
    assert requests and all("medicationCodeableConcept" not in r for r in requests)
    assert {r["medicationReference"]["reference"] for r in requests} <= medications


def test_readme_says_what_every_demo_patient_shows() -> None:
    readme = (PROJECT_ROOT / "README.md").read_text()
    section = readme.split("## Try it in the CDS Hooks sandbox", 1)[1].split("\n## ", 1)[0]
    for patient in PATIENTS:
        row = next(
            line for line in section.splitlines() if line.startswith(f"| `{patient.patient_id}` |")
        )
        for codes in patient.cards.values():
            assert all(f"`{code}`" in row for code in codes), patient.patient_id


def test_sandbox_link_uses_the_sandbox_query_parameters() -> None:
    """Names as cds-hooks/sandbox's MainView reads them; order hooks open their Rx screen."""
    link = sandbox_link(
        "http://127.0.0.1:8000/cds-services", "http://127.0.0.1:8081", "p-1", "order-select"
    )
    parts = urlsplit(link)
    assert f"{parts.scheme}://{parts.netloc}" == SANDBOX_ORIGIN
    assert parse_qs(parts.query) == {
        "serviceDiscoveryURL": ["http://127.0.0.1:8000/cds-services"],
        "fhirServiceUrl": ["http://127.0.0.1:8081"],
        "patientId": ["p-1"],
        "hook": ["order-select"],
        "screen": ["rx-view"],
    }
    sign = parse_qs(urlsplit(sandbox_link("d", "f", "p", "order-sign")).query)
    assert sign["screen"] == ["rx-sign"]


# -- the service's CORS ------------------------------------------------------------------


def test_service_allows_private_network_access_on_preflight(client: TestClient) -> None:
    for path, method, headers in (
        ("/cds-services", "GET", "authorization"),
        ("/cds-services/fasciculation-pv", "POST", "authorization,content-type"),
        ("/cds-services/fasciculation-pv/feedback", "POST", "authorization,content-type"),
    ):
        response = client.options(path, headers=preflight(method, headers))
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == "*"
        assert response.headers["access-control-allow-private-network"] == "true"
        assert method in response.headers["access-control-allow-methods"]


# -- the FHIR server's CORS and what the sandbox reads -----------------------------------


@pytest.fixture(scope="module")
def fhir_with_demo_patients() -> Iterator[FhirTestServer]:
    if not node_available():
        pytest.skip("needs node and npm")
    with FhirTestServer() as server:
        for patient in PATIENTS:
            server.load(patient.bundle(date.today()))
        yield server


def test_fhir_server_answers_preflights_with_private_network_access(
    fhir_with_demo_patients: FhirTestServer,
) -> None:
    base = fhir_with_demo_patients.base_url
    response = httpx.options(
        f"{base}/Observation/_search", headers=preflight("POST", "authorization,content-type")
    )
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == "*"
    assert response.headers["access-control-allow-private-network"] == "true"
    assert "POST" in response.headers["access-control-allow-methods"]
    assert response.headers["access-control-allow-headers"] == "authorization,content-type"
    plain = httpx.options(
        f"{base}/metadata",
        headers={"Origin": SANDBOX_ORIGIN, "Access-Control-Request-Method": "GET"},
    )
    assert "access-control-allow-private-network" not in plain.headers


def test_fhir_server_serves_what_the_sandbox_reads(fhir_with_demo_patients: FhirTestServer) -> None:
    """/metadata (R4), the patient, and prefetch by form-encoded POST _search, with CORS."""
    base, origin = fhir_with_demo_patients.base_url, {"Origin": SANDBOX_ORIGIN}
    metadata = httpx.get(f"{base}/metadata", headers=origin)
    assert metadata.headers["access-control-allow-origin"] == "*"
    assert metadata.json()["fhirVersion"].startswith("4.")
    patient = httpx.get(
        f"{base}/Patient/demo-mnd-dysphagia", headers={**origin, "Accept": "application/json+fhir"}
    )
    assert patient.json()["resourceType"] == "Patient"
    search = httpx.post(
        f"{base}/Condition/_search", headers=origin, data={"patient": "demo-mnd-dysphagia"}
    )
    assert search.headers["access-control-allow-origin"] == "*"
    codes = {e["resource"]["code"]["coding"][0]["code"] for e in search.json()["entry"]}
    assert {"R25.3", "40739000", "26544005"} <= codes


# -- the command ----------------------------------------------------------------------------


def test_demo_binds_only_to_loopback() -> None:
    """Its FHIR server is open to anyone who reaches it: never on a network address."""
    assert loopback("127.0.0.1") == "127.0.0.1" and loopback("localhost") == "localhost"
    for host in ("0.0.0.0", "192.168.1.10", "example.org"):
        with pytest.raises(DemoError):
            loopback(host)


def _printed_links(output: str) -> list[dict[str, list[str]]]:
    return [
        parse_qs(urlsplit(line.split("sandbox:", 1)[1].strip()).query)
        for line in output.splitlines()
        if line.strip().startswith("sandbox:")
    ]


def _shell(line: str) -> str:
    """A printed line run as the tester runs it: in a shell (the curl lines pipe the answer
    through a pretty-printer)."""
    return subprocess.run(
        ["bash", "-c", line], capture_output=True, text=True, timeout=30, check=True
    ).stdout


def _printed_curls(output: str) -> list[str]:
    return [
        line.split("curl:", 1)[1].strip()
        for line in output.splitlines()
        if line.strip().startswith("curl:")
    ]


@needs_node
def test_demo_command_serves_prints_links_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    demo = RunningDemo(tmp_path).start()
    try:
        output = demo.output()
        links = _printed_links(output)
        expected = [(p.patient_id, hook) for p in PATIENTS for hook in p.hooks]
        assert [(q["patientId"][0], q["hook"][0]) for q in links] == expected
        for query in links:
            assert query["serviceDiscoveryURL"] == [demo.discovery_url]
            assert query["fhirServiceUrl"] == [demo.fhir_url]
        # Real JWT verification: no token, no service; the printed discovery line has one.
        assert "missing bearer token" in refusal(httpx.get(demo.discovery_url), 401)
        discovery = next(
            line.split("Discovery:", 1)[1].strip()
            for line in output.splitlines()
            if line.strip().startswith("Discovery:")
        )
        assert "Authorization: Bearer " in discovery
        services = json.loads(_shell(discovery))["services"]
        assert {s["hook"] for s in services} == {"patient-view", "order-select", "order-sign"}
        # Each printed curl line works as printed (once).
        curls = _printed_curls(output)
        assert len(curls) == len(expected)
        for curl, (patient_id, hook) in zip(curls, expected, strict=True):
            printed = _shell(curl)
            assert printed.startswith("{\n    ")  # pretty-printed, not one long line
            answer = json.loads(printed)
            patient = next(p for p in PATIENTS if p.patient_id == patient_id)
            shown = {card["source"]["topic"]["code"] for card in answer["cards"]}
            assert set(patient.cards[hook]) <= shown, (patient_id, hook, shown)
        # What the first run does is said as it happens; the request logs go to the file
        # named on screen, not between the links.
        banner = output.split("twitch-cds demo is running", 1)[0]
        assert "twitch-cds demo: starting the local FHIR server" in banner
        assert f"request logs: {demo.service_log}" in banner
        assert f"Request logs: {demo.service_log}" in output
        requests = [
            json.loads(line)
            for line in demo.service_log.read_text().splitlines()
            if line.startswith("{")
        ]
        assert any(r.get("event") == "request" and r.get("status") == 200 for r in requests)
        assert not any(line.startswith('{"') for line in demo.output().splitlines())
    finally:
        code = demo.stop()
    assert code == 0
    assert "both servers stopped" in demo.output()
    assert not port_is_open(demo.port) and not port_is_open(demo.fhir_port)


@needs_node
def test_the_first_run_says_what_it_installs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The first run's silent minute is npm installing the FHIR server: it says so. A real
    `npm ci` of a package without dependencies (what differs is only how long it takes)."""
    (tmp_path / "package.json").write_text(
        json.dumps({"name": "empty-server", "version": "1.0.0", "private": True})
    )
    (tmp_path / "package-lock.json").write_text(
        json.dumps(
            {
                "name": "empty-server",
                "version": "1.0.0",
                "lockfileVersion": 3,
                "requires": True,
                "packages": {"": {"name": "empty-server", "version": "1.0.0"}},
            }
        )
    )
    ensure_node_modules(tmp_path)
    said = capsys.readouterr().out
    assert "installing the local FHIR server's Node.js packages" in said
    assert f"npm ci in {tmp_path}" in said and "first run only" in said
