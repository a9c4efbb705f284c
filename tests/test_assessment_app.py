"""The assessment app under /app/ (issue 19 points 2 and 5): SMART App Launch against a real
authorization server (authlib's server components, tests/support/smart_ehr.py) in front of the
Medplum FHIR server, the answers written in one transaction, and the next hook call reading
them. EHR launch and standalone launch with PKCE; a wrong state, an expired code and a refused
scope are refused with a page that says so; a write the EHR refuses saves nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient

from cds.settings import Settings
from cds.web.app import create_app
from tests.support.assessment import answer, response
from tests.support.cards import cards_by_code
from tests.support.fhir import PATIENT, patient, transaction, twitch
from tests.support.fhir_server import FhirTestServer, node_available
from tests.support.smart_ehr import SmartEhr

pytestmark = pytest.mark.skipif(not node_available(), reason="needs node for the FHIR server")
CALLBACK = "http://testserver/app/callback"
ANSWERS = {
    "caffeine-drinks": {"valueInteger": 6},
    "weakness": {"valueBoolean": True},
    "69725-0": answer("LA6571-9"),
    "68509-9": answer("LA6571-9"),
    "new-medicines": {"valueBoolean": True},
    "new-medicines-which": {"valueString": "Brandname Forte 20 mg"},
}


@pytest.fixture
def client(tmp_path: Any) -> Iterator[TestClient]:
    settings = Settings(
        auth="none",
        database_url=f"sqlite:///{tmp_path / 'cds.sqlite3'}",
        app_frame_ancestors="https://ehr.example.org",
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def ehr(fhir: FhirTestServer) -> Iterator[SmartEhr]:
    fhir.load(transaction(patient(), twitch()))
    with SmartEhr(fhir.base_url, CALLBACK) as running:
        yield running


def authorize(client: TestClient, ehr: SmartEhr, *, ehr_launch: bool = True) -> str:
    """Launch, and let the EHR's authorization server answer: the callback URL it sends."""
    launch = f"&launch={ehr.launch(PATIENT)}" if ehr_launch else ""
    started = client.get(f"/app/launch?iss={ehr.iss}{launch}", follow_redirects=False)
    assert started.status_code == 303, started.text
    location = started.headers["location"]
    assert location.startswith(f"{ehr.base_url}/authorize?")
    query = parse_qs(urlsplit(location).query)
    assert query["code_challenge_method"] == ["S256"] and len(query["code_challenge"][0]) == 43
    assert query["aud"] == [ehr.iss] and query["client_id"] == ["twitch-cds-assessment"]
    scopes = query["scope"][0].split()
    assert ("launch" in scopes) is ehr_launch and ("launch/patient" in scopes) is not ehr_launch
    for scope in ("patient/QuestionnaireResponse.cu", "patient/Observation.write"):
        assert scope in scopes
    consented = httpx.get(location, follow_redirects=False)
    assert consented.status_code == 302, consented.text
    callback: str = consented.headers["location"]
    assert callback.startswith(CALLBACK)
    return callback


def signed_in(client: TestClient, callback: str) -> str:
    """Follow the callback to the form page; its CSRF token."""
    finished = client.get(callback.removeprefix("http://testserver"), follow_redirects=False)
    assert finished.status_code == 303, finished.text
    # The token travels only sealed, in a cookie scripts cannot read and the browser drops
    # at the end of its session.
    cookie = finished.headers["set-cookie"].lower()
    assert "httponly" in cookie and "max-age" not in cookie and "expires" not in cookie
    page = client.get("/app/")
    assert page.status_code == 200
    assert "frame-ancestors https://ehr.example.org" in page.headers["content-security-policy"]
    found = re.search(r'name="csrf-token" content="([^"]+)"', page.text)
    assert found
    return found.group(1)


def submit(client: TestClient, csrf: str, answers: dict[str, Any]) -> httpx.Response:
    return client.post("/app/submit", json=response(answers), headers={"X-CSRF-Token": csrf})


