"""Wording a clinician reads at a glance (issue 9 point 5): no raw FHIR status words in
summaries, no concatenated code displays, drug names as prescribers write them, family
relationships in words. Through HTTP, plus focused unit tests of the name formatting."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from cds.decision.cards import prescriber_name
from cds.settings import PROJECT_ROOT
from cds.tools.rules_check import check
from tests.support.app import module_client
from tests.support.cards import patient_view_cards as cards
from tests.support.fhir import (
    SNOMED,
    coded_observation,
    condition,
    family_history,
    lab,
    medication,
    twitch,
)
from tests.test_clinical_coverage import SMOKING, busy_record, normal_workup

RAW_STATUS = re.compile(
    r"\((draft|active|final|amended|corrected|stopped|completed|"
    r"intended|recurrence|relapse)\)"
)


client = module_client()


@pytest.mark.parametrize(
    ("rxnorm", "written"),
    [
        ("predniSONE 20 MG Oral Tablet", "Prednisone 20 mg oral tablet"),
        ("Hydrochlorothiazide 25 MG Oral Tablet", "Hydrochlorothiazide 25 mg oral tablet"),
        ("1 ML furosemide 10 MG/ML Injection", "1 mL furosemide 10 mg/mL injection"),
        (
            "omeprazole 20 MG Delayed Release Oral Capsule [Prilosec]",
            "Omeprazole 20 mg delayed release oral capsule [Prilosec]",
        ),
        ("Lasix 40mg", "Lasix 40mg"),  # typed by a prescriber: as written
        ("hydrOXYzine", "Hydroxyzine"),  # tall-man letters alone
    ],
)
def test_drug_names_as_prescribers_write_them(rxnorm: str, written: str) -> None:
    assert prescriber_name(rxnorm) == written


def test_no_summary_carries_a_raw_fhir_status(client: TestClient) -> None:
    found = cards(
        client,
        twitch(),
        medication("312617", "predniSONE 5 MG Oral Tablet"),
        medication("4603", "furosemide 40 MG Oral Tablet"),
        lab("2823-3", 3.1, "mmol/L"),
        condition("M62.81"),
        condition("F41.1"),
    )
    assert len(found) >= 4
    for code, card in found.items():
        assert not RAW_STATUS.search(card["summary"]), (code, card["summary"])
    assert "Prednisone 5 mg oral tablet" in found["corticosteroid"]["summary"]
    # The detail still states the medication's status, as the contract asks.
    assert "(active, " in found["corticosteroid"]["detail"]


def test_smoking_answer_is_not_a_concatenated_display(client: TestClient) -> None:
    card = cards(client, twitch(), coded_observation(SMOKING, "449868002"), *normal_workup())[
        "nicotine"
    ]
    assert "smokes tobacco daily" in card["summary"]
    assert "status:" not in card["summary"].lower()
    assert "**Smokes tobacco daily**" in card["detail"]
    assert "LOINC 72166-2" in card["detail"]


@pytest.mark.parametrize(
    ("code", "words"),
    [("MTH", "mother"), ("FTH", "father"), ("SIS", "sister"), ("PGRMTH", "paternal grandmother")],
)
def test_family_relationship_in_words(client: TestClient, code: str, words: str) -> None:
    card = cards(
        client, twitch(), family_history("73297009", SNOMED, relation=code), *normal_workup()
    )["red-flag-muscular-dystrophy"]
    assert words in card["summary"] and words in card["detail"]
    assert code not in card["summary"] and f"({code}" not in card["detail"]


# --- issue 17 point 5: plain words, one spelling ------------------------------------------------

WORDING = yaml.safe_load((PROJECT_ROOT / "rules" / "wording.yaml").read_text(encoding="utf-8"))


def clinician_reads(card: dict[str, Any]) -> list[str]:
    """What a clinician reads on a card; source titles keep their published spelling."""
    texts = [card["summary"], card["detail"], card["source"]["topic"]["display"]]
    texts += [reason["display"] for reason in card["overrideReasons"]]
    for suggestion in card.get("suggestions", []):
        texts.append(suggestion["label"])
        texts += [action["description"] for action in suggestion["actions"]]
    return texts


def test_card_texts_are_us_english_without_internal_jargon(client: TestClient) -> None:
    found = cards(
        client,
        *busy_record(),
        lab("17861-6", 8.0, "mg/dL"),
        condition("R06.00"),  # dyspnoea: an MND card with a respiratory sign
        condition("R19.7"),  # diarrhoea
        medication(text="Caffeine 200 MG Oral Tablet"),
        condition("F41.1"),
    )
    assert len(found) >= 14
    british = [spelling.lower() for spelling in WORDING["us_spelling"]]
    for code, card in found.items():
        for text in clinician_reads(card):
            lowered = text.lower()
            assert not [b for b in british if b in lowered], (code, text)
            assert not [j for j in WORDING["jargon"] if j.lower() in lowered], (code, text)
    # The low lab values of this record were judged by the rules' limits: said in words.
    assert "the usual adult limit" in found["hyponatremia"]["detail"]
    drug = found["electrolyte-depleting-drug"]["detail"]
    assert "magnesium, potassium or calcium" in drug and "Mg/K/Ca" not in drug


def test_check_rules_lints_british_spelling_and_jargon_in_card_texts(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(PROJECT_ROOT / "rules", rules)
    findings = (rules / "findings.yaml").read_text(encoding="utf-8")
    findings = findings.replace(
        "why: Low potassium causes muscle weakness",
        "why: Hypokalaemia (default limit) causes muscle weakness",
    )
    (rules / "findings.yaml").write_text(findings, encoding="utf-8")
    problems = [str(p) for p in check(rules)]
    assert any(
        "findings.hypokalemia.why: British spelling 'aemia'" in p and "'emia'" in p
        for p in problems
    ), problems
    assert any(
        "findings.hypokalemia.why: internal jargon 'default limit'" in p for p in problems
    ), problems
    # Source titles keep their published spelling: the shipped rules pass.
    assert check(PROJECT_ROOT / "rules") == []


@pytest.mark.parametrize(
    ("rxnorm", "display", "says"),
    [
        (
            "7646",
            "omeprazole 20 MG Delayed Release Oral Capsule",
            "omeprazole (drug that lowers magnesium)",
        ),
        (
            "4603",
            "furosemide 40 MG Oral Tablet",
            "furosemide (drug that lowers potassium and magnesium)",
        ),
    ],
)
def test_a_drug_card_names_what_this_drug_lowers(
    client: TestClient, rxnorm: str, display: str, says: str
) -> None:
    """Not the whole class's 'magnesium, potassium or calcium': what this ingredient lowers."""
    card = cards(client, twitch(), medication(rxnorm, display))["electrolyte-depleting-drug"]
    assert f"contains {says}" in card["detail"].replace("\\", ""), card["detail"]
