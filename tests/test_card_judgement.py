"""Red flags that mean what they say, and advice that fits the card (issue 9), through HTTP.

Each case is a record as an EHR sends it; each failed on the code before issue 9:
- dyspnoea explained by active asthma, COPD or heart failure raised a critical MND card;
- R53.1 "Weakness" (asthenia) counted as muscle weakness;
- a provisional diagnosis under neurology care was "known" and lost its referral;
- every red-flag card built its own referral, and a known diagnosis had none;
- a drug lowering an already low electrolyte said "consider an alternative if it is low";
- the lifestyle review said "reassure" beside a critical potassium;
- the hypocalcaemia card asked for albumin without offering it;
- an order for a drug the patient already takes said nothing about a duplicate.
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import SERVICE_OS
from tests.support.app import module_client
from tests.support.cards import cards_by_code
from tests.support.cards import patient_view_cards as cards
from tests.support.fhir import (
    ICD10,
    SNOMED,
    bundle,
    condition,
    hook_request,
    lab,
    medication,
    twitch,
)
from tests.test_clinical_coverage import (
    CALCIUM,
    MAGNESIUM,
    POTASSIUM,
    RED_FLAGS,
    VITAMIN_D,
    lab_orders,
    neurology_referral_request,
    normal_workup,
    referrals,
)

DYSPNOEA, ORTHOPNOEA, DYSPHAGIA = "R06.00", "R06.01", "R13.10"
ALBUMIN = "1751-7"
MND = "red-flag-motor-neuron-disease"


client = module_client()


def under_care() -> dict[str, Any]:
    return {"neurologyReferrals": bundle(neurology_referral_request())}


# --- respiratory signs explained by chronic lung or heart disease -----------------------------

EXPLAINING = [
    condition("J45.909"),
    condition("J44.9"),
    condition("I50.9"),
    condition("195967001", SNOMED),
    condition("88805009", SNOMED),
]


@pytest.mark.parametrize("disease", EXPLAINING)
@pytest.mark.parametrize("sign", [DYSPNOEA, ORTHOPNOEA])
def test_dyspnoea_explained_by_asthma_copd_or_heart_failure_is_no_mnd_pattern(
    client: TestClient, disease: dict[str, Any], sign: str
) -> None:
    found = cards(client, twitch(), condition(sign), disease, *normal_workup())
    assert MND not in found


def test_unexplained_dyspnoea_is_still_critical(client: TestClient) -> None:
    card = cards(client, twitch(), condition(DYSPNOEA), *normal_workup())[MND]
    assert card["indicator"] == "critical"


def test_resolved_asthma_explains_nothing(client: TestClient) -> None:
    card = cards(
        client,
        twitch(),
        condition(DYSPNOEA),
        condition("J45.909", clinical="resolved"),
        *normal_workup(),
    )[MND]
    assert card["indicator"] == "critical"


@pytest.mark.parametrize("bulbar", [(DYSPHAGIA, ICD10), ("R47.1", ICD10), ("249878001", SNOMED)])
def test_bulbar_signs_always_count_even_with_asthma(
    client: TestClient, bulbar: tuple[str, str]
) -> None:
    card = cards(client, twitch(), condition(*bulbar), condition("J45.909"), *normal_workup())[MND]
    assert card["indicator"] == "critical"


def test_new_respiratory_sign_in_known_mnd_stays_critical_even_with_copd(
    client: TestClient,
) -> None:
    card = cards(
        client,
        twitch(),
        condition("G12.21"),
        condition(DYSPNOEA),
        condition("J44.9"),
        *normal_workup(),
        extra=under_care(),
    )[MND]
    assert card["indicator"] == "critical"
    assert card["summary"].startswith("Known") and "urgently" in card["summary"]
    (suggestion,) = [s for s in card["suggestions"] if referrals({"suggestions": [s]})]
    assert suggestion["label"] == "Contact the neurology team"
    assert referrals(card)[0]["priority"] == "urgent"


# --- fatigue is not weakness -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "system"),
    [("R53.1", ICD10), ("R53.83", ICD10), ("R53.81", ICD10), ("13791008", SNOMED)],
)
def test_fatigue_or_asthenia_is_not_muscle_weakness(
    client: TestClient, code: str, system: str
) -> None:
    found = cards(client, twitch(), condition(code, system), *normal_workup())
    assert MND not in found
    assert "lifestyle-review" in found


def test_muscle_weakness_still_counts(client: TestClient) -> None:
    card = cards(client, twitch(), condition("M62.81"), *normal_workup())[MND]
    assert card["indicator"] == "warning" and "muscle weakness" in card["summary"]


# --- provisional diagnoses are suspected, never known ------------------------------------------


@pytest.mark.parametrize("verification", ["provisional", "differential", "unconfirmed"])
def test_provisional_diagnosis_under_care_is_suspected_with_a_referral(
    client: TestClient, verification: str
) -> None:
    card = cards(
        client,
        twitch(),
        condition("G12.21", verification=verification),
        *normal_workup(),
        extra=under_care(),
    )[MND]
    assert "suspected" in card["summary"] and not card["summary"].startswith("Known")
    assert card["suggestions"][0]["label"] == "Refer to neurology"
    assert len(referrals(card)) == 1


def test_confirmed_diagnosis_without_care_says_diagnosed_not_consider_mnd(
    client: TestClient,
) -> None:
    card = cards(client, twitch(), condition("G12.21", verification="confirmed"), *normal_workup())[
        MND
    ]
    assert "diagnosed" in card["summary"]
    assert "consider motor neuron disease" not in card["summary"]
    assert "name the suspected diagnosis" not in card["detail"]
    assert card["suggestions"][0]["label"] == "Refer to neurology"


def test_diagnosed_mnd_with_weakness_does_not_ask_to_name_a_suspected_diagnosis(
    client: TestClient,
) -> None:
    card = cards(client, twitch(), condition("G12.21"), condition("M62.81"), *normal_workup())[MND]
    assert "consider motor neuron disease" not in card["summary"]
    assert "name the suspected diagnosis" not in card["detail"]


# --- one referral per response -----------------------------------------------------------------


def test_several_red_flags_share_one_referral_naming_them_all(client: TestClient) -> None:
    found = cards(
        client,
        twitch(),
        condition("M62.81"),
        condition("R20.2"),
        condition("M54.16"),
        condition(DYSPHAGIA),
        *normal_workup(),
    )
    flags = RED_FLAGS & set(found)
    assert flags == {MND, "red-flag-neuropathy", "red-flag-radiculopathy"}
    suggestions = {
        s["uuid"]: s
        for code in flags
        for s in found[code]["suggestions"]
        if referrals({"suggestions": [s]})
    }
    (referral,) = suggestions.values()
    resource = referral["actions"][0]["resource"]
    assert resource["priority"] == "urgent"  # one red flag is critical
    for code in flags:
        assert found[code]["source"]["topic"]["display"] in resource["reasonCode"][0]["text"]
    every_referral = [r for card in found.values() for r in referrals(card)]
    assert len({str(r) for r in every_referral}) == 1


def test_a_new_red_flag_beside_a_known_one_asks_for_a_referral(client: TestClient) -> None:
    found = cards(
        client,
        twitch(),
        condition("G12.21"),
        condition("R20.2"),
        *normal_workup(),
        extra=under_care(),
    )
    assert found[MND]["summary"].startswith("Known")
    labels = {found[code]["suggestions"][0]["label"] for code in (MND, "red-flag-neuropathy")}
    assert labels == {"Refer to neurology"}


# --- advice consistent with the evidence -------------------------------------------------------


def test_bulbar_evidence_is_not_called_conditional(client: TestClient) -> None:
    card = cards(client, twitch(), condition(DYSPHAGIA), *normal_workup())[MND]
    assert "dysphagia" in card["summary"].lower()
    assert "if bulbar" not in card["detail"] and "are present" not in card["detail"]


def test_drug_lowering_an_already_low_electrolyte_says_replace_and_review(
    client: TestClient,
) -> None:
    card = cards(
        client,
        twitch(),
        medication("4603", "furosemide 40 MG Oral Tablet"),
        lab(POTASSIUM, 3.1, "mmol/L"),
        lab(CALCIUM, 9.4, "mg/dL"),
        lab(MAGNESIUM, 2.0, "mg/dL"),
        lab(VITAMIN_D, 35, "ng/mL"),
    )["electrolyte-depleting-drug"]
    assert card["indicator"] == "warning"
    assert "Replace potassium and recheck it" in card["detail"]
    assert "consider an alternative if it is low" not in card["detail"].lower()
    assert "if it is low" not in card["summary"]


def test_hypocalcaemia_card_offers_the_albumin_it_asks_for(client: TestClient) -> None:
    card = cards(client, twitch(), lab(CALCIUM, 8.0, "mg/dL"))["hypocalcemia"]
    assert "albumin" in card["detail"]
    assert ALBUMIN in lab_orders(card)
    with_albumin = cards(client, twitch(), lab(CALCIUM, 8.0, "mg/dL"), lab(ALBUMIN, 4.2, "g/dL"))[
        "hypocalcemia"
    ]
    assert ALBUMIN not in lab_orders(with_albumin)


def test_no_reassurance_beside_a_critical_card(client: TestClient) -> None:
    found = cards(client, twitch(), lab(POTASSIUM, 2.3, "mmol/L"), condition("F41.1"))
    assert found["hypokalemia"]["indicator"] == "critical"
    assert "lifestyle-review" not in found
    assert not any("reassure" in (c["summary"] + c["detail"]).lower() for c in found.values())


def test_lifestyle_review_without_anything_serious_has_no_reassure(client: TestClient) -> None:
    card = cards(client, twitch(), *normal_workup())["lifestyle-review"]
    assert "reassure" not in card["detail"].lower()


# --- order-select: a drug the patient already takes --------------------------------------------


def test_ordering_a_drug_already_active_names_a_possible_duplicate(client: TestClient) -> None:
    active = medication("312617", "predniSONE 5 MG Oral Tablet")
    draft = medication("312615", "predniSONE 20 MG Oral Tablet", status="draft")
    draft["id"] = "draft-pred"
    request = hook_request(
        twitch(),
        active,
        hook="order-select",
        draftOrders={
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": draft}],
        },
        selections=["MedicationRequest/draft-pred"],
    )
    response = client.post(f"/cds-services/{SERVICE_OS}", json=request)
    assert response.status_code == 200, response.text
    card = cards_by_code(response.json())["corticosteroid"]
    assert card["indicator"] == "warning"
    assert "Possible duplicate" in card["summary"]
    assert "Prednisone 20 mg" in card["summary"] and "Prednisone 5 mg" in card["summary"]