def stored(fhir: FhirTestServer, kind: str) -> list[dict[str, Any]]:
    found = httpx.get(f"{fhir.base_url}/{kind}", params={"_count": 100}).json()
    return [e["resource"] for e in found.get("entry", [])]


def test_ehr_launch_writes_the_answers_and_the_next_call_reads_them(
    client: TestClient, ehr: SmartEhr, fhir: FhirTestServer, capsys: pytest.CaptureFixture[str]
) -> None:
    csrf = signed_in(client, authorize(client, ehr))
    (token,) = ehr.tokens
    assert all(token not in value for value in client.cookies.values())  # sealed, not readable
    written = submit(client, csrf, ANSWERS)
    assert written.status_code == 200, written.text
    (qr,) = stored(fhir, "QuestionnaireResponse")
    assert qr["subject"] == {"reference": f"Patient/{PATIENT}"}
    observations = stored(fhir, "Observation")
    # caffeine, weakness, the two GAD-2 items and the GAD-2 score, new medicines: no free text
    assert len(observations) == 6
    assert all(
        o["derivedFrom"][0]["reference"] == f"QuestionnaireResponse/{qr['id']}"
        for o in observations
    )
    assert "Brandname" not in str(observations)

    call = {
        "hookInstance": "d7f3e3f2-7c55-4f7e-9a3b-2f1c9d7e1a01",
        "hook": "patient-view",
        "fhirServer": fhir.base_url,
        "context": {"patientId": PATIENT, "userId": "Practitioner/1"},
    }
    cards = cards_by_code(client.post("/cds-services/fasciculation-pv", json=call).json())
    assert (
        "caffeine 6 drinks a day (patient-reported, today)" in cards["stimulant"]["summary"].lower()
    )
    assert "GAD-2 score 6 points (patient-reported, today)" in cards["anxiety-stress"]["summary"]
    assert (
        "muscle weakness (patient-reported, today)"
        in cards["red-flag-motor-neuron-disease"]["summary"]
    )
    assert not [
        link for c in cards.values() for link in c.get("links", []) if link["type"] == "smart"
    ]
    # Neither the token nor an answer reaches the log.
    log = capsys.readouterr()
    assert next(iter(ehr.tokens)) not in log.out + log.err
    assert "Brandname" not in log.out + log.err and "LA6571-9" not in log.out + log.err


def test_standalone_launch_asks_for_a_patient_and_writes(
    client: TestClient, ehr: SmartEhr, fhir: FhirTestServer
) -> None:
    csrf = signed_in(client, authorize(client, ehr, ehr_launch=False))
    assert submit(client, csrf, {"caffeine-drinks": {"valueInteger": 2}}).status_code == 200
    assert len(stored(fhir, "Observation")) == 1


def test_a_wrong_state_is_refused(client: TestClient, ehr: SmartEhr, fhir: FhirTestServer) -> None:
    callback = authorize(client, ehr)
    forged = re.sub(r"state=[^&]+", "state=forged", callback).removeprefix("http://testserver")
    refused = client.get(forged, follow_redirects=False)
    assert refused.status_code == 400 and "(state)" in refused.text
    assert client.get("/app/").status_code == 401
    assert ehr.tokens == {}


def test_an_expired_code_is_refused(
    client: TestClient, ehr: SmartEhr, fhir: FhirTestServer
) -> None:
    callback = authorize(client, ehr)
    ehr.expire_codes()
    refused = client.get(callback.removeprefix("http://testserver"), follow_redirects=False)
    assert refused.status_code == 403 and "invalid_grant" in refused.text
    assert client.get("/app/").status_code == 401


def test_a_refused_scope_is_named_and_nothing_can_be_written(
    client: TestClient, ehr: SmartEhr, fhir: FhirTestServer
) -> None:
    ehr.refused_scopes = {"patient/Observation.cu", "patient/Observation.write"}
    refused = client.get(
        authorize(client, ehr).removeprefix("http://testserver"), follow_redirects=False
    )
    assert refused.status_code == 403 and "Observation not granted" in refused.text
    assert client.get("/app/").status_code == 401


