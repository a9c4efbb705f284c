"""Issue 16, points 3, 4, 6 and 7, through HTTP: whose a resource is, which copy of it counts,
no cards for a deceased patient, and cut-offs applied as laboratories round them.

Each test sends what an EHR sends; each failed before the issue was resolved (another
patient's result counted, the bundle order decided between two versions, a deceased patient
was offered a neurology referral, 2.12 mmol/L was called low calcium).
"""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import SERVICE_PV
from tests.support.cards import cards_by_code
from tests.support.fhir import (
    PATIENT,
    condition,
    days_ago,
    hook_request,
    lab,
    patient,
    twitch,
)

MAGNESIUM, CALCIUM, CALCIUM_MOLES, POTASSIUM = "19123-9", "17861-6", "2000-8", "2823-3"
SERVER = "https://fhir.hospital.example.org/R4"
MRN = {"system": "urn:oid:1.2.840.114350.1.13.0.1.7.5.737384.14", "value": "E12345"}
MND = "G12.21"


def answer(client: TestClient, request: dict[str, Any]) -> dict[str, dict[str, Any]]:
    response = client.post(f"/cds-services/{SERVICE_PV}", json=request)
    assert response.status_code == 200, response.text
    return cards_by_code(response.json())


def with_patient(request: dict[str, Any], **fields: Any) -> dict[str, Any]:
    request["prefetch"]["patient"].update(fields)
    return request


def low_magnesium(subject: dict[str, Any]) -> dict[str, Any]:
    return {**lab(MAGNESIUM, 1.2, "mg/dL"), "subject": subject}


# --- point 3: identity ---------------------------------------------------------------------------

OURS = {
    "relative": {"reference": f"Patient/{PATIENT}"},
    "relative, versioned": {"reference": f"Patient/{PATIENT}/_history/4"},
    "absolute on fhirServer": {"reference": f"{SERVER}/Patient/{PATIENT}"},
    "identifier of the patient": {"identifier": MRN},
    "identifier with spaces": {"identifier": {**MRN, "value": " E12345 "}},
    "merged record (Patient.link)": {"reference": "Patient/old-record-7"},
}
NOT_OURS = {
    "another patient": {"reference": "Patient/p2"},
    "this id on another server": {"reference": f"https://other.example.net/R4/Patient/{PATIENT}"},
    "another identifier": {"identifier": {**MRN, "value": "E99999"}},
    "this identifier value in another system": {
        "identifier": {"system": "urn:x", "value": "E12345"}
    },
    "a display alone": {"display": "Ada Testperson"},
    "a conditional reference": {"reference": "Patient?identifier=E12345"},
}


def identity_request(subject: dict[str, Any]) -> dict[str, Any]:
    request = hook_request(twitch(), low_magnesium(subject))
    request["fhirServer"] = SERVER
    return with_patient(
        request,
        identifier=[MRN],
        link=[{"other": {"reference": "Patient/old-record-7"}, "type": "replaces"}],
    )


@pytest.mark.parametrize("subject", list(OURS.values()), ids=list(OURS))
def test_a_subject_that_names_this_patient_counts(
    client: TestClient, subject: dict[str, Any]
) -> None:
    assert "hypomagnesemia" in answer(client, identity_request(subject))


@pytest.mark.parametrize("subject", list(NOT_OURS.values()), ids=list(NOT_OURS))
def test_a_subject_that_does_not_name_this_patient_is_only_counted(
    client: TestClient, subject: dict[str, Any]
) -> None:
    before = _other_patient_count(client)
    found = answer(client, identity_request(subject))
    assert "hypomagnesemia" not in found
    assert "Magnesium" in found["workup-incomplete"]["detail"]  # counted, never named
    assert "another patient" not in found["workup-incomplete"]["detail"]
    assert _other_patient_count(client) == before + 1


def test_a_result_without_a_subject_is_nobodys(client: TestClient) -> None:
    result = lab(MAGNESIUM, 1.2, "mg/dL")
    del result["subject"]
    assert "hypomagnesemia" not in answer(client, hook_request(twitch(), result))


