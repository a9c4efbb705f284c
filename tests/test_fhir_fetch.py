"""Issue 4, "work without prefetch": what the EHR did not prefetch is fetched from its FHIR server.

Why: CDS Hooks clients may satisfy none, some or all prefetch templates, send `null` or an
OperationOutcome instead of data, and page their search results; the service must fetch what
is missing itself, within one deadline, only from allowed servers, with the EHR's token, and
answer 412 when required data cannot be had. Every test here talks to a real FHIR R4 server
(Medplum, tests/support/fhir_server.py): real search Bundles, `next` links, 401s and delays.

The yardstick is the prefetch path: the same data fetched must give the same cards as the same
data prefetched (card uuids derive from `hookInstance`, so both calls share one).
"""

from __future__ import annotations

import contextlib
import copy
import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from cds.decision.fhir_client import is_allowed
from tests.conftest import SERVICE_PV, LiveServer, free_port
from tests.support.cards import cards_by_code
from tests.support.fhir import (
    PREFETCH_KEYS,
    alive,
    condition,
    days_ago,
    family_history,
    hook_request,
    lab,
    medication,
    patient,
    transaction,
    twitch,
)
from tests.support.fhir_server import FhirTestServer, node_available, run_fhir_server
from tests.support.fhir_stub import EMPTY_SEARCHSET, StubServer, running_stub
from tests.support.paths import SYNTHEA

pytestmark = pytest.mark.skipif(not node_available(), reason="node/npm not installed")

MAGNESIUM = "19123-9"
TOKEN = "fetch-test-secret-7c1d9e"
WRONG_TOKEN = "fetch-test-wrong-4b2a61"
REQUIRED_KEYS = {"conditions", "observations", "medicationRequests"}
OPTIONAL_KEYS = {"patient", "medicationStatements", "familyHistory"}
ALL_KEYS = REQUIRED_KEYS | OPTIONAL_KEYS


def record() -> list[dict[str, Any]]:
    """A chart with data under every search key, each adding a card of its own."""
    return [
        twitch(),  # conditions
        lab(MAGNESIUM, 1.4, "mg/dL"),  # observations
        medication("312617", "predniSONE 5 MG Oral Tablet"),  # medicationRequests
        medication("1534809", None, kind="MedicationStatement"),  # medicationStatements
        family_history("73297009"),  # familyHistory
    ]


RECORD_CARDS = {"hypomagnesemia", "corticosteroid", "estrogen", "red-flag-muscular-dystrophy"}


def authorization(token: str) -> dict[str, Any]:
    return {
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "patient/*.read",
        "subject": "twitch-cds",
        "patient": "p1",
    }


def fetching(
    request: dict[str, Any], fhir_base: str, *, keep: set[str] | None = None, **replace: Any
) -> dict[str, Any]:
    """The same request with only the `keep` prefetch keys, `replace`d keys, and a fhirServer."""
    request = copy.deepcopy(request)
    prefetch = {k: v for k, v in request.pop("prefetch").items() if k in (keep or set())}
    prefetch.update(replace)
    if prefetch:
        request["prefetch"] = prefetch
    request["fhirServer"] = fhir_base
    return request


def post(
    client: TestClient | str, request: dict[str, Any], service: str = SERVICE_PV
) -> tuple[httpx.Response, float]:
    """POST a hook call in process (TestClient) or over HTTP (base URL); also the seconds taken."""
    started = time.perf_counter()
    if isinstance(client, str):
        response = httpx.post(f"{client}/cds-services/{service}", json=request, timeout=30)
    else:
        response = client.post(f"/cds-services/{service}", json=request)
    return response, time.perf_counter() - started


def cards_of(client: TestClient | str, request: dict[str, Any]) -> list[dict[str, Any]]:
    response, _ = post(client, request)
    assert response.status_code == 200, response.text
    cards_by_code(response.json())  # every card valid, one per finding
    cards: list[dict[str, Any]] = response.json()["cards"]
    return cards


