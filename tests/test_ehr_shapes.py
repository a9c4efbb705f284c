"""Issue 8, "read the record as real EHRs write it", through HTTP with EHR-shaped records.

Each test sends what Epic, Oracle Health (Cerner), an HL7 v2-fed FHIR server or Synthea
actually writes, where the shape differs from the clean examples of the other tests: absent
findings as Observations with a "No"/"Absent" value, same-day repeats with full instants,
`medicationReference`s, brand names, topical steroids, valueString numbers, several reference
ranges, panels with components, OIDs, ICD-10 without its dot, every form of the patient
reference. Each one failed before the issue was resolved (see the resolving commit).
"""

from __future__ import annotations

import copy
import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import SERVICE_PV, SERVICE_SIGN
from tests.support.cards import cards_by_code
from tests.support.fhir import (
    LOINC,
    SNOMED,
    condition,
    days_ago,
    hook_request,
    lab,
    medication,
    patient,
    twitch,
)
from tests.support.fhir_server import FhirTestServer, node_available

POTASSIUM, MAGNESIUM, CALCIUM, IONIZED_CALCIUM = "2823-3", "19123-9", "17861-6", "1994-3"
VITAMIN_D_TOTAL, VITAMIN_D3, VITAMIN_D3_MOLES = "62292-8", "1989-3", "14635-7"
B12_MOLES = "14685-2"
ALBUMIN = "1751-7"
WEAKNESS, DYSPHAGIA, DYSARTHRIA, FASCICULATION = "26544005", "40739000", "8011004", "82470000"
MND = "red-flag-motor-neuron-disease"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
ROUTE = "http://snomed.info/sct"

# Every case read both ways a request body can be decoded (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("both_decoders")


def found(
    client: TestClient,
    *resources: dict[str, Any],
    request: dict[str, Any] | None = None,
    service: str = SERVICE_PV,
    **kwargs: Any,
) -> dict[str, str]:
    """Finding code -> indicator of the cards the service answers."""
    body = request or hook_request(*resources, **kwargs)
    response = client.post(f"/cds-services/{service}", json=body)
    assert response.status_code == 200, response.text
    return {code: card["indicator"] for code, card in cards_by_code(response.json()).items()}


def detail(client: TestClient, code: str, *resources: dict[str, Any]) -> str:
    response = client.post(f"/cds-services/{SERVICE_PV}", json=hook_request(*resources))
    assert response.status_code == 200, response.text
    return str(cards_by_code(response.json())[code]["detail"])


def finding(
    code: str,
    *,
    value: dict[str, Any] | None = None,
    when: str | None = None,
    category: str = "exam",
    **extra: Any,
) -> dict[str, Any]:
    """An exam finding / review-of-systems answer as Epic and Oracle Health write it: the
    finding's SNOMED code, and the answer in value[x] (none: the code itself is the finding)."""
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": f"f-{uuid.uuid4().hex[:8]}",
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": category,
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": SNOMED, "code": code}], "text": "Exam finding"},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": when or f"{days_ago(2)}T10:15:00-05:00",
        **(value or {}),
        **extra,
    }
    return resource


def answer(code: str, display: str) -> dict[str, Any]:
    return {
        "valueCodeableConcept": {
            "coding": [{"system": SNOMED, "code": code, "display": display}],
            "text": display,
        }
    }


def at(resource: dict[str, Any], when: str, **extra: Any) -> dict[str, Any]:
    return {**resource, "effectiveDateTime": when, **extra}


# --- 1. absent and negated findings are not evidence ------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        answer("2667000", "Absent"),
        answer("373067005", "No"),
        answer("260385009", "Negative"),
        answer("272519000", "Absence of"),
        {"valueBoolean": False},
        {"valueString": "No"},
        {"interpretation": [{"coding": [{"system": INTERPRETATION, "code": "NEG"}]}]},
    ],
    ids=["absent", "no", "negative", "absence-of", "boolean-false", "string-no", "NEG"],
)
def test_a_bulbar_sign_recorded_as_absent_raises_no_alarm(
    client: TestClient, value: dict[str, Any]
) -> None:
    cards = found(
        client,
        twitch(),
        finding(DYSPHAGIA, value=value),
        finding(WEAKNESS, value=value, category="survey"),
    )
    assert MND not in cards
    for present in (None, {"valueBoolean": True}, answer("52101004", "Present")):
        assert found(client, twitch(), finding(DYSARTHRIA, value=present))[MND] == "critical"