def test_the_urn_uuid_of_this_patients_entry_names_the_patient(client: TestClient) -> None:
    ours = "urn:uuid:5d7c1b2a-3e4f-4a5b-8c6d-7e8f9a0b1c2d"
    request = hook_request()
    request["prefetch"] |= {
        "everything": {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [
                {"fullUrl": ours, "resource": patient()},
                {
                    "fullUrl": "urn:uuid:0b1",
                    "resource": {**twitch(), "subject": {"reference": ours}},
                },
                {
                    "fullUrl": "urn:uuid:0b2",
                    "resource": low_magnesium({"reference": ours}),
                },
                {
                    "fullUrl": "urn:uuid:0b3",
                    "resource": low_magnesium({"reference": "urn:uuid:someone-else"}),
                },
            ],
        }
    }
    found = answer(client, request)
    assert "hypomagnesemia" in found


def _other_patient_count(client: TestClient) -> float:
    return _unread_count(client, "other-patient")


def _unread_count(client: TestClient, reason: str) -> float:
    """twitch_cds_resources_unread_total of Observations for `reason`, as /metrics says."""
    text = client.get("/metrics").text
    match = re.search(
        rf'^twitch_cds_resources_unread_total\{{(?=[^}}]*reason="{reason}")'
        r'(?=[^}]*resource_type="Observation")[^}]*\} (\S+)$',
        text,
        re.MULTILINE,
    )
    return float(match[1]) if match else 0.0


# --- point 4: versions ---------------------------------------------------------------------------