def comparable(cards: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    """Finding code -> (indicator, evidence text): what must not depend on how data arrived."""
    return {c["source"]["topic"]["code"]: (c["indicator"], c["detail"]) for c in cards}


def precondition_failed(response: httpx.Response) -> dict[str, str]:
    """A 412's OperationOutcome as {prefetch key: reason}."""
    assert response.status_code == 412, response.text
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    reasons = {}
    for issue in body["issue"]:
        assert issue["severity"] == "error" and issue["code"] == "incomplete"
        key, reason = issue["diagnostics"].split(": ", 1)
        reasons[key] = reason
    return reasons


# --- what is missing is fetched -------------------------------------------------------------


def test_no_prefetch_at_all_fetches_everything_with_the_same_cards(
    client: TestClient, fhir: FhirTestServer
) -> None:
    resources = record()
    fhir.load(transaction(patient(), *resources))
    prefetched = hook_request(*resources)
    expected = cards_of(client, prefetched)
    assert set(comparable(expected)) >= RECORD_CARDS
    fetched = cards_of(client, fetching(prefetched, fhir.base_url))
    assert fetched == expected  # uuids too: they derive from the shared hookInstance


@pytest.mark.parametrize(
    "keep",
    [
        {"patient", "conditions"},
        {"observations", "medicationStatements"},
        REQUIRED_KEYS,
        OPTIONAL_KEYS,
        ALL_KEYS - {"familyHistory"},
    ],
)
def test_partial_prefetch_fetches_the_rest(
    client: TestClient, fhir: FhirTestServer, keep: set[str]
) -> None:
    resources = record()
    fhir.load(transaction(patient(), *resources))
    prefetched = hook_request(*resources)
    expected = comparable(cards_of(client, prefetched))
    assert comparable(cards_of(client, fetching(prefetched, fhir.base_url, keep=keep))) == expected


def test_fetched_data_adds_to_prefetched_data(client: TestClient, fhir: FhirTestServer) -> None:
    # The complaint is only on the server, the low magnesium only in the prefetch: both count.
    complaint, low_mg = twitch(), lab(MAGNESIUM, 1.4, "mg/dL")
    fhir.load(transaction(patient(), complaint))
    request = fetching(hook_request(low_mg), fhir.base_url, keep=ALL_KEYS - {"conditions"})
    assert "hypomagnesemia" in comparable(cards_of(client, request))


def test_null_keys_are_fetched(client: TestClient, fhir: FhirTestServer) -> None:
    resources = record()
    fhir.load(transaction(patient(), *resources))
    prefetched = hook_request(*resources)
    expected = cards_of(client, prefetched)
    every_key_null = fetching(prefetched, fhir.base_url, **dict.fromkeys(ALL_KEYS))
    assert cards_of(client, every_key_null) == expected
    some_null = fetching(
        prefetched,
        fhir.base_url,
        keep={"patient", "conditions"},
        observations=None,
        medicationRequests=None,
    )
    assert comparable(cards_of(client, some_null)) == comparable(expected)


def test_operation_outcome_in_a_key_is_fetched(client: TestClient, fhir: FhirTestServer) -> None:
    resources = record()
    fhir.load(transaction(patient(), *resources))
    prefetched = hook_request(*resources)
    expected = comparable(cards_of(client, prefetched))
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "timeout", "diagnostics": "search timed out"}],
    }
    request = fetching(
        prefetched, fhir.base_url, keep=ALL_KEYS - {"observations"}, observations=outcome
    )
    assert comparable(cards_of(client, request)) == expected


def test_operation_outcome_without_fhir_server_is_412_naming_the_key(client: TestClient) -> None:
    request = hook_request(*record())
    request["prefetch"]["observations"] = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "exception"}],
    }
    response, _ = post(client, request)
    assert precondition_failed(response) == {
        "observations": "not prefetched and no fhirServer given"
    }


def test_required_key_missing_on_an_empty_server_is_not_an_error(
    client: TestClient, fhir: FhirTestServer
) -> None:
    # An empty searchset is data ("no conditions"), not a failure: 200, and no complaint.
    request = fetching(hook_request(*record()), fhir.base_url, keep=ALL_KEYS - {"conditions"})
    assert cards_of(client, request) == []


# --- paging ---------------------------------------------------------------------------------


def older_normal_magnesium(count: int) -> list[dict[str, Any]]:
    return [lab(MAGNESIUM, 2.0, "mg/dL", when=days_ago(300 - i)) for i in range(count)]