def test_twitching_recorded_as_absent_means_no_cards(client: TestClient) -> None:
    denied = finding(FASCICULATION, value=answer("373067005", "No"), category="survey")
    assert found(client, denied, lab(MAGNESIUM, 1.1, "mg/dL"), finding(DYSPHAGIA)) == {}


def test_a_newer_absent_answer_outweighs_an_older_present_one(client: TestClient) -> None:
    older = finding(WEAKNESS, when=days_ago(40))
    newer = finding(WEAKNESS, value={"valueBoolean": False}, when=days_ago(3))
    assert MND not in found(client, twitch(), newer, older)


# --- 2. the latest result is decided by time, never by bundle order -------------------------


def test_the_repeat_after_treatment_decides_not_the_bundle_order(client: TestClient) -> None:
    day = days_ago(1)
    critical = lab(POTASSIUM, 2.4, "mmol/L", when=f"{day}T08:05:00-05:00")
    repeat = lab(POTASSIUM, 4.1, "mmol/L", when=f"{day}T14:40:00-05:00")
    assert "hypokalemia" not in found(client, twitch(), critical, repeat)
    assert found(client, twitch(), repeat, critical).get("hypokalemia") is None


def test_instants_are_compared_across_time_zones(client: TestClient) -> None:
    """23:30 in New York on day D is 04:30 UTC on D+1: after a 02:00 UTC result of D+1."""
    day_d, day_after = days_ago(3), days_ago(2)
    late_evening = lab(POTASSIUM, 3.0, "mmol/L", when=f"{day_d}T23:30:00-05:00")
    early_morning = lab(POTASSIUM, 4.2, "mmol/L", when=f"{day_after}T02:00:00+00:00")
    assert found(client, twitch(), early_morning, late_evening)["hypokalemia"] == "warning"


def test_issued_breaks_a_tie_between_equal_instants(client: TestClient) -> None:
    when = f"{days_ago(1)}T07:00:00Z"
    first = {**lab(POTASSIUM, 2.4, "mmol/L", when=when), "issued": f"{days_ago(1)}T07:50:00Z"}
    rerun = {**lab(POTASSIUM, 3.9, "mmol/L", when=when), "issued": f"{days_ago(1)}T08:30:00Z"}
    assert "hypokalemia" not in found(client, twitch(), first, rerun)


def test_a_critical_value_that_time_cannot_order_is_shown_with_the_other(
    client: TestClient,
) -> None:
    day = days_ago(2)
    normal, critical = (
        lab(POTASSIUM, 4.1, "mmol/L", when=day),
        lab(POTASSIUM, 2.3, "mmol/L", when=day),
    )
    assert found(client, twitch(), normal, critical)["hypokalemia"] == "critical"
    text = detail(client, "hypokalemia", twitch(), normal, critical)
    assert "2.3 mmol/L" in text and "4.1 mmol/L" in text


# --- 3. medications as EHRs send them ---------------------------------------------------------


def order(reference: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """An Epic-style MedicationRequest that names its drug by reference."""
    resource = medication(None)
    del resource["medicationCodeableConcept"]
    return {**resource, "medicationReference": reference, **extra}


def test_a_medication_reference_with_only_its_display(client: TestClient) -> None:
    request = order({"reference": "Medication/eZq4mRx1", "display": "predniSONE 20 MG tablet"})
    assert "corticosteroid" in found(client, twitch(), request)


def test_a_medication_in_a_transaction_bundle_referenced_by_urn_uuid(client: TestClient) -> None:
    request = hook_request(twitch())
    drug = {
        "resourceType": "Medication",
        "code": {
            "coding": [
                {
                    "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                    "code": "312617",
                    "display": "predniSONE 5 MG Oral Tablet",
                }
            ]
        },
    }
    ordered = order({"reference": "urn:uuid:4b1e0f5a-52cf-4c1e-9b0e-8f3f2f1d2a10"})
    request["prefetch"]["medicationRequests"] = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:4b1e0f5a-52cf-4c1e-9b0e-8f3f2f1d2a10", "resource": drug},
            {"fullUrl": "urn:uuid:0a9b3c2d-1111-4e5f-8a7b-6c5d4e3f2a1b", "resource": ordered},
        ],
    }
    assert "corticosteroid" in found(client, request=request)