def test_a_write_the_ehr_refuses_saves_nothing_and_says_so(
    client: TestClient, ehr: SmartEhr, fhir: FhirTestServer
) -> None:
    csrf = signed_in(client, authorize(client, ehr))
    # The token's scopes change on the EHR side after sign-in (an administrator revokes).
    for token, (_, who) in list(ehr.tokens.items()):
        ehr.tokens[token] = ("patient/QuestionnaireResponse.cu", who)
    refused = submit(client, csrf, ANSWERS)
    assert refused.status_code == 502
    assert "refused to save the answers (HTTP 403" in refused.json()["error"]
    assert "nothing was saved" in refused.json()["error"]
    assert stored(fhir, "QuestionnaireResponse") == [] and stored(fhir, "Observation") == []


def test_without_the_csrf_token_or_a_session_nothing_is_written(
    client: TestClient, ehr: SmartEhr, fhir: FhirTestServer
) -> None:
    signed_in(client, authorize(client, ehr))
    assert submit(client, "wrong", ANSWERS).status_code == 401
    assert stored(fhir, "Observation") == []


def test_a_fhir_server_the_service_may_not_call_is_refused(client: TestClient) -> None:
    refused = client.get("/app/launch?iss=https://elsewhere.example.org/fhir")
    assert refused.status_code == 400 and "not one this service may use" in refused.text


def test_an_open_server_launch_registered_as_the_sandbox_does(
    client: TestClient, fhir: FhirTestServer
) -> None:
    fhir.load(transaction(patient(), twitch()))
    registered = httpx.post(
        f"{fhir.base_url}/_services/smart/Launch",
        json={
            "launchUrl": "http://testserver/app/launch",
            "parameters": {"patient": PATIENT, "appContext": '{"service":"fasciculation-pv"}'},
        },
    )
    assert registered.status_code == 200, registered.text
    launch_id = registered.json()["launch_id"]
    started = client.get(
        f"/app/launch?launch={launch_id}&iss={fhir.base_url}", follow_redirects=False
    )
    assert started.status_code == 303 and started.headers["location"] == "/app/"
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', client.get("/app/").text)
    assert csrf
    assert submit(client, csrf.group(1), {"weakness": {"valueBoolean": True}}).status_code == 200
    (obs,) = stored(fhir, "Observation")
    assert obs["subject"] == {"reference": f"Patient/{PATIENT}"}
    unknown = client.get(f"/app/launch?launch=nope&iss={fhir.base_url}", follow_redirects=False)
    assert unknown.status_code == 502 and "does not know this launch" in unknown.text


def test_bad_answers_are_a_400_with_a_reason_and_nothing_is_written(
    client: TestClient, ehr: SmartEhr, fhir: FhirTestServer
) -> None:
    csrf = signed_in(client, authorize(client, ehr))
    headers = {"X-CSRF-Token": csrf, "Content-Type": "application/json"}
    for body, reason in (
        (b"{not json", "could not be read"),
        (b'{"resourceType": "Patient"}', "expected a QuestionnaireResponse"),
        (b'{"resourceType": "QuestionnaireResponse", "status": 7}', "not a valid FHIR R4"),
    ):
        refused = client.post("/app/submit", content=body, headers=headers)
        assert refused.status_code == 400 and reason in refused.json()["error"], body
    assert stored(fhir, "QuestionnaireResponse") == []


def test_the_form_needs_a_session_and_a_callback_needs_a_launch(client: TestClient) -> None:
    page = client.get("/app/")
    assert page.status_code == 401 and "from the patient's chart" in page.text
    assert "frame-ancestors https://ehr.example.org" in page.headers["content-security-policy"]
    assert page.headers["referrer-policy"] == "no-referrer"
    # Framed by the EHR: CSP frame-ancestors decides, no X-Frame-Options: DENY beside it.
    assert "x-frame-options" not in page.headers
    assert client.get("/cds-services").headers["x-frame-options"] == "DENY"
    stray = client.get("/app/callback?code=abc&state=xyz")
    assert stray.status_code == 400 and "launch the app again" in stray.text
    assert client.get("/app/questionnaire.json").json()["resourceType"] == "Questionnaire"