def observation_pages(client: TestClient, fhir: FhirTestServer) -> list[dict[str, Any]]:
    """The service's own Observation search on the FHIR server, page by page."""
    template = next(
        s for s in client.get("/cds-services").json()["services"] if s["id"] == SERVICE_PV
    )["prefetch"]["observations"]
    url: str | None = f"{fhir.base_url}/{template.replace('{{context.patientId}}', 'p1')}"
    pages = []
    while url:
        page: dict[str, Any] = httpx.get(url).json()
        pages.append(page)
        url = next((x["url"] for x in page["link"] if x["relation"] == "next"), None)
    return pages


def load_low_magnesium_on_page_3(client: TestClient, fhir: FhirTestServer) -> list[dict[str, Any]]:
    """50 older normal results, then the newest one, low: stored last, so on page 3 of the
    server's 20-per-page search. Reading only the first pages would show a normal Mg."""
    low = lab(MAGNESIUM, 1.4, "mg/dL", when=days_ago(1))
    fhir.load(transaction(patient(), twitch(), *older_normal_magnesium(50), low))
    pages = observation_pages(client, fhir)
    assert len(pages) >= 3  # the premise of these tests
    assert low["id"] in [e["resource"]["id"] for e in pages[-1]["entry"]]
    return pages


def assert_low_magnesium_card(cards: list[dict[str, Any]]) -> None:
    card = cards_by_code({"cards": cards})["hypomagnesemia"]
    assert card["indicator"] == "warning"
    assert "1.4 mg/dL" in card["detail"]


def test_fetch_follows_next_links_to_the_last_page(
    client: TestClient, fhir: FhirTestServer
) -> None:
    load_low_magnesium_on_page_3(client, fhir)
    assert_low_magnesium_card(cards_of(client, fetching(hook_request(), fhir.base_url)))


def test_prefetched_first_page_is_completed_from_the_fhir_server(
    client: TestClient, fhir: FhirTestServer
) -> None:
    # The client prefetched the search but sent only its first page (CDS Hooks: "results may
    # be paginated"): the `next` link says there is more, so the rest is fetched.
    first_page = load_low_magnesium_on_page_3(client, fhir)[0]
    request = fetching(hook_request(), fhir.base_url, observations=first_page)
    assert_low_magnesium_card(cards_of(client, request))


def test_prefetched_first_page_without_fhir_server_is_412(
    client: TestClient, fhir: FhirTestServer
) -> None:
    # Page 1 alone would show a normal magnesium: a wrong answer, so no answer.
    first_page = load_low_magnesium_on_page_3(client, fhir)[0]
    request = hook_request(twitch())
    request["prefetch"]["observations"] = first_page
    response, _ = post(client, request)
    assert precondition_failed(response) == {
        "observations": "only a first page prefetched and no fhirServer given"
    }


def test_more_pages_than_allowed_is_412_not_a_partial_record(
    make_client: Callable[..., TestClient], fhir: FhirTestServer
) -> None:
    # A truncated search could hide the newest result; the service says so instead of guessing.
    fhir.load(transaction(patient(), twitch(), *older_normal_magnesium(50)))
    client = make_client(fhir_max_pages=2)
    response, _ = post(client, fetching(hook_request(), fhir.base_url))
    assert precondition_failed(response) == {"observations": "more than 2 pages"}


# --- authorization ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def secured_fhir() -> Iterator[FhirTestServer]:
    """A FHIR server that answers only `Authorization: Bearer TOKEN`."""
    yield from run_fhir_server(token=TOKEN)


def test_wrong_token_is_412_naming_the_required_keys_and_right_token_gives_cards(
    client: TestClient, secured_fhir: FhirTestServer
) -> None:
    secured_fhir.reset()
    resources = record()
    secured_fhir.load(transaction(patient(), *resources))
    prefetched = hook_request(*resources)
    expected = comparable(cards_of(client, prefetched))

    for auth in (authorization(WRONG_TOKEN), None):
        request = fetching(prefetched, secured_fhir.base_url)
        if auth:
            request["fhirAuthorization"] = auth
        response, _ = post(client, request)
        # The optional keys failed too, but only the required ones block the answer.
        assert precondition_failed(response) == dict.fromkeys(
            REQUIRED_KEYS, "FHIR server refused access (401)"
        )
        assert WRONG_TOKEN not in response.text

    request = fetching(prefetched, secured_fhir.base_url)
    request["fhirAuthorization"] = authorization(TOKEN)
    assert comparable(cards_of(client, request)) == expected