@pytest.mark.skipif(not node_available(), reason="node/npm not installed")
def test_a_referenced_medication_missing_from_prefetch_is_fetched(
    client: TestClient, fhir: FhirTestServer
) -> None:
    fhir.load(
        {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "resource": {
                        "resourceType": "Medication",
                        "id": "medHCTZ25",
                        "code": {
                            "coding": [
                                {
                                    "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                                    "code": "310798",
                                    "display": "hydroCHLOROthiazide 25 MG Oral Tablet",
                                }
                            ]
                        },
                    },
                    "request": {"method": "PUT", "url": "Medication/medHCTZ25"},
                }
            ],
        }
    )
    request = hook_request(
        twitch(), order({"reference": "Medication/medHCTZ25"}), lab(POTASSIUM, 3.1, "mmol/L")
    )
    request["fhirServer"] = fhir.base_url
    assert found(client, request=request)["electrolyte-depleting-drug"] == "warning"


@pytest.mark.parametrize(
    ("text", "route"),
    [
        ("hydrocortisone 1 % topical cream", None),
        ("triamcinolone acetonide 0.1 % ointment", None),
        ("budesonide 0.5 MG/2ML suspension", ("447694001", "Respiratory tract route")),
        ("budesonide 32 mcg/actuation nasal spray", None),
        ("prednisoLONE acetate 1 % ophthalmic suspension", None),
        ("dexamethasone 0.1 % otic solution", ("10547007", "Otic route")),
    ],
)
def test_non_systemic_corticosteroids_give_no_steroid_card_or_warning(
    client: TestClient, text: str, route: tuple[str, str] | None
) -> None:
    drug = medication(text=text)
    if route:
        drug["dosageInstruction"] = [
            {"route": {"coding": [{"system": ROUTE, "code": route[0], "display": route[1]}]}}
        ]
    cards = found(client, twitch(), drug, lab(POTASSIUM, 3.1, "mmol/L"))
    assert "corticosteroid" not in cards
    assert cards["hypokalemia"] == "warning"
    oral = medication(text="dexamethasone 4 mg tablet")
    oral["dosageInstruction"] = [{"route": {"coding": [{"system": ROUTE, "code": "26643006"}]}}]
    assert (
        found(client, twitch(), oral, lab(POTASSIUM, 3.1, "mmol/L"))["corticosteroid"] == "warning"
    )
    assert "corticosteroid" in found(
        client, twitch(), medication(text="methylPREDNISolone sodium succinate 125 MG injection")
    )


def test_a_medication_form_says_topical(client: TestClient) -> None:
    request = hook_request(twitch())
    drug = {
        "resourceType": "Medication",
        "id": "cerner-hc",
        "code": {"text": "Hydrocortisone"},
        "form": {"coding": [{"system": SNOMED, "code": "385101003", "display": "Ointment"}]},
    }
    request["prefetch"]["medicationRequests"]["entry"] += [
        {"resource": drug, "search": {"mode": "include"}},
        {"resource": order({"reference": "Medication/cerner-hc"}), "search": {"mode": "match"}},
    ]
    assert "corticosteroid" not in found(client, request=request)


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("Adderall XR 20 mg capsule", "stimulant"),
        ("lisinopril-HCTZ 20-12.5 mg tablet", "electrolyte-depleting-drug"),
        ("Medrol 4 mg dosepak", "corticosteroid"),
        ("Deltasone 10 mg", "corticosteroid"),
        ("Premarin 0.625 mg tablet", "estrogen"),
        ("Mestinon 60 mg", "cholinergic-drug"),
        ("NicoDerm CQ 21 mg/24 hr patch", "nicotine"),
        ("Prilosec OTC 20 mg", "electrolyte-depleting-drug"),
    ],
)
def test_brand_names_and_abbreviations_map_to_ingredients(
    client: TestClient, text: str, code: str
) -> None:
    assert code in found(client, twitch(), medication(text=text))


