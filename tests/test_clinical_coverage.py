"""Every finding of the contract, positive and negative, through HTTP (patient-view).

tests/test_patient_view.py covers the gate, Mg/Ca/K/vitamin D, units, lookback, reference
ranges, albumin correction, corticosteroid/estrogen and the MND red flag. This file covers the
rest of the contract table and its indicator policy: each finding with a case that must give
the card and the near misses that must not (values just inside the range, stopped medicines,
refuted or resolved conditions, entered-in-error observations, family versus own history).
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import SERVICE_PV
from tests.support.app import module_client
from tests.support.cards import RED_FLAGS, cards_by_code, lab_orders
from tests.support.fhir import (
    ICD10,
    LOINC,
    PATIENT,
    SNOMED,
    bundle,
    coded_observation,
    condition,
    days_ago,
    family_history,
    hook_request,
    lab,
    medication,
    twitch,
)

CALCIUM, IONIZED_CALCIUM, MAGNESIUM, POTASSIUM = "17861-6", "1994-3", "19123-9", "2823-3"
VITAMIN_D, SODIUM, SODIUM_BLOOD, B12 = "62292-8", "2951-2", "2947-0", "2132-9"
CK, TSH, FREE_T4, HBA1C = "2157-6", "3016-3", "3024-7", "4548-4"
SMOKING, AUDIT_C, SLEEP = "72166-2", "75626-2", "93832-4"
WORKUP_LOINC = {CALCIUM, MAGNESIUM, POTASSIUM, VITAMIN_D}


client = module_client()


def normal_workup() -> tuple[dict[str, Any], ...]:
    """Normal Ca, Mg, K and vitamin D: no lab card and no work-up card."""
    return (
        lab(CALCIUM, 9.4, "mg/dL"),
        lab(MAGNESIUM, 2.0, "mg/dL"),
        lab(POTASSIUM, 4.2, "mmol/L"),
        lab(VITAMIN_D, 35, "ng/mL"),
    )


def call(
    client: TestClient,
    *resources: dict[str, Any],
    extra: dict[str, Any] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    request = hook_request(*resources, **kwargs)
    request["prefetch"].update(extra or {})
    response = client.post(f"/cds-services/{SERVICE_PV}", json=request)
    assert response.status_code == 200, response.text
    return response.json()


def codes(client: TestClient, *resources: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    return cards_by_code(call(client, *resources, **kwargs))


def referrals(card: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        action["resource"]
        for suggestion in card.get("suggestions", [])
        for action in suggestion["actions"]
        if action["resource"]["code"]["coding"][0]["code"] == "3457005"
    ]


def neurology_referral_request(status: str = "active") -> dict[str, Any]:
    """A neurology referral already on record (performerType SNOMED 394591006 Neurology)."""
    return {
        "resourceType": "ServiceRequest",
        "id": f"neuro-{status}",
        "status": status,
        "intent": "order",
        "subject": {"reference": f"Patient/{PATIENT}"},
        "code": {"coding": [{"system": SNOMED, "code": "3457005", "display": "Patient referral"}]},
        "performerType": {
            "coding": [{"system": SNOMED, "code": "394591006", "display": "Neurology"}]
        },
        "authoredOn": days_ago(90),
    }


def with_status(resource: dict[str, Any], status: str) -> dict[str, Any]:
    return {**resource, "status": status}


# --- hyponatremia ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "value", "unit", "indicator"),
    [
        (SODIUM, 134, "mmol/L", "warning"),
        (SODIUM, 121, "mmol/L", "warning"),
        (SODIUM, 120, "mmol/L", "critical"),  # contract: Na <= 120 is critical
        (SODIUM, 116, "mEq/L", "critical"),
        (SODIUM_BLOOD, 130, "mmol/L", "warning"),
    ],
)
def test_hyponatremia_warning_and_critical_at_120(
    client: TestClient, code: str, value: float, unit: str, indicator: str
) -> None:
    card = codes(client, twitch(), lab(code, value, unit))["hyponatremia"]
    assert card["indicator"] == indicator
    assert f"{value} {unit}" in card["summary"]  # as the laboratory reported it
    assert f"LOINC {code}" in card["detail"]


def test_sodium_just_inside_range_or_not_final_gives_no_card(client: TestClient) -> None:
    assert "hyponatremia" not in codes(client, twitch(), lab(SODIUM, 135, "mmol/L"))
    assert "hyponatremia" not in codes(
        client, twitch(), lab(SODIUM, 118, "mmol/L", status="entered-in-error")
    )
    # A preliminary result counts only when critical (issue 8: critical values are phoned
    # before finalisation); a merely low one waits for the final result.
    assert "hyponatremia" not in codes(
        client, twitch(), lab(SODIUM, 130, "mmol/L", status="preliminary")
    )


def test_critical_sodium_summary_says_critical(client: TestClient) -> None:
    card = codes(client, twitch(), lab(SODIUM, 119, "mmol/L"))["hyponatremia"]
    assert card["summary"].startswith("Critically low sodium")


# --- vitamin B12 -------------------------------------------------------------------------------


def test_low_b12_in_pg_per_ml_and_just_inside_range(client: TestClient) -> None:
    card = codes(client, twitch(), lab(B12, 150, "pg/mL"))["vitamin-b12-deficiency"]
    assert card["indicator"] == "warning" and "150 pg/mL" in card["summary"]
    assert "vitamin-b12-deficiency" not in codes(client, twitch(), lab(B12, 180, "pg/mL"))


def test_b12_in_pmol_per_litre_is_converted(client: TestClient) -> None:
    # 130 pmol/L x 1.355 = 176 pg/mL: low (< 180). Read as pg/mL, 140 would be low too, but
    # 140 pmol/L = 190 pg/mL is normal: the unit decides.
    card = codes(client, twitch(), lab(B12, 130, "pmol/L"))["vitamin-b12-deficiency"]
    assert "130 pmol/L (= 176 pg/mL)" in card["detail"]
    assert "vitamin-b12-deficiency" not in codes(client, twitch(), lab(B12, 140, "pmol/L"))


def test_b12_entered_in_error_gives_no_card(client: TestClient) -> None:
    cards = codes(client, twitch(), lab(B12, 100, "pg/mL", status="entered-in-error"))
    assert "vitamin-b12-deficiency" not in cards


# --- fluid loss --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "system"),
    [
        ("E86.0", ICD10),
        ("R19.7", ICD10),
        ("R11.10", ICD10),
        ("R11.2", ICD10),
        ("34095006", SNOMED),
        ("62315008", SNOMED),
        ("422400008", SNOMED),
    ],
)
def test_fluid_loss_conditions(client: TestClient, code: str, system: str) -> None:
    card = codes(client, twitch(), condition(code, system))["fluid-loss"]
    assert card["indicator"] == "info"
    assert code in card["detail"]


def test_fluid_loss_resolved_refuted_or_in_error_gives_no_card(client: TestClient) -> None:
    for kwargs in (
        {"clinical": "resolved"},
        {"verification": "refuted"},
        {"verification": "entered-in-error"},
    ):
        assert "fluid-loss" not in codes(client, twitch(), condition("E86.0", **kwargs)), kwargs


# --- electrolyte-depleting drugs ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "display"),
    [
        ("4603", "furosemide"),
        ("7646", "omeprazole"),
        (None, "Hydrochlorothiazide 25 MG"),  # Synthea's display, no ingredient code
        ("40790", "pantoprazole"),
        (None, "Alendronate 70 MG Oral Tablet"),
        ("2555", "cisplatin"),
    ],
)
def test_electrolyte_depleting_drug_alone_is_info(
    client: TestClient, code: str | None, display: str
) -> None:
    card = codes(client, twitch(), medication(code, display), *normal_workup())[
        "electrolyte-depleting-drug"
    ]
    assert card["indicator"] == "info"
    # The drug as prescribers write it; its status in the detail, never in the summary.
    assert display.lower() in card["summary"].lower() and "active" in card["detail"]
    assert "(active)" not in card["summary"]


def test_omeprazole_with_low_magnesium_is_a_warning_naming_the_value(client: TestClient) -> None:
    cards = codes(
        client,
        twitch(),
        medication("7646", "omeprazole 20 MG Delayed Release Capsule"),
        lab(MAGNESIUM, 1.4, "mg/dL"),
    )
    card = cards["electrolyte-depleting-drug"]
    assert card["indicator"] == "warning"
    assert "Omeprazole" in card["summary"] and "magnesium 1.4 mg/dL" in card["summary"]
    assert "1.4 mg/dL" in card["detail"]


def test_furosemide_with_low_potassium_is_a_warning_naming_the_value(client: TestClient) -> None:
    card = codes(
        client,
        twitch(),
        medication("4603", "furosemide 40 MG Oral Tablet"),
        lab(POTASSIUM, 3.1, "mmol/L"),
    )["electrolyte-depleting-drug"]
    assert card["indicator"] == "warning"
    assert "Furosemide" in card["summary"] and "potassium 3.1 mmol/L" in card["summary"]


def test_bisphosphonate_with_low_calcium_is_a_warning(client: TestClient) -> None:
    card = codes(
        client,
        twitch(),
        medication(text="Alendronate 70 MG Oral Tablet"),
        lab(CALCIUM, 8.0, "mg/dL"),
    )["electrolyte-depleting-drug"]
    assert card["indicator"] == "warning" and "total calcium 8 mg/dL" in card["summary"]


@pytest.mark.parametrize(
    ("drug", "low_lab"),
    [
        (("7646", "omeprazole"), (POTASSIUM, 3.1, "mmol/L")),  # a PPI lowers Mg, not K
        (("4603", "furosemide"), (CALCIUM, 8.0, "mg/dL")),  # listed as lowering K and Mg
        (("7646", "omeprazole"), (SODIUM, 130, "mmol/L")),
    ],
)
def test_drug_stays_info_when_another_electrolyte_is_low(
    client: TestClient, drug: tuple, low_lab: tuple
) -> None:
    cards = codes(client, twitch(), medication(*drug), lab(*low_lab))
    assert cards["electrolyte-depleting-drug"]["indicator"] == "info"


def test_drug_card_is_warning_not_critical_when_its_electrolyte_is_critical(
    client: TestClient,
) -> None:
    cards = codes(client, twitch(), medication("4603", "furosemide"), lab(POTASSIUM, 2.3, "mmol/L"))
    assert cards["hypokalemia"]["indicator"] == "critical"
    assert cards["electrolyte-depleting-drug"]["indicator"] == "warning"


def test_stopped_depleting_drug_gives_no_drug_card_but_the_lab_card_stays(
    client: TestClient,
) -> None:
    for status in ("stopped", "completed", "entered-in-error"):
        cards = codes(
            client,
            twitch(),
            medication("4603", "furosemide", status=status),
            lab(POTASSIUM, 3.1, "mmol/L"),
        )
        assert "electrolyte-depleting-drug" not in cards, status
        assert "hypokalemia" in cards


def test_two_depleting_drugs_give_one_card_citing_both(client: TestClient) -> None:
    card = codes(
        client,
        twitch(),
        medication("4603", "furosemide 40 MG"),
        medication(text="Hydrochlorothiazide 25 MG"),
    )["electrolyte-depleting-drug"]
    assert "Furosemide 40 mg" in card["detail"] and "Hydrochlorothiazide 25 mg" in card["detail"]


# --- cholinergic drugs -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "drug",
    [
        {"code": "9000", "display": "pyridostigmine"},
        {"code": "135447", "display": "donepezil"},
        {"text": "Neostigmine methylsulfate 1 MG/ML Injectable Solution"},
        {"code": "999999", "display": "Pyridostigmine Bromide 60 MG Oral Tablet"},
    ],
)
def test_cholinesterase_inhibitor_gives_cholinergic_card(
    client: TestClient, drug: dict[str, str]
) -> None:
    card = codes(client, twitch(), medication(**drug))["cholinergic-drug"]
    assert card["indicator"] == "info"
    assert "cholinesterase inhibitor" in card["summary"]


def test_stopped_cholinesterase_inhibitor_gives_no_card(client: TestClient) -> None:
    cards = codes(client, twitch(), medication("9000", "pyridostigmine", status="stopped"))
    assert "cholinergic-drug" not in cards


# --- stimulants --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "drug",
    [
        # No SCD in the product table: the ingredient name in the display/text is the fallback.
        {
            "code": "861223",
            "display": "Adderall 20 MG Oral Tablet",
            "text": "Adderall 20 mg (amphetamine / dextroamphetamine)",
        },
        {"display": "Adderall XR 20 mg amphetamine capsule"},
        {"code": "6901", "display": "methylphenidate"},
        {"code": "30125", "display": "modafinil"},
        {"text": "Caffeine 200 MG Oral Tablet"},
        {"text": "Pseudoephedrine Hydrochloride 60 MG Oral Tablet"},
        {"text": "Phentermine 37.5 MG Oral Tablet"},
    ],
)
def test_stimulant_by_code_or_name(client: TestClient, drug: dict[str, str]) -> None:
    card = codes(client, twitch(), medication(**drug))["stimulant"]
    assert card["indicator"] == "info" and ", a stimulant," in card["summary"]


def test_stimulant_as_medication_statement_and_stopped(client: TestClient) -> None:
    assert "stimulant" in codes(
        client, twitch(), medication(text="Caffeine 200 MG Oral Tablet", kind="MedicationStatement")
    )
    assert "stimulant" not in codes(
        client, twitch(), medication("6901", "methylphenidate", status="stopped")
    )


def test_stimulant_name_matches_whole_words_only(client: TestClient) -> None:
    # "caffeine" must match as a whole word, not inside another word.
    assert "stimulant" not in codes(client, twitch(), medication(text="Decaffeinated tea"))


# --- nicotine ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer", ["449868002", "428041000124106", "428071000124103", "428061000124105"]
)
def test_current_smoking_status_gives_nicotine_card(client: TestClient, answer: str) -> None:
    when = days_ago(20)
    card = codes(client, twitch(), coded_observation(SMOKING, answer, when=when))["nicotine"]
    assert card["indicator"] == "info"
    assert when in card["detail"] and "LOINC 72166-2" in card["detail"]


@pytest.mark.parametrize("answer", ["8517006", "266919005", "77176002", "266927001"])
def test_former_never_or_unknown_smoker_gives_no_nicotine_card(
    client: TestClient, answer: str
) -> None:
    assert "nicotine" not in codes(client, twitch(), coded_observation(SMOKING, answer))


def test_smoking_status_outside_lookback_or_in_error_gives_no_card(client: TestClient) -> None:
    old = coded_observation(SMOKING, "449868002", when=days_ago(500))
    assert "nicotine" not in codes(client, twitch(), old)
    wrong = with_status(coded_observation(SMOKING, "449868002"), "entered-in-error")
    assert "nicotine" not in codes(client, twitch(), wrong)


def test_newer_former_smoker_status_wins_over_older_current(client: TestClient) -> None:
    older = coded_observation(SMOKING, "449868002", when=days_ago(200))
    newer = coded_observation(SMOKING, "8517006", when=days_ago(5))
    assert "nicotine" not in codes(client, twitch(), older, newer)


@pytest.mark.parametrize(
    "drug",
    [
        {"code": "7407", "display": "nicotine"},
        {"text": "Nicotine 21 MG/Day Transdermal Patch", "kind": "MedicationStatement"},
        {"display": "Nicotine Polacrilex 2 MG Chewing Gum"},
    ],
)
def test_nicotine_product_gives_nicotine_card(client: TestClient, drug: dict[str, str]) -> None:
    card = codes(client, twitch(), medication(**drug))["nicotine"]
    assert card["indicator"] == "info" and "active" in card["detail"]


def test_stopped_nicotine_product_gives_no_card(client: TestClient) -> None:
    assert "nicotine" not in codes(
        client,
        twitch(),
        medication(
            text="Nicotine 21 MG/Day Transdermal Patch",
            kind="MedicationStatement",
            status="completed",
        ),
    )


def test_tobacco_use_condition_and_resolved_one(client: TestClient) -> None:
    assert "nicotine" in codes(client, twitch(), condition("F17.210"))
    assert "nicotine" not in codes(client, twitch(), condition("F17.210", clinical="resolved"))


# --- alcohol -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gender", "score", "positive"),
    [("male", 4, True), ("male", 3, False), ("female", 3, True), ("female", 2, False)],
)
def test_audit_c_sex_specific_cut_offs(
    client: TestClient, gender: str, score: int, positive: bool
) -> None:
    cards = codes(
        client, twitch(), coded_observation(AUDIT_C, value=score, unit="{score}"), gender=gender
    )
    assert ("alcohol" in cards) is positive


def test_audit_c_as_value_integer(client: TestClient) -> None:
    observation = coded_observation(AUDIT_C)
    observation["valueInteger"] = 5
    assert "alcohol" in codes(client, twitch(), observation, gender="male")


def test_audit_c_in_error_or_outside_lookback_gives_no_card(client: TestClient) -> None:
    wrong = with_status(coded_observation(AUDIT_C, value=8), "entered-in-error")
    old = coded_observation(AUDIT_C, value=8, when=days_ago(400))
    assert "alcohol" not in codes(client, twitch(), wrong, old, gender="male")


def test_newer_negative_audit_c_wins(client: TestClient) -> None:
    older = coded_observation(AUDIT_C, value=7, when=days_ago(200))
    newer = coded_observation(AUDIT_C, value=1, when=days_ago(5))
    assert "alcohol" not in codes(client, twitch(), older, newer, gender="male")


def test_audit_c_card_states_the_score(client: TestClient) -> None:
    card = codes(
        client, twitch(), coded_observation(AUDIT_C, value=6, unit="{score}"), gender="male"
    )["alcohol"]
    (line,) = [line for line in card["detail"].splitlines() if "LOINC 75626-2" in line]
    assert "AUDIT-C" in line and re.search(r"\b6\b", line), line


@pytest.mark.parametrize(
    ("code", "system"), [("F10.10", ICD10), ("15167005", SNOMED), ("7200002", SNOMED)]
)
def test_alcohol_use_condition(client: TestClient, code: str, system: str) -> None:
    card = codes(client, twitch(), condition(code, system))["alcohol"]
    assert card["indicator"] == "info" and code in card["detail"]


def test_refuted_or_resolved_alcohol_condition_gives_no_card(client: TestClient) -> None:
    assert "alcohol" not in codes(
        client,
        twitch(),
        condition("F10.10", verification="refuted"),
        condition("7200002", SNOMED, clinical="resolved"),
    )


def test_alcohol_with_magnesium_missing_offers_one_magnesium_order(client: TestClient) -> None:
    cards = codes(
        client,
        twitch(),
        condition("F10.10"),
        lab(CALCIUM, 9.4, "mg/dL"),
        lab(POTASSIUM, 4.2, "mmol/L"),
        lab(VITAMIN_D, 35, "ng/mL"),
    )
    # Offered on the alcohol card and on the work-up card, as one suggestion (same uuid), so
    # that dismissing either card leaves the order available (issue 9).
    offers = {
        suggestion["uuid"]
        for card in cards.values()
        for suggestion in card.get("suggestions", [])
        if MAGNESIUM in lab_orders({"suggestions": [suggestion]})
    }
    assert MAGNESIUM in lab_orders(cards["alcohol"])
    assert MAGNESIUM in lab_orders(cards["workup-incomplete"])
    assert len(offers) == 1


def test_alcohol_with_magnesium_present_offers_no_magnesium_order(client: TestClient) -> None:
    cards = codes(client, twitch(), condition("F10.10"), *normal_workup())
    assert "alcohol" in cards
    assert not any(MAGNESIUM in lab_orders(card) for card in cards.values())


# --- sleep -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "system"),
    [("G47.00", ICD10), ("Z72.820", ICD10), ("F51.12", ICD10), ("193462001", SNOMED)],
)
def test_sleep_deprivation_condition(client: TestClient, code: str, system: str) -> None:
    assert (
        codes(client, twitch(), condition(code, system))["sleep-deprivation"]["indicator"] == "info"
    )


@pytest.mark.parametrize(
    ("value", "unit", "positive"),
    [
        (6, "h", True),
        (6.9, "h", True),
        (7, "h", False),
        (7.5, "h", False),
        (360, "min", True),
        (450, "min", False),
    ],
)
def test_sleep_duration_under_seven_hours(
    client: TestClient, value: float, unit: str, positive: bool
) -> None:
    cards = codes(client, twitch(), coded_observation(SLEEP, value=value, unit=unit))
    assert ("sleep-deprivation" in cards) is positive


def test_sleep_duration_without_unit_or_resolved_insomnia_gives_no_card(client: TestClient) -> None:
    cards = codes(
        client,
        twitch(),
        coded_observation(SLEEP, value=5),
        condition("G47.00", clinical="resolved"),
    )
    assert "sleep-deprivation" not in cards


def test_newer_normal_sleep_duration_wins(client: TestClient) -> None:
    older = coded_observation(SLEEP, value=5, unit="h", when=days_ago(200))
    newer = coded_observation(SLEEP, value=8, unit="h", when=days_ago(5))
    assert "sleep-deprivation" not in codes(client, twitch(), older, newer)


def test_sleep_card_states_the_duration(client: TestClient) -> None:
    card = codes(client, twitch(), coded_observation(SLEEP, value=5.5, unit="h"))[
        "sleep-deprivation"
    ]
    assert "5.5 h" in card["detail"]


# --- anxiety -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "system"),
    [("F41.1", ICD10), ("F41.9", ICD10), ("197480006", SNOMED), ("48694002", SNOMED)],
)
def test_anxiety_condition(client: TestClient, code: str, system: str) -> None:
    card = codes(client, twitch(), condition(code, system))["anxiety-stress"]
    assert card["indicator"] == "info" and code in card["detail"]


def test_resolved_anxiety_or_anxiety_in_the_family_gives_no_card(client: TestClient) -> None:
    cards = codes(
        client, twitch(), condition("F41.1", clinical="resolved"), family_history("F41.1", ICD10)
    )
    assert "anxiety-stress" not in cards


# --- red flag: neuropathy ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "system"),
    [
        ("R20.2", ICD10),
        ("91019004", SNOMED),
        ("102603008", SNOMED),  # paraesthesia/numbness
        ("G62.9", ICD10),
        ("E11.42", ICD10),
        ("368581000119106", SNOMED),
    ],
)  # neuropathy diagnosis
def test_neuropathy_red_flag_with_referral(client: TestClient, code: str, system: str) -> None:
    card = codes(client, twitch(), condition(code, system))["red-flag-neuropathy"]
    assert card["indicator"] == "warning"
    referral = referrals(card)
    assert len(referral) == 1 and referral[0]["subject"] == {"reference": f"Patient/{PATIENT}"}
    assert referral[0]["performerType"]["coding"][0]["code"] == "394591006"


def test_neuropathy_suggests_b12_and_hba1c_only_when_missing(client: TestClient) -> None:
    card = codes(client, twitch(), condition("G62.9"))["red-flag-neuropathy"]
    assert sorted(lab_orders(card)) == sorted([B12, HBA1C])
    card = codes(client, twitch(), condition("G62.9"), lab(HBA1C, 5.4, "%"))["red-flag-neuropathy"]
    assert lab_orders(card) == [B12]
    card = codes(
        client, twitch(), condition("G62.9"), lab(HBA1C, 5.4, "%"), lab(B12, 400, "pg/mL")
    )["red-flag-neuropathy"]
    assert lab_orders(card) == [] and len(referrals(card)) == 1


def test_neuropathy_refuted_or_only_in_the_family_gives_no_card(client: TestClient) -> None:
    cards = codes(
        client, twitch(), condition("G62.9", verification="refuted"), family_history("42658009")
    )
    assert "red-flag-neuropathy" not in cards


# --- red flag: radiculopathy -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "system"),
    [
        ("M54.16", ICD10),
        ("M54.12", ICD10),
        ("M51.16", ICD10),
        ("M50.12", ICD10),
        ("128196005", SNOMED),
    ],
)
def test_radiculopathy_red_flag(client: TestClient, code: str, system: str) -> None:
    card = codes(client, twitch(), condition(code, system))["red-flag-radiculopathy"]
    assert card["indicator"] == "warning" and len(referrals(card)) == 1


def test_resolved_radiculopathy_gives_no_card(client: TestClient) -> None:
    cards = codes(client, twitch(), condition("M54.16", clinical="resolved"))
    assert "red-flag-radiculopathy" not in cards


# --- red flag: myopathy ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "system"),
    [("G72.9", ICD10), ("G72.0", ICD10), ("129565002", SNOMED), ("19303008", SNOMED)],
)
def test_myopathy_diagnosis(client: TestClient, code: str, system: str) -> None:
    card = codes(client, twitch(), condition(code, system))["red-flag-myopathy"]
    assert card["indicator"] == "warning" and len(referrals(card)) == 1


@pytest.mark.parametrize(
    ("gender", "value", "positive"),
    [
        ("female", 200, True),
        ("female", 192, False),
        ("male", 200, False),
        ("male", 308, False),
        ("male", 320, True),
    ],
)
def test_creatine_kinase_above_sex_specific_limit(
    client: TestClient, gender: str, value: float, positive: bool
) -> None:
    cards = codes(client, twitch(), lab(CK, value, "U/L"), gender=gender)
    assert ("red-flag-myopathy" in cards) is positive
    if positive:
        assert f"{value} U/L" in cards["red-flag-myopathy"]["detail"]
        assert "Creatine kinase" in cards["red-flag-myopathy"]["detail"]


def test_creatine_kinase_in_ukat_per_litre_and_in_error(client: TestClient) -> None:
    # 4 ukat/L = 240 U/L: above the female limit of 192.
    assert "red-flag-myopathy" in codes(client, twitch(), lab(CK, 4, "ukat/L"))
    cards = codes(client, twitch(), lab(CK, 2000, "U/L", status="entered-in-error"))
    assert "red-flag-myopathy" not in cards


# --- red flag: hypothyroid myopathy ------------------------------------------------------------
# Overt hypothyroidism (TSH above 10 mIU/L, a low free T4, or a hypothyroidism diagnosis with a
# TSH above range now) plus a muscle sign (weakness or raised CK); never the cramp complaint.
# Updated for issue 9: a diagnosis alone, a cramp, and a mildly raised TSH no longer count.


@pytest.mark.parametrize(
    "muscle",
    [
        condition("M62.81"),  # weakness
        lab(CK, 450, "U/L"),  # raised CK (female limit 192)
    ],
)
@pytest.mark.parametrize(
    "thyroid",
    [
        (lab(TSH, 11.2, "mIU/L"),),  # overt: TSH above 10
        (lab(FREE_T4, 0.6, "ng/dL"),),  # low free T4
        (condition("E03.9"), lab(TSH, 6.1, "mIU/L")),  # diagnosis with TSH above range
        (condition("40930008", SNOMED), lab(TSH, 7.0, "mIU/L")),
    ],
)
def test_hypothyroid_myopathy_needs_overt_hypothyroidism_and_a_muscle_sign(
    client: TestClient, thyroid: tuple[dict[str, Any], ...], muscle: dict[str, Any]
) -> None:
    card = codes(client, twitch(), *thyroid, muscle)["red-flag-hypothyroid-myopathy"]
    assert card["indicator"] == "warning" and len(referrals(card)) == 1


def test_hypothyroid_myopathy_offers_free_t4_and_ck_only_when_missing(client: TestClient) -> None:
    card = codes(client, twitch(), lab(TSH, 11.2, "mIU/L"), condition("M62.81"))[
        "red-flag-hypothyroid-myopathy"
    ]
    assert sorted(lab_orders(card)) == sorted([FREE_T4, CK])
    card = codes(
        client, twitch(), lab(TSH, 11.2, "mIU/L"), lab(FREE_T4, 0.7, "ng/dL"), lab(CK, 450, "U/L")
    )["red-flag-hypothyroid-myopathy"]
    assert lab_orders(card) == []


@pytest.mark.parametrize(
    "record",
    [
        (condition("E03.9"), condition("M62.81")),  # diagnosis, no TSH
        (condition("E03.9"), lab(TSH, 2.1, "mIU/L"), condition("M62.81")),  # treated, normal TSH
        (lab(TSH, 7.5, "mIU/L"), condition("M62.81")),  # isolated subclinical TSH
        (lab(TSH, 11.2, "mIU/L"),),  # overt TSH, no muscle sign
        (lab(TSH, 3.0, "mIU/L"), condition("M62.81")),  # normal TSH with weakness
        (condition("E03.9", clinical="resolved"), lab(TSH, 6.0, "mIU/L"), condition("M62.81")),
        (lab(TSH, 11.2, "mIU/L"), lab(CK, 150, "U/L")),  # CK normal
        (lab(TSH, 11.2, "mIU/L"), condition("55300003", SNOMED)),  # a cramp is no muscle sign
    ],
)
def test_no_hypothyroid_myopathy_without_overt_disease_and_a_muscle_sign(
    client: TestClient, record: tuple[dict[str, Any], ...]
) -> None:
    assert "red-flag-hypothyroid-myopathy" not in codes(client, twitch(), *record)


def test_the_cramp_complaint_never_completes_hypothyroid_myopathy(client: TestClient) -> None:
    # The complaint coded as cramp (R25.2) is the complaint, not the muscle sign (issue 9).
    cards = codes(client, condition("R25.2"), condition("E03.9"), lab(TSH, 14.0, "mIU/L"))
    assert "red-flag-hypothyroid-myopathy" not in cards


# --- red flag: neuromyotonia -------------------------------------------------------------------


def test_neuromyotonia_red_flag(client: TestClient) -> None:
    card = codes(client, twitch(), condition("G71.19"))["red-flag-neuromyotonia"]
    assert card["indicator"] == "warning" and len(referrals(card)) == 1
    assert "G71.19" in card["detail"]


def test_refuted_neuromyotonia_gives_no_card(client: TestClient) -> None:
    cards = codes(client, twitch(), condition("G71.19", verification="refuted"))
    assert "red-flag-neuromyotonia" not in cards


# --- red flag: muscular dystrophy --------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "system"),
    [("G71.01", ICD10), ("G71.11", ICD10), ("73297009", SNOMED), ("93153005", SNOMED)],
)
def test_own_muscular_dystrophy_diagnosis(client: TestClient, code: str, system: str) -> None:
    card = codes(client, twitch(), condition(code, system))["red-flag-muscular-dystrophy"]
    assert card["indicator"] == "warning" and len(referrals(card)) == 1


@pytest.mark.parametrize(("code", "system"), [("73297009", SNOMED), ("G71.01", ICD10)])
def test_muscular_dystrophy_in_the_family(client: TestClient, code: str, system: str) -> None:
    card = codes(client, twitch(), family_history(code, system))["red-flag-muscular-dystrophy"]
    assert card["indicator"] == "warning" and "in the family" in card["detail"]
    assert len(referrals(card)) == 1


def test_entered_in_error_family_history_gives_no_card(client: TestClient) -> None:
    history = with_status(family_history("73297009"), "entered-in-error")
    cards = codes(client, twitch(), history)
    assert "red-flag-muscular-dystrophy" not in cards
    assert "lifestyle-review" in cards


def test_family_history_of_another_disease_gives_no_red_flag(client: TestClient) -> None:
    cards = codes(client, twitch(), family_history("44054006"), family_history("G12.21", ICD10))
    assert not RED_FLAGS & set(cards)


# --- known and under neurology care ------------------------------------------------------------


@pytest.mark.parametrize(
    ("diagnosis", "finding"),
    [
        (condition("G12.21"), "red-flag-motor-neuron-disease"),
        (condition("86044005", SNOMED), "red-flag-motor-neuron-disease"),
        (condition("G62.9"), "red-flag-neuropathy"),
    ],
)
def test_diagnosis_under_neurology_care_says_known_and_offers_contacting_the_team(
    client: TestClient, diagnosis: dict[str, Any], finding: str
) -> None:
    # Issue 9: the suggestion never disappears; it becomes "contact the neurology team",
    # still a neurology ServiceRequest.
    without = codes(client, twitch(), diagnosis)[finding]
    assert len(referrals(without)) == 1
    assert without["suggestions"][0]["label"] == "Refer to neurology"
    card = codes(
        client,
        twitch(),
        diagnosis,
        extra={"neurologyReferrals": bundle(neurology_referral_request())},
    )[finding]
    assert len(referrals(card)) == 1
    assert card["suggestions"][0]["label"] == "Contact the neurology team"
    assert "Known" in card["summary"] and "neurology care" in card["summary"]
    assert "Neurology referral" in card["detail"]


def test_cancelled_or_draft_neurology_referral_is_not_care(client: TestClient) -> None:
    for status in ("revoked", "entered-in-error", "draft"):
        card = codes(
            client,
            twitch(),
            condition("G12.21"),
            extra={"neurologyReferrals": bundle(neurology_referral_request(status))},
        )["red-flag-motor-neuron-disease"]
        assert len(referrals(card)) == 1, status


def test_neurology_encounter_counts_as_care(client: TestClient) -> None:
    encounter = {
        "resourceType": "Encounter",
        "id": "enc-neuro",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "serviceType": {"coding": [{"system": SNOMED, "code": "394591006"}]},
        "subject": {"reference": f"Patient/{PATIENT}"},
        "period": {"start": days_ago(40)},
    }
    card = codes(client, twitch(), condition("G12.21"), extra={"encounters": bundle(encounter)})[
        "red-flag-motor-neuron-disease"
    ]
    assert card["suggestions"][0]["label"] == "Contact the neurology team"


def test_neurology_care_does_not_silence_a_sign_without_diagnosis(client: TestClient) -> None:
    # Care is for a diagnosed red flag; new weakness with no diagnosis still gets a referral.
    card = codes(
        client,
        twitch(),
        condition("M62.81"),
        extra={"neurologyReferrals": bundle(neurology_referral_request())},
    )["red-flag-motor-neuron-disease"]
    assert len(referrals(card)) == 1


# --- work-up incomplete ------------------------------------------------------------------------


def test_workup_incomplete_one_card_one_order_per_missing_test(client: TestClient) -> None:
    card = codes(client, twitch())["workup-incomplete"]
    assert card["indicator"] == "info" and card["selectionBehavior"] == "any"
    assert sorted(lab_orders(card)) == sorted(WORKUP_LOINC)
    assert len(card["suggestions"]) == 4
    for suggestion in card["suggestions"]:
        (action,) = suggestion["actions"]
        order = action["resource"]
        assert order["resourceType"] == "ServiceRequest" and order["status"] == "draft"
        assert order["subject"] == {"reference": f"Patient/{PATIENT}"}
        assert order["code"]["coding"][0]["system"] == LOINC


def test_workup_lists_only_what_is_missing(client: TestClient) -> None:
    card = codes(client, twitch(), lab(CALCIUM, 9.4, "mg/dL"), lab(MAGNESIUM, 2.0, "mg/dL"))[
        "workup-incomplete"
    ]
    assert sorted(lab_orders(card)) == sorted([POTASSIUM, VITAMIN_D])
    assert "potassium" in card["summary"] and "magnesium" not in card["summary"].lower()


def test_workup_complete_gives_no_card(client: TestClient) -> None:
    assert "workup-incomplete" not in codes(client, twitch(), *normal_workup())


def test_ionized_calcium_counts_for_calcium(client: TestClient) -> None:
    cards = codes(
        client,
        twitch(),
        lab(IONIZED_CALCIUM, 1.2, "mmol/L"),
        lab(MAGNESIUM, 2.0, "mg/dL"),
        lab(POTASSIUM, 4.2, "mmol/L"),
        lab(VITAMIN_D, 35, "ng/mL"),
    )
    assert "workup-incomplete" not in cards and "hypocalcemia" not in cards


def test_old_or_in_error_result_counts_as_missing(client: TestClient) -> None:
    _ca, mg, k, vit_d = normal_workup()
    cards = codes(
        client,
        twitch(),
        lab(CALCIUM, 9.4, "mg/dL", when=days_ago(400)),
        mg,
        k,
        with_status(vit_d, "entered-in-error"),
    )
    assert sorted(lab_orders(cards["workup-incomplete"])) == sorted([CALCIUM, VITAMIN_D])


# --- lifestyle review --------------------------------------------------------------------------


def test_lifestyle_review_without_red_flags(client: TestClient) -> None:
    card = codes(client, twitch(), *normal_workup())["lifestyle-review"]
    assert card["indicator"] == "info" and "No red flag" in card["summary"]
    assert "Already on record" not in card["detail"]


@pytest.mark.parametrize(
    "red_flag",
    [
        (condition("M62.81"),),
        (condition("G12.21"),),
        (condition("R20.2"),),
        (condition("M54.16"),),
        (condition("G72.9"),),
        (lab(CK, 900, "U/L"),),
        (lab(TSH, 12.0, "mIU/L"), condition("M62.81")),
        (condition("G71.19"),),
        (family_history("73297009"),),
    ],
)
def test_any_red_flag_suppresses_lifestyle_review(
    client: TestClient, red_flag: tuple[dict[str, Any], ...]
) -> None:
    cards = codes(client, twitch(), *red_flag)
    assert RED_FLAGS & set(cards)
    assert "lifestyle-review" not in cards


def test_lifestyle_review_mentions_what_the_record_shows(client: TestClient) -> None:
    cards = codes(
        client,
        twitch(),
        coded_observation(SMOKING, "449868002"),
        condition("F41.1"),
        medication(text="Caffeine 200 MG Oral Tablet"),
    )
    detail = cards["lifestyle-review"]["detail"]
    assert "Already on record" in detail
    for title in ("Nicotine", "Anxiety", "Stimulant"):
        assert title in detail
    assert "Alcohol" not in detail.split("**Already on record:**")[1].split("\n")[0]


# --- indicator policy --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "value", "unit", "finding", "indicator"),
    [
        (CALCIUM, 6.5, "mg/dL", "hypocalcemia", "critical"),  # total Ca <= 6.5
        (CALCIUM, 6.6, "mg/dL", "hypocalcemia", "warning"),
        (IONIZED_CALCIUM, 0.79, "mmol/L", "hypocalcemia", "critical"),  # iCa < 0.8
        (IONIZED_CALCIUM, 0.8, "mmol/L", "hypocalcemia", "warning"),
        (MAGNESIUM, 1.05, "mg/dL", "hypomagnesemia", "warning"),  # Mg <= 1.0
        (MAGNESIUM, 0.4, "mmol/L", "hypomagnesemia", "critical"),  # 0.4 mmol/L = 0.97 mg/dL
        (POTASSIUM, 2.49, "mmol/L", "hypokalemia", "critical"),  # K < 2.5
        (POTASSIUM, 2.5, "mmol/L", "hypokalemia", "warning"),
        (SODIUM, 120, "mmol/L", "hyponatremia", "critical"),  # Na <= 120
        (SODIUM, 120.5, "mmol/L", "hyponatremia", "warning"),
        (VITAMIN_D, 8, "ng/mL", "vitamin-d-deficiency", "warning"),  # no critical level
        (B12, 60, "pg/mL", "vitamin-b12-deficiency", "warning"),
    ],
)
def test_critical_lab_limits_of_the_contract(
    client: TestClient, code: str, value: float, unit: str, finding: str, indicator: str
) -> None:
    if code == MAGNESIUM and unit == "mmol/L":
        code = "2601-3"
    assert codes(client, twitch(), lab(code, value, unit))[finding]["indicator"] == indicator


@pytest.mark.parametrize(
    ("sign", "system"),
    [("R47.1", ICD10), ("J96.11", ICD10), ("R06.01", ICD10), ("409623005", SNOMED)],
)
def test_red_flag_with_bulbar_or_respiratory_sign_is_critical(
    client: TestClient, sign: str, system: str
) -> None:
    cards = codes(client, twitch(), condition("G62.9"), condition(sign, system))
    assert cards["red-flag-motor-neuron-disease"]["indicator"] == "critical"
    assert cards["red-flag-neuropathy"]["indicator"] == "warning"


def test_tongue_fasciculation_as_the_complaint_is_critical(client: TestClient) -> None:
    card = codes(client, condition("249878001", SNOMED))["red-flag-motor-neuron-disease"]
    assert card["indicator"] == "critical"
    assert referrals(card)[0]["priority"] == "urgent"


def test_resolved_bulbar_sign_does_not_make_it_critical(client: TestClient) -> None:
    cards = codes(
        client, twitch(), condition("M62.81"), condition("40739000", SNOMED, clinical="resolved")
    )
    assert cards["red-flag-motor-neuron-disease"]["indicator"] == "warning"


def test_drug_lifestyle_workup_and_review_cards_are_info(client: TestClient) -> None:
    cards = codes(
        client,
        twitch(),
        medication("4603", "furosemide"),
        medication("9000", "pyridostigmine"),
        medication("6901", "methylphenidate"),
        medication("312617", "predniSONE 5 MG Oral Tablet"),
        medication(text="Estradiol 1 MG Oral Tablet"),
        coded_observation(SMOKING, "449868002"),
        condition("F10.10"),
        condition("G47.00"),
        condition("F41.1"),
        condition("R19.7"),
    )
    expected = {
        "electrolyte-depleting-drug",
        "cholinergic-drug",
        "stimulant",
        "corticosteroid",
        "estrogen",
        "nicotine",
        "alcohol",
        "sleep-deprivation",
        "anxiety-stress",
        "fluid-loss",
        "workup-incomplete",
        "lifestyle-review",
    }
    assert set(cards) == expected
    assert {card["indicator"] for card in cards.values()} == {"info"}


# --- card quality ------------------------------------------------------------------------------


def busy_record() -> tuple[dict[str, Any], ...]:
    """Many findings at once: labs, drugs, lifestyle and red flags."""
    return (
        twitch(),
        lab(SODIUM, 128, "mmol/L"),
        lab(B12, 150, "pg/mL"),
        lab(POTASSIUM, 3.0, "mmol/L"),
        lab(TSH, 12.0, "mIU/L"),
        lab(CK, 500, "U/L"),
        medication("4603", "furosemide"),
        medication("7646", "omeprazole"),
        medication("312617", "predniSONE 5 MG Oral Tablet"),
        condition("F10.10"),
        condition("R20.2"),
        condition("M54.16"),
        condition("G71.19"),
        condition("55300003", SNOMED),
        family_history("73297009"),
        coded_observation(SMOKING, "449868002"),
        condition("E86.0"),
    )


def test_every_card_has_override_reasons_links_and_source(client: TestClient) -> None:
    body = call(client, *busy_record())
    cards = cards_by_code(body)  # also: at most one card per finding, each card valid
    assert len(cards) >= 12
    for code, card in cards.items():
        reasons = card["overrideReasons"]
        assert reasons and all(r["display"] and r["code"] for r in reasons), code
        # Sources are https pages; a `smart` link launches the app on the service's own base
        # URL (http here, under the test client).
        assert card["links"] and all(
            (link["url"].startswith("https://") or link["type"] == "smart") and link["label"]
            for link in card["links"]
        ), code
        assert card["source"]["url"].startswith("https://"), code
        assert card["source"]["topic"]["code"] == code
        assert card["indicator"] in ("info", "warning", "critical")
        for suggestion in card.get("suggestions", []):
            assert suggestion["label"] and suggestion["actions"]


def test_each_missing_lab_is_one_suggestion_and_the_workup_offers_every_one(
    client: TestClient,
) -> None:
    # Issue 9: the work-up card offers every missing work-up test, so dismissing a drug card
    # never removes the only order; a test offered on several cards is one suggestion (uuid).
    cards = codes(client, *busy_record())
    by_test: dict[str, set[str]] = {}
    for card in cards.values():
        for suggestion in card.get("suggestions", []):
            for code in lab_orders({"suggestions": [suggestion]}):
                by_test.setdefault(code, set()).add(suggestion["uuid"])
    assert all(len(uuids) == 1 for uuids in by_test.values()), by_test
    # Missing here: Ca, Mg, vitamin D (work-up), free T4 (thyroid). B12, K, TSH are present.
    assert {CALCIUM, MAGNESIUM, VITAMIN_D, "3024-7"} <= set(by_test)
    assert not {B12, POTASSIUM, TSH} & set(by_test)
    assert sorted(lab_orders(cards["workup-incomplete"])) == sorted([CALCIUM, MAGNESIUM, VITAMIN_D])


def test_red_flag_cards_each_carry_one_referral(client: TestClient) -> None:
    cards = codes(client, *busy_record())
    flags = RED_FLAGS & set(cards)
    # Every red flag but motor neuron disease, which the busy record does not show.
    assert flags >= RED_FLAGS - {"red-flag-motor-neuron-disease"}
    # Issue 9: one referral per response, naming every red flag, the same suggestion on each.
    offered = {
        s["uuid"]
        for code in flags
        for s in cards[code]["suggestions"]
        if s["label"] == "Refer to neurology"
    }
    assert len(offered) == 1
    for code in flags:
        (referral,) = referrals(cards[code])
        assert referral["resourceType"] == "ServiceRequest" and referral["status"] == "draft"
        assert referral["subject"] == {"reference": f"Patient/{PATIENT}"}
        for flag in flags:
            title = cards[flag]["source"]["topic"]["display"]
            assert title in referral["reasonCode"][0]["text"]