# --- unreachable, slow and forbidden servers ------------------------------------------------


def test_fhir_server_down_is_412_fast(make_client: Callable[..., TestClient]) -> None:
    client = make_client(fhir_timeout_seconds=30.0)
    closed = free_port()  # bound and released: nothing listens there
    request = fetching(hook_request(*record()), f"http://127.0.0.1:{closed}")
    response, elapsed = post(client, request)
    assert precondition_failed(response) == dict.fromkeys(REQUIRED_KEYS, "FHIR server unreachable")
    assert elapsed < 10, elapsed  # refused at once: no waiting for the 30 s deadline


@pytest.fixture(scope="module")
def slow_fhir() -> Iterator[FhirTestServer]:
    """A FHIR server that takes 20 s for every request (empty: nothing is ever read)."""
    yield from run_fhir_server(delay_ms=20_000)


DEADLINE = 1.0
# Room for a busy machine, and still far from the 20 s the server takes: an answer within
# DEADLINE + MARGIN was cut off by the deadline, not given when the server answered.
MARGIN = 5.0


def test_slow_fhir_server_required_keys_time_out_within_the_deadline(
    make_client: Callable[..., TestClient], slow_fhir: FhirTestServer
) -> None:
    client = make_client(fhir_timeout_seconds=DEADLINE)
    response, elapsed = post(client, fetching(hook_request(*record()), slow_fhir.base_url))
    reasons = precondition_failed(response)
    assert set(reasons) == REQUIRED_KEYS
    assert all("time" in reason for reason in reasons.values()), reasons
    assert DEADLINE * 0.9 <= elapsed < DEADLINE + MARGIN, elapsed


def test_slow_fhir_server_only_optional_keys_missing_gives_cards_within_the_deadline(
    make_client: Callable[..., TestClient], slow_fhir: FhirTestServer
) -> None:
    client = make_client(fhir_timeout_seconds=DEADLINE)
    request = fetching(hook_request(*record()), slow_fhir.base_url, keep=REQUIRED_KEYS)
    response, elapsed = post(client, request)
    assert response.status_code == 200, response.text
    # Cards from what arrived in time; the estrogen (a MedicationStatement) and the family
    # history were on the slow server only.
    codes = set(cards_by_code(response.json()))
    assert {"hypomagnesemia", "corticosteroid"} <= codes
    assert not codes & {"estrogen", "red-flag-muscular-dystrophy"}
    assert DEADLINE * 0.9 <= elapsed < DEADLINE + MARGIN, elapsed


@pytest.fixture
def stub_server() -> Iterator[Callable[..., StubServer]]:
    with contextlib.ExitStack() as servers:

        def start(host: str, body: dict[str, Any] = EMPTY_SEARCHSET) -> StubServer:
            try:
                return servers.enter_context(running_stub(host, body))
            except OSError as error:
                pytest.skip(f"cannot listen on {host}: {error}")

        yield start


def test_fhir_server_not_allowed_is_refused_without_any_outbound_call(
    make_client: Callable[..., TestClient], stub_server: Callable[..., StubServer]
) -> None:
    outside = stub_server("127.0.0.2")  # outside the allowed bases below
    request = fetching(hook_request(*record()), outside.base_url)
    request["fhirAuthorization"] = authorization(TOKEN)

    refusing = make_client(fhir_allowed_bases=["http://127.0.0.1"])
    response, _ = post(refusing, request)
    assert precondition_failed(response) == dict.fromkeys(
        REQUIRED_KEYS, "fhirServer is not an allowed FHIR base URL"
    )
    assert outside.received == []

    # The control: the same call to the same server, once allowed, does reach it.
    allowing = make_client(fhir_allowed_bases=["http://127.0.0.1", "http://127.0.0.2"])
    assert cards_of(allowing, request) == []
    assert len(outside.received) == len(ALL_KEYS)
    assert {auth for _, auth in outside.received} == {f"Bearer {TOKEN}"}