@pytest.mark.parametrize(
    "change", [{"intent": "proposal"}, {"intent": "plan"}, {"doNotPerform": True}], ids=str
)
def test_proposals_plans_and_do_not_perform_are_not_therapy(
    client: TestClient, change: dict[str, Any]
) -> None:
    drug = {**medication("312617", "predniSONE 5 MG Oral Tablet"), **change}
    assert "corticosteroid" not in found(client, twitch(), drug)


@pytest.mark.parametrize("status", ["not-taken", "entered-in-error", "completed"])
def test_statements_of_drugs_not_taken_now_are_not_therapy(client: TestClient, status: str) -> None:
    """Already so before issue 8 (status filter); kept as a guard beside the cases above."""
    statement = medication(text="Medrol 4 mg tablet", status=status, kind="MedicationStatement")
    assert "corticosteroid" not in found(client, twitch(), statement)


def draft_request(draft: dict[str, Any]) -> dict[str, Any]:
    request = hook_request(
        twitch(),
        lab(POTASSIUM, 3.1, "mmol/L"),
        hook="order-sign",
        draftOrders={
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": draft}],
        },
    )
    return request


def test_draft_orders_read_contained_medications(client: TestClient) -> None:
    draft = order(
        {"reference": "#m1"},
        status="draft",
        contained=[
            {
                "resourceType": "Medication",
                "id": "m1",
                "code": {
                    "coding": [
                        {
                            "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                            "code": "312617",
                            "display": "predniSONE 5 MG Oral Tablet",
                        }
                    ]
                },
            }
        ],
    )
    assert (
        found(client, request=draft_request(draft), service=SERVICE_SIGN)["corticosteroid"]
        == "warning"
    )


def test_a_do_not_perform_draft_is_not_an_order(client: TestClient) -> None:
    draft = {
        **medication("312617", "predniSONE 5 MG Oral Tablet"),
        "status": "draft",
        "doNotPerform": True,
    }
    assert "corticosteroid" not in found(client, request=draft_request(draft), service=SERVICE_SIGN)


# --- 4. labs as laboratories send them --------------------------------------------------------


@pytest.mark.parametrize(
    ("loinc", "value", "unit"),
    [(VITAMIN_D3, 14, "ng/mL"), (VITAMIN_D3_MOLES, 30, "nmol/L"), ("49054-0", 11, "ng/mL")],
)
def test_every_common_vitamin_d_code_is_read(
    client: TestClient, loinc: str, value: float, unit: str
) -> None:
    cards = found(client, twitch(), lab(loinc, value, unit))
    assert cards["vitamin-d-deficiency"] == "warning"


def test_b12_in_pmol_per_litre_is_read(client: TestClient) -> None:
    assert "vitamin-b12-deficiency" in found(client, twitch(), lab(B12_MOLES, 95, "pmol/L"))


def string_lab(loinc: str, text: str, unit: str | None = None, **extra: Any) -> dict[str, Any]:
    """An HL7 v2 OBX with value type ST, as v2-fed FHIR servers pass it on."""
    resource = lab(loinc, None, None)
    del resource["valueQuantity"]
    resource["valueString"] = text
    if unit:
        resource["referenceRange"] = [{"text": "see report", "low": {"value": 0, "unit": unit}}]
    return {**resource, **extra}


def test_numbers_in_value_string_are_judged(client: TestClient) -> None:
    assert found(client, twitch(), string_lab(POTASSIUM, "2.4"))["hypokalemia"] == "critical"
    assert (
        found(client, twitch(), string_lab(VITAMIN_D_TOTAL, "<5 ng/mL"))["vitamin-d-deficiency"]
        == "warning"
    )
    # ">150 pg/mL" allows values on both sides of 180 pg/mL: not judged low.
    assert "vitamin-b12-deficiency" not in found(
        client, twitch(), string_lab("2132-9", ">150", "pg/mL")
    )


