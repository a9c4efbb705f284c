"""patient-view through HTTP, as an EHR calls it: which cards appear, and why.

Each test builds a small record, sends it as prefetch, and checks the cards by their
`source.topic.code` (the contract's finding codes).
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import SERVICE_PV
from tests.support.cards import cards_by_code
from tests.support.fhir import (
    ICD10,
    SNOMED,
    condition,
    days_ago,
    hook_request,
    lab,
    medication,
    twitch,
)

MAGNESIUM_MASS, MAGNESIUM_MOLES = "19123-9", "2601-3"
CALCIUM, ALBUMIN, IONIZED_CALCIUM = "17861-6", "1751-7", "1994-3"
POTASSIUM, VITAMIN_D = "2823-3", "62292-8"
NORMAL_WORKUP = (
    lab(CALCIUM, 9.4, "mg/dL"),
    lab(MAGNESIUM_MASS, 2.0, "mg/dL"),
    lab(POTASSIUM, 4.2, "mmol/L"),
    lab(VITAMIN_D, 35, "ng/mL"),
)


def call(client: TestClient, *resources: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    response = client.post(f"/cds-services/{SERVICE_PV}", json=hook_request(*resources, **kwargs))
    assert response.status_code == 200, response.text
    return response.json()


def codes(client: TestClient, *resources: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    return cards_by_code(call(client, *resources, **kwargs))


# --- the gate -----------------------------------------------------------------------------


def test_no_twitch_complaint_means_no_cards_even_with_abnormal_data(client: TestClient) -> None:
    body = call(
        client,
        lab(MAGNESIUM_MASS, 1.1, "mg/dL"),
        medication("312617", "predniSONE 5 MG Oral Tablet"),
        condition("26544005", SNOMED),
    )
    assert body == {"cards": []}


@pytest.mark.parametrize(
    ("code", "system"),
    [
        ("R25.3", ICD10),
        ("R25.2", ICD10),
        ("G51.4", ICD10),
        ("82470000", SNOMED),
        ("27678003", SNOMED),
        ("55300003", SNOMED),
        ("1070000", SNOMED),
    ],
)
def test_each_twitch_code_opens_the_gate(client: TestClient, code: str, system: str) -> None:
    cards = codes(client, condition(code, system), lab(MAGNESIUM_MASS, 1.4, "mg/dL"))
    assert "hypomagnesemia" in cards


def test_refuted_or_resolved_twitch_does_not_open_the_gate(client: TestClient) -> None:
    low_mg = lab(MAGNESIUM_MASS, 1.4, "mg/dL")
    assert call(client, condition("R25.3", verification="refuted"), low_mg) == {"cards": []}
    assert call(client, condition("R25.3", clinical="resolved"), low_mg) == {"cards": []}
    assert call(client, condition("R25.3", verification="entered-in-error"), low_mg) == {
        "cards": []
    }


def test_twitch_recorded_as_final_observation_within_lookback(client: TestClient) -> None:
    observation = {
        "resourceType": "Observation",
        "id": "tw",
        "status": "final",
        "code": {"coding": [{"system": SNOMED, "code": "82470000"}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": days_ago(3),
    }
    assert "hypomagnesemia" in codes(client, observation, lab(MAGNESIUM_MASS, 1.4, "mg/dL"))
    old = {**observation, "effectiveDateTime": days_ago(800)}
    assert call(client, old, lab(MAGNESIUM_MASS, 1.4, "mg/dL")) == {"cards": []}


# --- laboratory findings --------------------------------------------------------------------


def test_low_magnesium_warning_states_value_unit_date_and_source(client: TestClient) -> None:
    when = days_ago(5)
    card = codes(client, twitch(), lab(MAGNESIUM_MASS, 1.4, "mg/dL", when=when))["hypomagnesemia"]
    assert card["indicator"] == "warning"
    assert "1.4 mg/dL" in card["summary"] and when in card["summary"]
    assert "1.4 mg/dL" in card["detail"] and when in card["detail"]
    assert "LOINC 19123-9" in card["detail"]


def test_magnesium_just_inside_range_gives_no_card(client: TestClient) -> None:
    assert "hypomagnesemia" not in codes(client, twitch(), lab(MAGNESIUM_MASS, 1.7, "mg/dL"))


def test_critical_magnesium_is_critical(client: TestClient) -> None:
    card = codes(client, twitch(), lab(MAGNESIUM_MASS, 1.0, "mg/dL"))["hypomagnesemia"]
    assert card["indicator"] == "critical"


def test_magnesium_in_mmol_per_litre_is_converted_not_assumed(client: TestClient) -> None:
    # 0.65 mmol/L = 1.58 mg/dL: low. Read as mg/dL it would be "critical"; as is, it is low.
    card = codes(client, twitch(), lab(MAGNESIUM_MOLES, 0.65, "mmol/L"))["hypomagnesemia"]
    assert card["indicator"] == "warning"
    assert "0.65 mmol/L (= 1.6 mg/dL)" in card["detail"]
    # 0.85 mmol/L = 2.07 mg/dL: normal, although 0.85 < 1.7 if the unit were ignored.
    assert "hypomagnesemia" not in codes(client, twitch(), lab(MAGNESIUM_MOLES, 0.85, "mmol/L"))


def test_result_without_a_unit_is_not_judged(client: TestClient) -> None:
    assert "hypomagnesemia" not in codes(client, twitch(), lab(MAGNESIUM_MASS, 1.2, None))


def test_newer_normal_result_wins_over_older_low_one(client: TestClient) -> None:
    older_low = lab(MAGNESIUM_MASS, 1.2, "mg/dL", when=days_ago(60))
    newer_normal = lab(MAGNESIUM_MASS, 2.0, "mg/dL", when=days_ago(2))
    assert "hypomagnesemia" not in codes(client, twitch(), newer_normal, older_low)
    newer_low = lab(MAGNESIUM_MASS, 1.3, "mg/dL", when=days_ago(1))
    assert "hypomagnesemia" in codes(client, twitch(), newer_normal, older_low, newer_low)


def test_result_older_than_lookback_is_not_presented(client: TestClient) -> None:
    cards = codes(client, twitch(), lab(MAGNESIUM_MASS, 1.2, "mg/dL", when=days_ago(400)))
    assert "hypomagnesemia" not in cards


def test_lookback_is_a_setting(make_client: Any) -> None:
    client = make_client(lookback_days=30)
    assert "hypomagnesemia" not in codes(
        client, twitch(), lab(MAGNESIUM_MASS, 1.2, "mg/dL", when=days_ago(45))
    )


def test_preliminary_or_entered_in_error_results_do_not_count(client: TestClient) -> None:
    for status in ("preliminary", "entered-in-error", "cancelled"):
        cards = codes(client, twitch(), lab(MAGNESIUM_MASS, 1.2, "mg/dL", status=status))
        assert "hypomagnesemia" not in cards, status


def test_reference_range_of_the_result_defines_low(client: TestClient) -> None:
    # 1.75 mg/dL is normal by the default (< 1.7) but low by this lab's own range 1.8-2.4.
    cards = codes(client, twitch(), lab(MAGNESIUM_MASS, 1.75, "mg/dL", low=1.8, high=2.4))
    assert "lower limit of 1.8 mg/dL" in cards["hypomagnesemia"]["detail"]
    # A range in a convertible other unit (0.66 mmol/L = 1.6 mg/dL) is converted too.
    cards = codes(
        client, twitch(), lab(MAGNESIUM_MASS, 1.65, "mg/dL", low=0.66, range_unit="mmol/L")
    )
    assert "hypomagnesemia" not in cards


def test_low_calcium_and_critical_calcium(client: TestClient) -> None:
    assert (
        codes(client, twitch(), lab(CALCIUM, 7.7, "mg/dL"))["hypocalcemia"]["indicator"]
        == "warning"
    )
    assert (
        codes(client, twitch(), lab(CALCIUM, 6.4, "mg/dL"))["hypocalcemia"]["indicator"]
        == "critical"
    )
    # 2.0 mmol/L = 8.0 mg/dL: low
    assert "hypocalcemia" in codes(client, twitch(), lab("2000-8", 2.0, "mmol/L"))
    assert "hypocalcemia" not in codes(client, twitch(), lab(CALCIUM, 8.5, "mg/dL"))


def test_calcium_is_corrected_for_albumin_of_the_same_period(client: TestClient) -> None:
    # Total Ca 8.2 with albumin 3.0 g/dL -> corrected 9.0: not low.
    cards = codes(
        client,
        twitch(),
        lab(CALCIUM, 8.2, "mg/dL", when=days_ago(3)),
        lab(ALBUMIN, 3.0, "g/dL", when=days_ago(3)),
    )
    assert "hypocalcemia" not in cards
    # The same albumin measured months apart does not correct it.
    cards = codes(
        client,
        twitch(),
        lab(CALCIUM, 8.2, "mg/dL", when=days_ago(3)),
        lab(ALBUMIN, 3.0, "g/dL", when=days_ago(90)),
    )
    assert "hypocalcemia" in cards
    # Albumin in g/L is converted (30 g/L = 3.0 g/dL).
    cards = codes(
        client,
        twitch(),
        lab(CALCIUM, 8.2, "mg/dL", when=days_ago(3)),
        lab(ALBUMIN, 30, "g/L", when=days_ago(3)),
    )
    assert "hypocalcemia" not in cards


def test_low_ionized_calcium(client: TestClient) -> None:
    card = codes(client, twitch(), lab(IONIZED_CALCIUM, 0.75, "mmol/L"))["hypocalcemia"]
    assert card["indicator"] == "critical"


def test_low_potassium(client: TestClient) -> None:
    assert (
        codes(client, twitch(), lab(POTASSIUM, 3.1, "mmol/L"))["hypokalemia"]["indicator"]
        == "warning"
    )
    assert (
        codes(client, twitch(), lab(POTASSIUM, 2.4, "mEq/L"))["hypokalemia"]["indicator"]
        == "critical"
    )
    assert "hypokalemia" not in codes(client, twitch(), lab(POTASSIUM, 3.5, "mmol/L"))


def test_vitamin_d_deficiency_at_or_below_cut_off_in_either_unit(client: TestClient) -> None:
    assert "vitamin-d-deficiency" in codes(client, twitch(), lab(VITAMIN_D, 20, "ng/mL"))
    assert "vitamin-d-deficiency" not in codes(client, twitch(), lab(VITAMIN_D, 21, "ng/mL"))
    # 45 nmol/L = 18 ng/mL: deficient; 75 nmol/L = 30 ng/mL: not.
    assert "vitamin-d-deficiency" in codes(client, twitch(), lab(VITAMIN_D, 45, "nmol/L"))
    assert "vitamin-d-deficiency" not in codes(client, twitch(), lab(VITAMIN_D, 75, "nmol/L"))


# --- medications ------------------------------------------------------------------------------


def test_corticosteroid_by_clinical_drug_code(client: TestClient) -> None:
    for code in ("312617", "312615"):
        card = codes(client, twitch(), medication(code, None))["corticosteroid"]
        assert card["indicator"] == "info" and "active" in card["detail"]


def test_corticosteroid_by_ingredient_code_and_by_name_fallback(client: TestClient) -> None:
    assert "corticosteroid" in codes(client, twitch(), medication("8640", "prednisone"))
    assert "corticosteroid" in codes(
        client, twitch(), medication(text="Methylprednisolone 4 mg tablets")
    )
    assert "corticosteroid" in codes(
        client, twitch(), medication("999999", "dexamethasone 4 MG Oral Tablet")
    )


def test_stopped_or_completed_medication_gives_no_card(client: TestClient) -> None:
    for status in ("stopped", "completed", "cancelled", "entered-in-error", "draft"):
        cards = codes(
            client, twitch(), medication("312617", "predniSONE 5 MG Oral Tablet", status=status)
        )
        assert "corticosteroid" not in cards, status


def test_medication_statement_active_or_intended(client: TestClient) -> None:
    for status in ("active", "intended"):
        cards = codes(
            client, twitch(), medication("1534809", None, status=status, kind="MedicationStatement")
        )
        assert "estrogen" in cards, status
    cards = codes(
        client,
        twitch(),
        medication("1534809", None, status="completed", kind="MedicationStatement"),
    )
    assert "estrogen" not in cards


def test_estrogen_by_name(client: TestClient) -> None:
    card = codes(client, twitch(), medication(text="Estradiol 1 mg tablet"))["estrogen"]
    assert "Estradiol 1 mg tablet" in card["summary"]


def test_corticosteroid_becomes_warning_when_potassium_is_low(client: TestClient) -> None:
    cards = codes(
        client,
        twitch(),
        medication("312617", "predniSONE 5 MG Oral Tablet"),
        lab(POTASSIUM, 3.2, "mmol/L"),
    )
    assert cards["corticosteroid"]["indicator"] == "warning"
    assert "3.2 mmol/L" in cards["corticosteroid"]["detail"]


# --- the motor neurone disease red flag -------------------------------------------------------


def test_twitch_with_weakness_is_a_warning_red_flag_with_referral(client: TestClient) -> None:
    card = codes(client, twitch(), condition("26544005", SNOMED))["red-flag-motor-neuron-disease"]
    assert card["indicator"] == "warning"
    assert "Muscle weakness" in card["detail"]
    assert card["summary"].startswith("Twitching with muscle weakness")
    action = card["suggestions"][0]["actions"][0]
    assert action["resource"]["subject"] == {"reference": "Patient/p1"}
    assert action["resource"]["code"]["coding"][0]["code"] == "3457005"
    assert action["resource"]["priority"] == "routine"


@pytest.mark.parametrize(
    ("code", "system"),
    [
        ("40739000", SNOMED),
        ("R13.12", ICD10),
        ("R47.1", ICD10),
        ("267036007", SNOMED),
        ("249878001", SNOMED),
    ],
)
def test_bulbar_or_respiratory_sign_makes_it_critical(
    client: TestClient, code: str, system: str
) -> None:
    card = codes(client, twitch(), condition("M62.81"), condition(code, system))[
        "red-flag-motor-neuron-disease"
    ]
    assert card["indicator"] == "critical"
    assert card["suggestions"][0]["actions"][0]["resource"]["priority"] == "urgent"


def test_wasting_coded_by_icd_block_and_coded_als(client: TestClient) -> None:
    assert "red-flag-motor-neuron-disease" in codes(client, twitch(), condition("M62.559"))
    assert "red-flag-motor-neuron-disease" in codes(client, twitch(), condition("G12.21"))


def test_no_red_flag_without_a_red_flag_sign(client: TestClient) -> None:
    cards = codes(client, twitch(), condition("J45.909"))
    assert not any(code.startswith("red-flag") for code in cards)
    assert "lifestyle-review" in cards


def test_red_flag_suppresses_lifestyle_review(client: TestClient) -> None:
    cards = codes(client, twitch(), condition("26544005", SNOMED))
    assert "lifestyle-review" not in cards


# --- cards as a whole -------------------------------------------------------------------------


def test_cards_ordered_critical_warning_info(client: TestClient) -> None:
    body = call(
        client,
        twitch(),
        condition("40739000", SNOMED),
        lab(POTASSIUM, 3.2, "mmol/L"),
        medication("312617", "predniSONE 5 MG Oral Tablet"),
        medication(text="caffeine 200 mg tablet"),
    )
    order = {"critical": 0, "warning": 1, "info": 2}
    indicators = [card["indicator"] for card in body["cards"]]
    assert indicators == sorted(indicators, key=order.__getitem__)
    assert indicators[0] == "critical" and "info" in indicators


def test_complete_normal_workup_gives_only_lifestyle_review(client: TestClient) -> None:
    assert list(codes(client, twitch(), *NORMAL_WORKUP)) == ["lifestyle-review"]


def test_repeated_call_gives_same_card_uuids(client: TestClient) -> None:
    request = hook_request(twitch(), lab(MAGNESIUM_MASS, 1.4, "mg/dL"))
    first = client.post(f"/cds-services/{SERVICE_PV}", json=request).json()
    second = client.post(f"/cds-services/{SERVICE_PV}", json=request).json()
    assert [c["uuid"] for c in first["cards"]] == [c["uuid"] for c in second["cards"]]


def test_invalid_resource_is_skipped_and_the_others_still_give_cards(client: TestClient) -> None:
    broken_lab = lab(CALCIUM, 6.0, "mg/dL")
    broken_lab["effectiveDateTime"] = days_ago(1)
    broken_lab["valueQuantity"]["value"] = 6.0
    broken_lab["subject"] = "Patient/p1"  # must be a Reference object: invalid
    broken_condition = condition("26544005", SNOMED)
    broken_condition["onsetDateTime"] = "yesterday"  # not a FHIR dateTime: invalid
    cards = codes(
        client,
        twitch(),
        broken_lab,
        broken_condition,
        lab(MAGNESIUM_MASS, 1.4, "mg/dL"),
        medication("312617", "predniSONE"),
    )
    assert "hypomagnesemia" in cards and "corticosteroid" in cards
    assert "hypocalcemia" not in cards and "red-flag-motor-neuron-disease" not in cards


def test_resources_of_another_patient_are_ignored(client: TestClient) -> None:
    other = lab(MAGNESIUM_MASS, 1.2, "mg/dL", patient_id="someone-else")
    assert "hypomagnesemia" not in codes(client, twitch(), other)


def test_resources_under_other_keys_are_pooled(client: TestClient) -> None:
    request = hook_request(twitch())
    request["prefetch"]["labs"] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": lab(MAGNESIUM_MASS, 1.4, "mg/dL")}],
    }
    response = client.post(f"/cds-services/{SERVICE_PV}", json=request)
    assert "hypomagnesemia" in cards_by_code(response.json())


def test_result_without_unit_is_named_as_unusable_in_the_workup(client: TestClient) -> None:
    card = codes(client, twitch(), lab(MAGNESIUM_MASS, 1.2, None))["workup-incomplete"]
    assert "**Magnesium**: no usable result" in card["detail"]
    assert "1.2, " in card["detail"]
    assert "unit not convertible (no unit)" in card["detail"].replace("\\", "")