def test_next_link_to_another_server_is_not_followed(
    make_client: Callable[..., TestClient], stub_server: Callable[..., StubServer]
) -> None:
    # Both servers are allowed, but the token and the query go only to the request's own
    # fhirServer: a `next` link elsewhere fails the key instead of being followed.
    other = stub_server("127.0.0.2")
    ehr = stub_server(
        "127.0.0.1",
        {
            **EMPTY_SEARCHSET,
            "link": [{"relation": "next", "url": f"{other.base_url}/Observation?page=2"}],
        },
    )
    client = make_client(fhir_allowed_bases=["http://127.0.0.1", "http://127.0.0.2"])
    request = fetching(hook_request(*record()), ehr.base_url, keep=ALL_KEYS - {"observations"})
    request["fhirAuthorization"] = authorization(TOKEN)
    response, _ = post(client, request)
    assert precondition_failed(response) == {"observations": "next page points to another server"}
    assert other.received == []


def test_malformed_search_bundle_is_an_empty_result_not_a_crash(
    client: TestClient, stub_server: Callable[..., StubServer]
) -> None:
    odd = stub_server(
        "127.0.0.1", {"resourceType": "Bundle", "type": "searchset", "entry": None, "link": "next"}
    )
    request = fetching(hook_request(*record()), odd.base_url, keep=ALL_KEYS - {"observations"})
    cards = comparable(cards_of(client, request))
    assert "corticosteroid" in cards and "hypomagnesemia" not in cards


@pytest.mark.parametrize(
    ("base", "allowed"),
    [
        ("http://127.0.0.1:8080", True),
        ("http://127.0.0.1:8080/r4/", True),
        ("https://ehr.example/fhir", True),
        ("https://ehr.example/fhir/r4", True),
        ("http://127.0.0.1.evil.example", False),  # a host that merely starts like an allowed one
        ("http://127.0.0.1@evil.example/fhir", False),
        ("http://127.0.0.2:8080", False),
        ("http://ehr.example/fhir", False),  # the scheme counts
        ("https://ehr.example/fhir-other", False),  # paths match by whole segments
        ("https://ehr.example/", False),
        ("https://ehr.example/fhir/%2e%2e/admin", False),
        ("not a url", False),
    ],
)
def test_allowed_bases_compare_scheme_host_port_and_path(base: str, allowed: bool) -> None:
    assert is_allowed(base, ["http://127.0.0.1", "https://ehr.example/fhir"]) is allowed


# --- over real HTTP: what the log says ------------------------------------------------------


@pytest.fixture(scope="module")
def cds_server(start_server: Callable[..., LiveServer]) -> LiveServer:
    """A real `twitch-cds serve` of this module's own, logging at DEBUG (the most verbose)."""
    return start_server(TWITCH_CDS_LOG_LEVEL="DEBUG")


def log_events(server: LiveServer, event: str) -> list[dict[str, Any]]:
    events = []
    for line in server.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("event") == event:
                events.append(entry)
    return events


def test_optional_key_failing_gives_cards_and_the_log_notes_it(
    cds_server: LiveServer, fhir: FhirTestServer
) -> None:
    # The server has the chart but no Patient resource: the optional `patient` read is a 404.
    resources = record()
    fhir.load(transaction(*resources))
    request = fetching(hook_request(*resources), fhir.base_url)
    assert set(comparable(cards_of(cds_server.base_url, request))) >= RECORD_CARDS
    event = log_events(cds_server, "hook")[-1]
    assert event["unavailable"] == ["patient"]
    assert set(event["fetched"]) == ALL_KEYS - {"patient"}


def test_access_token_never_appears_in_the_log(
    cds_server: LiveServer, secured_fhir: FhirTestServer
) -> None:
    secured_fhir.reset()
    resources = record()
    secured_fhir.load(transaction(patient(), *resources))
    request = fetching(hook_request(*resources), secured_fhir.base_url)

    request["fhirAuthorization"] = authorization(TOKEN)
    assert set(comparable(cards_of(cds_server.base_url, request))) >= RECORD_CARDS
    request["fhirAuthorization"] = authorization(WRONG_TOKEN)
    response, _ = post(cds_server.base_url, request)
    assert precondition_failed(response)
    assert WRONG_TOKEN not in response.text

    log = cds_server.log_path.read_text(errors="replace")
    assert log_events(cds_server, "precondition failed")  # the log did record both calls
    assert TOKEN not in log and WRONG_TOKEN not in log