@pytest.mark.parametrize("unit", ["µg/L", "μg/L", "mcg/L"])
def test_unit_strings_without_ucum_code_are_understood(client: TestClient, unit: str) -> None:
    result = lab(VITAMIN_D_TOTAL, 12, None)
    result["valueQuantity"]["unit"] = unit
    assert found(client, twitch(), result)["vitamin-d-deficiency"] == "warning"


def test_a_value_exactly_at_the_cut_off_stays_on_its_side(client: TestClient) -> None:
    """Deficiency is "<= 20 ng/mL (50 nmol/L)"; 50 nmol/L converts to 20.03 ng/mL."""
    assert (
        found(client, twitch(), lab(VITAMIN_D_TOTAL, 50, "nmol/L"))["vitamin-d-deficiency"]
        == "warning"
    )


def test_the_reference_range_for_the_patients_sex_and_age_is_used(client: TestClient) -> None:
    result = lab(MAGNESIUM, 1.75, "mg/dL")
    band = {"unit": "mg/dL", "system": "http://unitsofmeasure.org", "code": "mg/dL"}
    result["referenceRange"] = [
        {
            "low": {"value": 1.6, **band},
            "high": {"value": 2.6, **band},
            "age": {
                "low": {"value": 0, "unit": "a", "code": "a"},
                "high": {"value": 17, "unit": "a", "code": "a"},
            },
        },
        {
            "low": {"value": 1.8, **band},
            "high": {"value": 2.4, **band},
            "appliesTo": [{"coding": [{"system": SNOMED, "code": "248152002"}]}],
            "age": {"low": {"value": 18, "unit": "a", "code": "a"}},
        },
        {"low": {"value": 1.7, **band}, "high": {"value": 2.2, **band}},
    ]
    assert found(client, twitch(), result)["hypomagnesemia"] == "warning"


def test_the_labs_flag_decides_when_the_value_cannot(client: TestClient) -> None:
    flagged = string_lab(
        CALCIUM,
        "see comment",
        interpretation=[{"coding": [{"system": INTERPRETATION, "code": "LL"}]}],
    )
    assert found(client, twitch(), flagged)["hypocalcemia"] == "critical"


def test_the_card_says_when_the_labs_flag_disagrees(client: TestClient) -> None:
    flagged = {
        **lab(POTASSIUM, 3.2, "mmol/L"),
        "interpretation": [
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0078", "code": "LL"}]}
        ],
    }
    assert "the laboratory flags it critically low" in detail(
        client, "hypokalemia", twitch(), flagged
    )


def test_a_preliminary_critical_value_is_shown_labelled(client: TestClient) -> None:
    preliminary = lab(POTASSIUM, 2.2, "mmol/L", status="preliminary")
    assert found(client, twitch(), preliminary)["hypokalemia"] == "critical"
    assert "preliminary" in detail(client, "hypokalemia", twitch(), preliminary)
    assert "hypokalemia" not in found(
        client, twitch(), lab(POTASSIUM, 3.3, "mmol/L", status="preliminary")
    )


def test_a_normal_ionized_calcium_of_the_same_day_outranks_a_low_total(client: TestClient) -> None:
    day = days_ago(4)
    total = lab(CALCIUM, 7.9, "mg/dL", when=f"{day}T06:10:00Z")
    ionized = lab(IONIZED_CALCIUM, 1.21, "mmol/L", when=f"{day}T06:12:00Z")
    assert "hypocalcemia" not in found(client, twitch(), total, ionized)


def test_an_albumin_corrected_calcium_states_both_values(client: TestClient) -> None:
    text = detail(
        client, "hypocalcemia", twitch(), lab(CALCIUM, 7.2, "mg/dL"), lab(ALBUMIN, 3.0, "g/dL")
    )
    assert "measured 7.2 mg/dL" in text and "to 8 mg/dL" in text


