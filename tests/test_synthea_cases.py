"""Realistic end-to-end cases: the Synthea R4 patients of tests/fixtures/synthea.

Each test sends a patient's whole bundle as patient-view prefetch (resources grouped by type
under the service's keys; every other type, Encounter, Claim..., under a key of its own, which
the service pools and ignores) and adds the one thing Synthea never records: a twitch complaint.

What the records hold (inspected with Python; "today" is the test's run date):
- every result in these bundles is from 2021 or earlier, so with the default 365-day lookback
  no lab counts: the work-up card asks for Ca, Mg, K and vitamin D for every patient;
- Renato_Dare, Morris_Lockman: active "Neuropathy due to type 2 diabetes mellitus"
  (SNOMED 368581000119106); Morris also takes hydrochlorothiazide;
- Kermit_Trantow, Royal_DuBuque: "every day smoker" (449868002) in 2011-2015, then "former
  smoker" (8517006) in 2016 and 2019; both take hydrochlorothiazide 25 MG;
- Claudie_Walsh, Moises_Rohan: predniSONE 5 MG (RxNorm 312617), status stopped;
- Angelic_Mueller, Twanda_Rippin: ethinyl estradiol / norelgestromin patch (RxNorm 1534809),
  status stopped (Angelic also takes hydrochlorothiazide);
- Lupe_Little: nothing twitch-related;
- Fletcher_Hyatt: 1,111 entries, active alcoholism, furosemide and hydrochlorothiazide.
"""

from __future__ import annotations

import copy
import json
import time
import uuid
from datetime import UTC, date, datetime
from functools import cache
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import SERVICE_PV
from tests.support.app import module_client
from tests.support.cards import cards_by_code, lab_orders
from tests.support.fhir import added_twitch, alive, bundle
from tests.support.paths import SYNTHEA

KEYS = {
    "Condition": "conditions",
    "Observation": "observations",
    "MedicationRequest": "medicationRequests",
    "MedicationStatement": "medicationStatements",
    "FamilyMemberHistory": "familyHistory",
}
PATIENTS = [
    "Angelic_Mueller",
    "Claudie_Walsh",
    "Fletcher_Hyatt",
    "Kermit_Trantow",
    "Lupe_Little",
    "Moises_Rohan",
    "Morris_Lockman",
    "Renato_Dare",
    "Royal_DuBuque",
    "Twanda_Rippin",
]
WORKUP_LOINC = {"17861-6", "19123-9", "2823-3", "62292-8"}

# Every case read both ways a request body can be decoded (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("both_decoders")


client = module_client()


@cache
def _bundle(name: str, living: bool = True) -> dict[str, Any]:
    """The patient's Bundle; read as a living patient's unless `living` is False."""
    (path,) = SYNTHEA.glob(f"{name}_*.json")
    record: dict[str, Any] = json.loads(path.read_text())
    return alive(record) if living else record


def resources(name: str) -> list[dict[str, Any]]:
    """A fresh copy of the patient's resources (tests may edit them)."""
    return [copy.deepcopy(entry["resource"]) for entry in _bundle(name)["entry"]]


def patient_id(name: str) -> str:
    return next(r["id"] for r in resources(name) if r["resourceType"] == "Patient")


def request_for(name: str, record: list[dict[str, Any]], *extra: dict[str, Any]) -> dict[str, Any]:
    """patient-view request carrying the whole record as prefetch, grouped by type."""
    grouped: dict[str, list[dict[str, Any]]] = {key: [] for key in KEYS.values()}
    patient = None
    for resource in [*record, *extra]:
        kind = resource["resourceType"]
        if kind == "Patient":
            patient = resource
            continue
        grouped.setdefault(KEYS.get(kind, kind), []).append(resource)
    assert patient is not None
    return {
        "hookInstance": str(uuid.uuid4()),
        "hook": "patient-view",
        "context": {"patientId": patient["id"], "userId": "Practitioner/synthea-test"},
        "prefetch": {"patient": patient, **{key: bundle(*found) for key, found in grouped.items()}},
    }