def test_patient_id_never_appears_in_the_log(cds_server: LiveServer, fhir: FhirTestServer) -> None:
    # The fetch URLs carry the patient id (`Observation?patient=...`): an identifier, which
    # cds/logs.py keeps out of the log, so the HTTP client must not log its request URLs.
    patient_id = str(uuid.uuid4())
    fhir.load(
        transaction(
            patient(patient_id=patient_id),
            condition("R25.3", patient_id=patient_id),
            lab(MAGNESIUM, 1.4, "mg/dL", patient_id=patient_id),
        )
    )
    request = {
        "hookInstance": str(uuid.uuid4()),
        "hook": "patient-view",
        "fhirServer": fhir.base_url,
        "context": {"patientId": patient_id, "userId": "Practitioner/example"},
    }
    assert "hypomagnesemia" in comparable(cards_of(cds_server.base_url, request))
    assert log_events(cds_server, "hook")[-1]["fetched"]  # the log did record the fetch
    assert patient_id not in cds_server.log_path.read_text(errors="replace")


# --- realistic records (Synthea) ------------------------------------------------------------


def synthea(name: str) -> dict[str, Any]:
    matches = sorted(SYNTHEA.glob(f"{name}_*.json"))
    if not matches:
        pytest.skip(f"Synthea fixture {name} missing")
    bundle: dict[str, Any] = json.loads(matches[0].read_text())
    return alive(bundle)


def as_prefetch(bundle: dict[str, Any], *extra: dict[str, Any]) -> dict[str, Any]:
    """The Synthea chart as an EHR would prefetch it: urn:uuid references made `Type/id`,
    resources grouped under the service's keys (everything of the type, unfiltered)."""
    references = {
        e["fullUrl"]: f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in bundle["entry"]
    }

    def rewrite(value: Any) -> Any:
        if isinstance(value, dict):
            return {
                k: references.get(v, v) if k == "reference" and isinstance(v, str) else rewrite(v)
                for k, v in value.items()
            }
        if isinstance(value, list):
            return [rewrite(v) for v in value]
        return value

    resources = [rewrite(e["resource"]) for e in bundle["entry"]] + list(extra)
    prefetch: dict[str, Any] = {
        key: {"resourceType": "Bundle", "type": "searchset", "entry": []}
        for key in PREFETCH_KEYS.values()
    }
    for resource in resources:
        if resource["resourceType"] == "Patient":
            prefetch["patient"] = resource
        elif resource["resourceType"] in PREFETCH_KEYS:
            prefetch[PREFETCH_KEYS[resource["resourceType"]]]["entry"].append(
                {"resource": resource}
            )
    return prefetch


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # Synthea's lab results are years old here, hence the work-up card for every patient.
        ("Renato_Dare", {"red-flag-neuropathy", "workup-incomplete"}),  # diabetic neuropathy
        ("Morris_Lockman", {"red-flag-neuropathy", "electrolyte-depleting-drug"}),  # + HCTZ
        ("Claudie_Walsh", {"lifestyle-review", "workup-incomplete"}),  # young, allergies only
        ("Angelic_Mueller", {"electrolyte-depleting-drug", "lifestyle-review"}),  # HCTZ
        ("Fletcher_Hyatt", {"alcohol", "electrolyte-depleting-drug"}),  # 1111 entries, paged
    ],
)
def test_synthea_record_fetched_gives_the_cards_it_gives_prefetched(
    client: TestClient, fhir: FhirTestServer, name: str, expected: set[str]
) -> None:
    bundle = synthea(name)
    patient_id = next(
        e["resource"]["id"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"
    )
    complaint = condition("R25.3", patient_id=patient_id)
    fhir.load(bundle, keep_ids=True)
    fhir.load(transaction(complaint))
    hook_instance = str(uuid.uuid4())
    context = {"patientId": patient_id, "userId": "Practitioner/example"}
    prefetched = {
        "hookInstance": hook_instance,
        "hook": "patient-view",
        "context": context,
        "prefetch": as_prefetch(bundle, complaint),
    }
    fetched = {
        "hookInstance": hook_instance,
        "hook": "patient-view",
        "context": context,
        "fhirServer": fhir.base_url,
    }

    from_prefetch = comparable(cards_of(client, prefetched))
    from_server = comparable(cards_of(client, fetched))
    assert from_server == from_prefetch
    assert expected <= set(from_server)