def test_a_panel_component_is_read_like_a_single_result(client: TestClient) -> None:
    panel = lab("24323-8", None, None)
    del panel["valueQuantity"]
    panel["component"] = [
        {
            "code": {"coding": [{"system": LOINC, "code": "2951-2"}]},
            "valueQuantity": {"value": 139, "unit": "mmol/L"},
        },
        {
            "code": {"coding": [{"system": LOINC, "code": POTASSIUM}], "text": "Potassium"},
            "valueQuantity": {"value": 2.9, "unit": "mEq/L"},
        },
    ]
    assert found(client, twitch(), panel)["hypokalemia"] == "warning"


def test_impossible_values_are_not_judged(client: TestClient) -> None:
    cards = found(client, twitch(), lab(POTASSIUM, 0, "mmol/L"), lab(MAGNESIUM, -1.2, "mg/dL"))
    assert "hypokalemia" not in cards and "hypomagnesemia" not in cards


def test_a_result_dated_in_the_future_is_never_the_latest(client: TestClient) -> None:
    future = lab(POTASSIUM, 4.4, "mmol/L", when=f"{days_ago(-30)}T09:00:00Z")
    assert (
        found(client, twitch(), lab(POTASSIUM, 3.0, "mmol/L"), future)["hypokalemia"] == "warning"
    )


# --- 5. code systems as they arrive -------------------------------------------------------------


def test_oid_code_systems_from_c_cda_are_read(client: TestClient) -> None:
    oid = "urn:oid:2.16.840.1.113883.6."
    complaint = condition("R25.3", f"{oid}90")
    weakness = condition(WEAKNESS, f"{oid}96")
    low_mg = {
        **lab(MAGNESIUM, 1.2, "mg/dL"),
        "code": {"coding": [{"system": f"{oid}1", "code": MAGNESIUM}]},
    }
    steroid = medication("312617")
    steroid["medicationCodeableConcept"]["coding"][0]["system"] = f"{oid}88"
    cards = found(client, complaint, weakness, low_mg, steroid)
    assert {MND, "hypomagnesemia", "corticosteroid"} <= set(cards)


def test_icd10_without_its_dot_and_who_icd10_are_read(client: TestClient) -> None:
    assert "hypomagnesemia" in found(client, condition("R253"), lab(MAGNESIUM, 1.2, "mg/dL"))
    who = "http://hl7.org/fhir/sid/icd-10"
    assert found(client, condition("R25.3", who), condition("G12.2", who))[MND] == "warning"


# --- 6. the patient in every reference form ----------------------------------------------------


@pytest.mark.parametrize(
    "reference", ["Patient/p1/_history/3", "https://fhir.ehr.example.org/R4/Patient/p1/_history/12"]
)
def test_versioned_patient_references_name_the_patient(client: TestClient, reference: str) -> None:
    low_mg = {**lab(MAGNESIUM, 1.2, "mg/dL"), "subject": {"reference": reference}}
    request = hook_request(twitch(), low_mg)
    request["fhirServer"] = "https://fhir.ehr.example.org/R4"  # absolute: on the EHR's server
    assert "hypomagnesemia" in found(client, request=request)


def test_urn_uuid_references_resolve_within_a_synthea_bundle(client: TestClient) -> None:
    """Synthea's transaction bundles name the patient by the Patient entry's urn:uuid."""
    ours, theirs = (
        "urn:uuid:9f8d1c3e-0b3a-4c55-9d5e-2d6f1e7a8b90",
        "urn:uuid:1c2b3a4d-5e6f-4a8b-9c0d-e1f2a3b4c5d6",
    )
    other = patient(patient_id="p2")

    def of(resource: dict[str, Any], who: str) -> dict[str, Any]:
        return {
            "fullUrl": f"urn:uuid:{uuid.uuid4()}",
            "resource": {**copy.deepcopy(resource), "subject": {"reference": who}},
        }

    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": ours, "resource": patient()},
            {"fullUrl": theirs, "resource": other},
            of(twitch(), ours),
            of(lab(MAGNESIUM, 1.9, "mg/dL"), ours),
            of(lab(POTASSIUM, 2.3, "mmol/L"), theirs),
        ],
    }
    request = hook_request()
    request["prefetch"]["everything"] = bundle
    cards = found(client, request=request)
    assert "workup-incomplete" in cards and "hypokalemia" not in cards
