"""Cards a clinician acts on (issue 17 points 1-3), read through the HTTP API as a clinician
reads them: advice that fits the hook, tests named when missing and named with their result
when present and normal, and drug cards that say when the drug was started and at what dose.
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from cds.knowledge import load_knowledge
from cds.settings import PROJECT_ROOT
from tests.conftest import SERVICE_OS, SERVICE_SIGN
from tests.support.app import module_client
from tests.support.cards import lab_orders
from tests.support.cards import patient_view_cards as cards
from tests.support.fhir import condition, days_ago, lab, medication, twitch
from tests.test_clinical_coverage import CALCIUM, MAGNESIUM, POTASSIUM, VITAMIN_D, normal_workup
from tests.test_order_hooks import draft, order_cards

DEPLETING = "electrolyte-depleting-drug"
B12, HBA1C = "2132-9", "4548-4"

client = module_client()


def furosemide(**fields: Any) -> dict[str, Any]:
    return {**medication("4603", "furosemide 40 MG Oral Tablet"), **fields}


# --- point 1: advice that fits the hook ---------------------------------------------------------


def test_patient_view_keeps_the_advice_for_a_drug_already_taken(client: TestClient) -> None:
    card = cards(
        client,
        twitch(),
        furosemide(),
        lab(POTASSIUM, 3.1, "mmol/L"),
        lab(CALCIUM, 9.4, "mg/dL"),
        lab(MAGNESIUM, 2.0, "mg/dL"),
        lab(VITAMIN_D, 35, "ng/mL"),
    )[DEPLETING]
    # Not telegraphic: the summary says what to replace.
    assert "replace potassium" in card["summary"] and "review the drug" in card["summary"]
    assert "whether the drug is still needed" in card["detail"]
    assert "Before signing" not in card["detail"] and "Ordering" not in card["summary"]


@pytest.mark.parametrize("service", [SERVICE_OS, SERVICE_SIGN])
def test_a_draft_order_says_what_ordering_does_and_what_to_do_before_signing(
    client: TestClient, service: str
) -> None:
    card = order_cards(
        client,
        service,
        [draft("4603", "furosemide 40 MG Oral Tablet")],
        twitch(),
        lab(POTASSIUM, 3.1, "mmol/L"),
    )[DEPLETING]
    summary = card["summary"]
    assert summary.startswith("Ordering Furosemide 40 mg oral tablet")
    assert "will lower an already low potassium 3.1 mmol/L" in summary
    detail = card["detail"]
    assert "Before signing: correct the low potassium and recheck it" in detail
    assert "monitor it" in detail and "choose an alternative" in detail
    # Advice for a drug the patient already takes has no place on a draft.
    assert "still needed" not in detail and "review the drug" not in summary


@pytest.mark.parametrize("service", [SERVICE_OS, SERVICE_SIGN])
def test_a_draft_order_without_a_low_value_says_what_it_can_lower(
    client: TestClient, service: str
) -> None:
    card = order_cards(client, service, [draft("4603", "furosemide 40 MG Oral Tablet")], twitch())[
        DEPLETING
    ]
    assert card["summary"].startswith("Ordering Furosemide 40 mg oral tablet")
    assert "potassium and magnesium" in card["summary"]
    assert "Before signing" in card["detail"]


# --- point 2: missing tests by name, present and normal results said ----------------------------


def test_a_card_offering_tests_says_they_were_not_measured(client: TestClient) -> None:
    card = cards(client, twitch(), condition("G62.9"), *normal_workup())["red-flag-neuropathy"]
    assert {B12, HBA1C} <= set(lab_orders(card))
    assert "**Not measured:** no vitamin B12 or HbA1c result in the last 365 days" in card["detail"]


def test_a_normal_result_on_record_is_named_instead_of_asked_for(client: TestClient) -> None:
    when = days_ago(3)
    card = cards(
        client,
        twitch(),
        medication("312617", "predniSONE 5 MG Oral Tablet"),
        lab(POTASSIUM, 4.2, "mmol/L", when=when),
    )["corticosteroid"]
    assert f"**Already measured, within range:** potassium 4.2 mmol/L on {when}" in card["detail"]
    assert "check potassium" not in card["detail"].lower()
    assert POTASSIUM not in lab_orders(card)


def test_a_missing_monitoring_test_is_named_and_offered(client: TestClient) -> None:
    card = cards(client, twitch(), medication("312617", "predniSONE 5 MG Oral Tablet"))[
        "corticosteroid"
    ]
    assert "**Not measured:** no potassium result in the last 365 days" in card["detail"]
    assert lab_orders(card) == [POTASSIUM]


def test_only_the_missing_test_is_named_missing_beside_a_normal_one(client: TestClient) -> None:
    card = cards(
        client,
        twitch(),
        furosemide(),
        lab(POTASSIUM, 4.0, "mmol/L"),
    )[DEPLETING]
    detail = card["detail"]
    assert "**Not measured:** no magnesium result" in detail
    assert "**Already measured, within range:** potassium 4 mmol/L" in detail
    assert lab_orders(card) == [MAGNESIUM]


@pytest.mark.parametrize(
    ("result", "code"),
    [
        (lab(POTASSIUM, 3.1, "mmol/L"), "hypokalemia"),
        (lab(CALCIUM, 8.0, "mg/dL"), "hypocalcemia"),
    ],
)
def test_a_card_never_asks_for_a_normal_result_it_names(
    client: TestClient, result: dict[str, Any], code: str
) -> None:
    when = days_ago(3)
    card = cards(client, twitch(), result, lab(MAGNESIUM, 2.0, "mg/dL", when=when))[code]
    assert f"**Already measured, within range:** magnesium 2 mg/dL on {when}" in card["detail"]
    assert "check magnesium" not in card["detail"].lower()
    assert MAGNESIUM not in lab_orders(card)


def test_a_test_the_service_does_not_judge_is_named_as_measured(client: TestClient) -> None:
    card = cards(
        client,
        twitch(),
        lab(CALCIUM, 8.0, "mg/dL"),
        lab("1751-7", 4.2, "g/dL"),
        *normal_workup()[1:],
    )["hypocalcemia"]
    assert "**Already measured:** albumin (measured within the last 365 days)" in card["detail"]
    assert "1751-7" not in lab_orders(card)


# --- point 3: when and how much -----------------------------------------------------------------


def test_drug_card_states_the_start_date_and_the_dose_as_prescribed(client: TestClient) -> None:
    request = furosemide(
        authoredOn="2026-09-14",
        dosageInstruction=[{"text": "40 mg by mouth every morning"}],
    )
    card = cards(client, twitch(), request, *normal_workup())[DEPLETING]
    assert "started 2026-09-14" in card["detail"]
    assert "dose 40 mg by mouth every morning" in card["detail"]


def test_a_statement_states_its_effective_start_and_structured_dose(client: TestClient) -> None:
    statement = medication(
        "312617", "predniSONE 5 MG Oral Tablet", kind="MedicationStatement", status="active"
    )
    statement["effectivePeriod"] = {"start": "2026-10-02"}
    statement["dosage"] = [
        {
            "doseAndRate": [{"doseQuantity": {"value": 20, "unit": "mg"}}],
            "timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}},
        }
    ]
    card = cards(client, twitch(), statement, *normal_workup())["corticosteroid"]
    assert "started 2026-10-02" in card["detail"] and "dose 20 mg, once a day" in card["detail"]


def test_a_drug_without_start_or_dose_says_so(client: TestClient) -> None:
    card = cards(client, twitch(), furosemide(), *normal_workup())[DEPLETING]
    assert "start date not recorded" in card["detail"] and "dose not recorded" in card["detail"]


# --- point 9: the logic table shows the advice per hook -----------------------------------------


def test_the_logic_table_shows_each_cards_advice_per_hook() -> None:
    document = (PROJECT_ROOT / "docs" / "clinical-logic.md").read_text(encoding="utf-8")
    section = document.split("## Card advice per hook", 1)[1].split("\n## ", 1)[0]
    rows = {
        line.split("|")[1].strip(" `"): line for line in section.splitlines() if line[:3] == "| `"
    }
    knowledge = load_knowledge(PROJECT_ROOT / "rules")
    assert set(rows) == set(knowledge.findings.findings)  # every card, each once
    drug = rows[DEPLETING].split(" | ")
    assert "still needed" in drug[1] and "Before signing" not in drug[1]  # patient-view
    assert "Before signing" in drug[2] and "will lower an already low" in drug[2]  # order hooks
    assert rows["hypokalemia"].rstrip(" |").endswith("same as patient-view")


# --- point 4: numbers as a laboratory reports them ----------------------------------------------


def evidence_line(card: dict[str, Any], label: str) -> str:
    return next(line for line in card["detail"].splitlines() if line.startswith(f"- **{label}**"))


def test_a_converted_value_is_rounded_to_the_reported_precision(client: TestClient) -> None:
    card = cards(client, twitch(), lab(VITAMIN_D, 30, "nmol/L"))["vitamin-d-deficiency"]
    line = evidence_line(card, "25-hydroxyvitamin D")
    assert "30 nmol/L (= 12 ng/mL)" in line and "12.02" not in card["detail"]
    assert "(30 nmol/L on " in card["summary"]


def test_a_value_too_small_for_two_decimals_is_never_shown_as_zero(client: TestClient) -> None:
    """0.003 mmol/L of magnesium (a unit slip, still judged critical) reads as itself."""
    card = cards(client, twitch(), lab(MAGNESIUM, 0.003, "mmol/L"))["hypomagnesemia"]
    line = evidence_line(card, "Magnesium")
    assert "0.003 mmol/L (= 0.0073 mg/dL)" in line
    assert " 0 mmol/L" not in card["detail"] and "(= 0 mg/dL)" not in card["detail"]


@pytest.mark.parametrize(
    ("result", "code", "label", "limit"),
    [
        (lab(VITAMIN_D, 30, "nmol/L"), "vitamin-d-deficiency", "25-hydroxyvitamin D", "50 nmol/L"),
        (lab(CALCIUM, 1.9, "mmol/L"), "hypocalcemia", "Total calcium", "below 2.12 mmol/L"),
        (lab(MAGNESIUM, 0.6, "mmol/L"), "hypomagnesemia", "Magnesium", "below 0.7 mmol/L"),
        (lab(B12, 100, "pmol/L"), "vitamin-b12-deficiency", "Vitamin B12", "below 133 pmol/L"),
        (
            lab(MAGNESIUM, 0.6, "mmol/L", low=0.7, high=1.0),
            "hypomagnesemia",
            "Magnesium",
            "lower limit of 0.7 mmol/L",
        ),
    ],
)
def test_a_threshold_is_shown_in_the_unit_of_the_value_beside_it(
    client: TestClient, result: dict[str, Any], code: str, label: str, limit: str
) -> None:
    line = evidence_line(cards(client, twitch(), result)[code], label)
    reported_unit = result["valueQuantity"]["unit"]
    judged = line.split("): ", 1)[1]
    assert limit in judged and reported_unit in judged
    canonical = {"ng/mL", "mg/dL", "pg/mL"} - {reported_unit}
    assert not any(unit in judged for unit in canonical), line