def call(
    client: TestClient,
    name: str,
    *extra: dict[str, Any],
    record: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    request = request_for(name, record if record is not None else resources(name), *extra)
    response = client.post(f"/cds-services/{SERVICE_PV}", json=request)
    assert response.status_code == 200, response.text
    return response.json()


def cards(
    client: TestClient,
    name: str,
    *extra: dict[str, Any],
    record: list[dict[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    return cards_by_code(call(client, name, added_twitch(patient_id(name)), *extra, record=record))


def lookback_reaching(day: date, margin: int = 30) -> int:
    """A lookback (days) that reaches back to `day` from today, whenever the suite runs."""
    return (datetime.now(UTC).date() - day).days + margin


def medication_requests(record: list[dict[str, Any]], rxnorm: str) -> list[dict[str, Any]]:
    return [
        r
        for r in record
        if r["resourceType"] == "MedicationRequest"
        and r["medicationCodeableConcept"]["coding"][0]["code"] == rxnorm
    ]


# --- the gate ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PATIENTS)
def test_without_a_twitch_complaint_no_patient_gets_a_card(client: TestClient, name: str) -> None:
    """No Synthea record documents a twitch complaint, so each answer is {"cards": []},
    whatever else the record holds (neuropathy, smoking, diuretics, alcoholism)."""
    assert call(client, name) == {"cards": []}


@pytest.mark.parametrize("name", PATIENTS)
def test_with_a_twitch_complaint_every_old_record_needs_the_whole_workup(
    client: TestClient, name: str
) -> None:
    """All Synthea results are older than the 365-day lookback, so the work-up card asks for
    all four tests; and no lab card can appear from stale results."""
    found = cards(client, name)
    workup = found["workup-incomplete"]
    assert workup["indicator"] == "info"
    # The work-up card offers all four (issue 9); a card that asks for a test in particular
    # (alcohol: magnesium; a diuretic: what it lowers) offers the same suggestion (same uuid).
    assert sorted(lab_orders(workup)) == sorted(WORKUP_LOINC)
    uuids: dict[str, set[str]] = {}
    for card in found.values():
        for suggestion in card.get("suggestions", []):
            for code in lab_orders({"suggestions": [suggestion]}):
                uuids.setdefault(code, set()).add(suggestion["uuid"])
    assert all(len(found_uuids) == 1 for found_uuids in uuids.values())
    assert not {"hypocalcemia", "hypokalemia", "hyponatremia", "hypomagnesemia"} & set(found)


# --- diabetic neuropathy -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["Renato_Dare", "Morris_Lockman"])
def test_type_2_diabetic_neuropathy_is_a_neuropathy_red_flag(client: TestClient, name: str) -> None:
    """Active SNOMED 368581000119106 (neuropathy due to type 2 diabetes) with twitching is the
    neuropathy red flag: a warning with a neurology referral, B12 and HbA1c offered because
    neither has a result in the lookback (Synthea's HbA1c values are years old). A red flag
    suppresses the lifestyle review."""
    found = cards(client, name)
    card = found["red-flag-neuropathy"]
    assert card["indicator"] == "warning"
    assert "368581000119106" in card["detail"]
    assert card["suggestions"][0]["label"] == "Refer to neurology"
    assert sorted(lab_orders(card)) == sorted(["2132-9", "4548-4"])
    assert "lifestyle-review" not in found


def test_renato_dare_has_no_drug_card(client: TestClient) -> None:
    """Renato takes metformin and diphenhydramine, neither a twitch-relevant class: the cards
    are the neuropathy red flag and the work-up, nothing else."""
    assert set(cards(client, "Renato_Dare")) == {"red-flag-neuropathy", "workup-incomplete"}


def test_morris_lockman_hydrochlorothiazide_is_an_info_drug_card(client: TestClient) -> None:
    """Morris's active "Hydrochlorothiazide 25 MG" (a code outside the product table, found by
    name) is an electrolyte-depleting drug; no low K/Mg on record, so it stays info."""
    found = cards(client, "Morris_Lockman")
    assert set(found) == {"red-flag-neuropathy", "electrolyte-depleting-drug", "workup-incomplete"}
    card = found["electrolyte-depleting-drug"]
    assert card["indicator"] == "info" and "Hydrochlorothiazide 25 mg" in card["summary"]


def test_renato_dare_with_a_lookback_reaching_his_last_visit(make_client: Any) -> None:
    """With a lookback reaching his last labs (2020-09-07), Renato's HbA1c (6.1 %), calcium
    (49765-1, 9.76 mg/dL) and potassium (6298-4, 4.29 mmol/L) count: normal values give no lab
    card, the neuropathy card offers only B12, and the work-up asks only for Mg and vitamin D."""
    client = make_client(lookback_days=lookback_reaching(date(2020, 9, 7)))
    found = cards(client, "Renato_Dare")
    assert set(found) == {"red-flag-neuropathy", "workup-incomplete"}
    assert lab_orders(found["red-flag-neuropathy"]) == ["2132-9"]
    assert sorted(lab_orders(found["workup-incomplete"])) == ["19123-9", "62292-8"]


# --- smokers -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["Kermit_Trantow", "Royal_DuBuque"])
def test_old_smoking_history_is_outside_the_default_lookback(client: TestClient, name: str) -> None:
    """The current-smoker observations (449868002) date from 2011-2015, far beyond the 365-day
    lookback, so there is no nicotine card. The record shows no red flag, so the lifestyle
    review appears (it asks about nicotine anyway); hydrochlorothiazide gives an info card."""
    found = cards(client, name)
    assert "nicotine" not in found
    assert set(found) == {"electrolyte-depleting-drug", "workup-incomplete", "lifestyle-review"}
    assert found["electrolyte-depleting-drug"]["indicator"] == "info"


@pytest.mark.parametrize(
    ("name", "last_current"),
    [("Kermit_Trantow", date(2013, 6, 10)), ("Royal_DuBuque", date(2015, 6, 26))],
)
def test_record_as_it_stood_while_smoking_gives_nicotine_card(
    make_client: Any, name: str, last_current: date
) -> None:
    """The same patient with the later "former smoker" entries taken out (the record as it
    stood while he smoked) and a lookback reaching the last "every day smoker" entry: the
    nicotine card cites that observation and its date."""
    record = [
        r
        for r in resources(name)
        if not (
            r["resourceType"] == "Observation"
            and r["code"]["coding"][0]["code"] == "72166-2"
            and r["effectiveDateTime"][:10] > last_current.isoformat()
        )
    ]
    client = make_client(lookback_days=lookback_reaching(last_current))
    card = cards(client, name, record=record)["nicotine"]
    assert card["indicator"] == "info"
    assert "LOINC 72166-2" in card["detail"] and last_current.isoformat() in card["detail"]


@pytest.mark.parametrize("name", ["Kermit_Trantow", "Royal_DuBuque"])
def test_latest_former_smoker_status_means_no_nicotine_card(make_client: Any, name: str) -> None:
    """With a lookback reaching 2011, both men's whole smoking history counts. Their latest
    status (2019) is "former smoker" (8517006): they no longer smoke, so no nicotine card."""
    client = make_client(lookback_days=lookback_reaching(date(2011, 1, 1)))
    assert "nicotine" not in cards(client, name)


# --- stopped medicines -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["Claudie_Walsh", "Moises_Rohan"])
def test_stopped_prednisone_gives_no_corticosteroid_card(client: TestClient, name: str) -> None:
    """predniSONE 5 MG (RxNorm 312617) was given for an allergic reaction in 2020 and is
    stopped: no corticosteroid card. These children have no red flag: lifestyle review."""
    found = cards(client, name)
    assert "corticosteroid" not in found
    assert set(found) == {"workup-incomplete", "lifestyle-review"}


@pytest.mark.parametrize("name", ["Claudie_Walsh", "Moises_Rohan"])
def test_the_same_prednisone_active_would_give_the_card(client: TestClient, name: str) -> None:
    """Control for the test above: with the request's status set to active, the same Synthea
    resource (SCD 312617) gives the corticosteroid card, so the absence above is the status."""
    record = resources(name)
    (prednisone,) = medication_requests(record, "312617")
    prednisone["status"] = "active"
    card = cards(client, name, record=record)["corticosteroid"]
    # Named as prescribers write it (issue 9), not in RxNorm's capitals.
    assert card["indicator"] == "info" and "Prednisone 5 mg oral tablet" in card["summary"]


@pytest.mark.parametrize("name", ["Angelic_Mueller", "Twanda_Rippin"])
def test_stopped_estrogen_patch_gives_no_estrogen_card(client: TestClient, name: str) -> None:
    """The ethinyl estradiol / norelgestromin patch (RxNorm 1534809) is stopped; the current
    contraceptives (Jolivette, Camila: norethindrone only) contain no estrogen: no card."""
    assert "estrogen" not in cards(client, name)


@pytest.mark.parametrize("name", ["Angelic_Mueller", "Twanda_Rippin"])
def test_the_same_patch_active_would_give_the_estrogen_card(client: TestClient, name: str) -> None:
    """Control: the latest patch request set to active gives the estrogen card (info)."""
    record = resources(name)
    patch = max(medication_requests(record, "1534809"), key=lambda r: r["authoredOn"])
    patch["status"] = "active"
    card = cards(client, name, record=record)["estrogen"]
    assert card["indicator"] == "info" and "ethinyl estradiol" in card["summary"].lower()


def test_angelic_mueller_cards(client: TestClient) -> None:
    """Angelic: hypertension on hydrochlorothiazide (info drug card), no red flag."""
    assert set(cards(client, "Angelic_Mueller")) == {
        "electrolyte-depleting-drug",
        "workup-incomplete",
        "lifestyle-review",
    }


# --- plain and large records -------------------------------------------------------------------


def test_lupe_little_plain_record(client: TestClient) -> None:
    """Lupe: prediabetes, anaemia, old cardiac arrest; no twitch-relevant medicine, no red flag:
    only the work-up (four tests) and the lifestyle review with nothing already on record."""
    found = cards(client, "Lupe_Little")
    assert set(found) == {"workup-incomplete", "lifestyle-review"}
    assert "Already on record" not in found["lifestyle-review"]["detail"]


def test_fletcher_hyatt_as_recorded_deceased_gets_no_cards(client: TestClient) -> None:
    """Synthea records Fletcher as deceased (1996): no advice about him, whatever his record."""
    record = [copy.deepcopy(e["resource"]) for e in _bundle("Fletcher_Hyatt", False)["entry"]]
    assert call(
        client, "Fletcher_Hyatt", added_twitch(patient_id("Fletcher_Hyatt")), record=record
    ) == {"cards": []}


def test_fletcher_hyatt_largest_record_answers_fast(client: TestClient) -> None:
    """Fletcher: 1,111 entries (3.8 MB, all types sent). Expected in bounded time (< 20 s,
    room for a busy machine; speed itself is measured by bench/): alcoholism (SNOMED 7200002,
    active) gives the alcohol card; furosemide injection and hydrochlorothiazide (both active)
    one electrolyte-depleting card naming both; no red flag, so a lifestyle review that says
    alcohol is already on record."""
    started = time.perf_counter()
    found = cards(client, "Fletcher_Hyatt")
    elapsed = time.perf_counter() - started
    assert elapsed < 20, f"{elapsed:.1f} s"
    assert set(found) == {
        "alcohol",
        "electrolyte-depleting-drug",
        "workup-incomplete",
        "lifestyle-review",
    }
    assert "7200002" in found["alcohol"]["detail"]
    drug = found["electrolyte-depleting-drug"]
    assert "furosemide" in drug["detail"].lower()
    assert "hydrochlorothiazide" in drug["detail"].lower()
    assert {card["indicator"] for card in found.values()} == {"info"}
    assert "Alcohol" in found["lifestyle-review"]["detail"]
    # Mg is one suggestion (one uuid), although the alcohol card, the diuretics and the
    # work-up all offer it (issue 9: dismissing one card never removes the only order).
    magnesium = {
        s["uuid"]
        for card in found.values()
        for s in card.get("suggestions", [])
        if "19123-9" in lab_orders({"suggestions": [s]})
    }
    assert len(magnesium) == 1