def two_versions(
    first: dict[str, Any], second: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Two copies of one Observation: a critical potassium, amended to a normal one."""
    critical = {**lab(POTASSIUM, 2.1, "mmol/L"), "id": "k-1", **first}
    amended = {**copy.deepcopy(critical), "status": "amended", **second}
    amended["valueQuantity"] = {**critical["valueQuantity"], "value": 4.2}
    return critical, amended


VERSIONS = {
    "versionId": ({"meta": {"versionId": "1"}}, {"meta": {"versionId": "2"}}),
    "versionId 10 after 9": ({"meta": {"versionId": "9"}}, {"meta": {"versionId": "10"}}),
    "lastUpdated": (
        {"meta": {"lastUpdated": "2026-01-05T08:00:00Z"}},
        {"meta": {"lastUpdated": "2026-01-05T09:30:00+01:00"}},
    ),
    "lastUpdated with spaces": (
        {"meta": {"lastUpdated": "2026-01-05 08:00:00 +0000"}},
        {"meta": {"lastUpdated": " 2026-01-05 10:00:00 +0000 "}},
    ),
    "issued": ({"issued": "2026-01-05T08:00:00Z"}, {"issued": "2026-01-05T11:00:00Z"}),
}


@pytest.mark.parametrize("marks", list(VERSIONS.values()), ids=list(VERSIONS))
@pytest.mark.parametrize("order", ["older first", "newer first"])
def test_the_later_version_counts_whatever_the_bundle_order(
    client: TestClient, marks: tuple[dict[str, Any], dict[str, Any]], order: str
) -> None:
    older, newer = two_versions(*marks)
    results = (older, newer) if order == "older first" else (newer, older)
    found = answer(client, hook_request(twitch(), *results))
    assert "hypokalemia" not in found
    assert (
        "workup-incomplete" not in found or "Potassium" not in found["workup-incomplete"]["detail"]
    )


@pytest.mark.parametrize("order", ["older first", "newer first"])
def test_a_version_entered_in_error_withdraws_the_resource(client: TestClient, order: str) -> None:
    result = {**lab(MAGNESIUM, 1.2, "mg/dL"), "id": "mg-1", "meta": {"versionId": "1"}}
    withdrawn = {**copy.deepcopy(result), "status": "entered-in-error", "meta": {"versionId": "2"}}
    results = (result, withdrawn) if order == "older first" else (withdrawn, result)
    before = _unread_count(client, "entered-in-error")
    found = answer(client, hook_request(twitch(), *results))
    assert "hypomagnesemia" not in found
    assert _unread_count(client, "entered-in-error") == before + 1


def test_a_condition_entered_in_error_withdraws_its_earlier_version(client: TestClient) -> None:
    diagnosis = {**condition(MND), "id": "c-mnd"}
    withdrawn = {**condition(MND, verification="entered-in-error"), "id": "c-mnd"}
    found = answer(client, hook_request(twitch(), diagnosis, withdrawn))
    assert "red-flag-motor-neuron-disease" not in found


def test_copies_that_nothing_orders_are_both_kept_the_most_severe_deciding(
    client: TestClient,
) -> None:
    critical, normal = two_versions({}, {"status": "final"})
    found = answer(client, hook_request(twitch(), normal, critical))
    assert found["hypokalemia"]["indicator"] == "critical"


# --- point 6: deceased ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "death", [{"deceasedBoolean": True}, {"deceasedDateTime": days_ago(2)}], ids=["bool", "date"]
)
def test_a_deceased_patient_gets_no_cards(
    client: TestClient, death: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    request = hook_request(twitch(), condition(MND), lab(POTASSIUM, 2.1, "mmol/L"))
    alive = answer(client, copy.deepcopy(request))
    assert "red-flag-motor-neuron-disease" in alive  # what the record would otherwise give
    capsys.readouterr()
    assert answer(client, with_patient(request, **death)) == {}
    log = capsys.readouterr().out
    assert '"deceased": true' in log
    assert "Testperson" not in log and "1970-01-01" not in log and days_ago(2) not in log


def test_deceased_false_is_alive(client: TestClient) -> None:
    request = with_patient(hook_request(twitch(), condition(MND)), deceasedBoolean=False)
    assert "red-flag-motor-neuron-disease" in answer(client, request)


# --- point 7: cut-offs at the laboratory's own rounding -----------------------------------------


@pytest.mark.parametrize(
    ("value", "unit", "low"),
    [
        (2.12, "mmol/L", False),  # 8.5 mg/dL as laboratories publish it
        (2.11, "mmol/L", True),
        (8.5, "mg/dL", False),
        (8.4, "mg/dL", True),
        (2.12, "mmol/l", False),  # the unit in another letter case
    ],
)
def test_calcium_is_low_below_the_published_limit_in_either_unit(
    client: TestClient, value: float, unit: str, low: bool
) -> None:
    code = CALCIUM_MOLES if unit.lower() == "mmol/l" else CALCIUM
    result = lab(code, value, unit)
    found = answer(client, hook_request(twitch(), result))
    assert ("hypocalcemia" in found) is low


@pytest.mark.parametrize(
    ("loinc", "value", "unit", "critical"),
    [
        ("1994-3", 3.2, "mg/dL", False),  # ionized Ca < 0.8 mmol/L is < 3.2 mg/dL
        ("1994-3", 3.1, "mg/dL", True),
        (CALCIUM_MOLES, 1.62, "mmol/L", True),  # total Ca <= 6.5 mg/dL is <= 1.62 mmol/L
        (CALCIUM_MOLES, 1.63, "mmol/L", False),
        ("2601-3", 0.41, "mmol/L", True),  # Mg <= 1.0 mg/dL is <= 0.41 mmol/L
        ("2601-3", 0.42, "mmol/L", False),
    ],
)
def test_critical_limits_apply_at_the_published_rounding(
    client: TestClient, loinc: str, value: float, unit: str, critical: bool
) -> None:
    found = answer(client, hook_request(twitch(), lab(loinc, value, unit)))
    indicators = {card["indicator"] for card in found.values()}
    assert ("critical" in indicators) is critical


def test_a_high_magnesium_during_an_infusion_is_a_result_not_missing(client: TestClient) -> None:
    found = answer(client, hook_request(twitch(), lab(MAGNESIUM, 7.2, "mg/dL")))
    assert "hypomagnesemia" not in found
    assert "Magnesium" not in found.get("workup-incomplete", {}).get("detail", "")
