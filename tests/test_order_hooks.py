"""order-select and order-sign through HTTP: cards about the drug being ordered, nothing else.

order-select looks only at the orders named in `context.selections`; order-sign at every draft
order. A drug of a twitch-relevant class gives a card naming it when the record documents a
twitch complaint; a drug that lowers magnesium, potassium or calcium gives a warning without
the complaint when that electrolyte is already low. The patient's existing medicines and chart
findings are patient-view's business and never give a card here.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import SERVICE_OS, SERVICE_SIGN
from tests.support.app import module_client
from tests.support.cards import cards_by_code, lab_orders
from tests.support.fhir import (
    PATIENT,
    RXNORM,
    SNOMED,
    bundle,
    condition,
    hook_request,
    lab,
    medication,
    prefetch,
    twitch,
)
from tests.support.paths import SANDBOX

MAGNESIUM, POTASSIUM, CALCIUM = "19123-9", "2823-3", "17861-6"
HOOKS = {SERVICE_OS: "order-select", SERVICE_SIGN: "order-sign"}


client = module_client()


def draft(
    code: str | None = None,
    display: str | None = None,
    *,
    text: str | None = None,
    order_id: str = "draft-1",
) -> dict[str, Any]:
    """A draft MedicationRequest as the EHR sends it in `context.draftOrders`."""
    resource = medication(code, display, text=text, status="draft")
    resource["id"] = order_id
    return resource


def order_call(
    client: TestClient,
    service: str,
    drafts: list[dict[str, Any]],
    *resources: dict[str, Any],
    selections: list[str] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    context: dict[str, Any] = {
        "draftOrders": {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": d} for d in drafts],
        }
    }
    if service == SERVICE_OS:
        context["selections"] = (
            selections
            if selections is not None
            else [f"{d['resourceType']}/{d['id']}" for d in drafts]
        )
    request = hook_request(*resources, hook=HOOKS[service], **context, **kwargs)
    response = client.post(f"/cds-services/{service}", json=request)
    assert response.status_code == 200, response.text
    return response.json()


def order_cards(
    client: TestClient,
    service: str,
    drafts: list[dict[str, Any]],
    *resources: dict[str, Any],
    **kwargs: Any,
) -> dict[str, dict[str, Any]]:
    return cards_by_code(order_call(client, service, drafts, *resources, **kwargs))


BOTH_HOOKS = pytest.mark.parametrize("service", [SERVICE_OS, SERVICE_SIGN])
CLASS_DRAFTS = [
    (draft("312615", "predniSONE 20 MG Oral Tablet"), "corticosteroid", "predniSONE 20 MG"),
    (draft(text="Estradiol 1 MG Oral Tablet"), "estrogen", "Estradiol 1 MG"),
    (draft("1534809", "ethinyl estradiol / norelgestromin patch"), "estrogen", "ethinyl estradiol"),
    (draft("6901", "methylphenidate 10 MG Oral Tablet"), "stimulant", "methylphenidate"),
    (draft(display="Adderall 20 MG (amphetamine)"), "stimulant", "Adderall"),
    (draft("9000", "pyridostigmine bromide 60 MG"), "cholinergic-drug", "pyridostigmine"),
    (draft("135447", "donepezil 10 MG"), "cholinergic-drug", "donepezil"),
    (draft("4603", "furosemide 40 MG Oral Tablet"), "electrolyte-depleting-drug", "furosemide"),
    (draft("7646", "omeprazole 20 MG"), "electrolyte-depleting-drug", "omeprazole"),
]


# --- a drug of a listed class, for a patient with a twitch complaint --------------------------


@BOTH_HOOKS
@pytest.mark.parametrize(("order", "finding", "name"), CLASS_DRAFTS)
def test_listed_drug_with_twitch_complaint_gives_a_card_naming_it(
    client: TestClient, service: str, order: dict[str, Any], finding: str, name: str
) -> None:
    cards = order_cards(client, service, [order], twitch())
    assert list(cards) == [finding]
    card = cards[finding]
    assert card["indicator"] == "info"
    # Named as prescribers write it, without a raw FHIR status (issue 9).
    assert name.lower() in card["summary"].lower() and "(draft)" not in card["summary"]
    assert name.lower() in card["detail"].lower()


@BOTH_HOOKS
@pytest.mark.parametrize(("order", "finding", "name"), CLASS_DRAFTS)
def test_listed_drug_without_twitch_complaint_gives_no_card(
    client: TestClient, service: str, order: dict[str, Any], finding: str, name: str
) -> None:
    assert order_call(client, service, [order]) == {"cards": []}


# --- a drug that lowers an electrolyte that is already low -------------------------------------


@BOTH_HOOKS
@pytest.mark.parametrize(
    ("order", "low_lab", "named"),
    [
        (
            draft("4603", "furosemide 40 MG Oral Tablet"),
            lab(POTASSIUM, 3.1, "mmol/L"),
            "potassium 3.1 mmol/L",
        ),
        (
            draft("4603", "furosemide 40 MG Oral Tablet"),
            lab(MAGNESIUM, 1.3, "mg/dL"),
            "magnesium 1.3 mg/dL",
        ),
        (draft("7646", "omeprazole 20 MG"), lab(MAGNESIUM, 1.4, "mg/dL"), "magnesium 1.4 mg/dL"),
        (
            draft(text="Hydrochlorothiazide 25 MG"),
            lab(POTASSIUM, 3.0, "mmol/L"),
            "potassium 3 mmol/L",
        ),
        (
            draft(text="Alendronate 70 MG Oral Tablet"),
            lab(CALCIUM, 7.9, "mg/dL"),
            "total calcium 7.9 mg/dL",
        ),
    ],
)
def test_depleting_drug_with_its_electrolyte_low_warns_even_without_twitch(
    client: TestClient, service: str, order: dict[str, Any], low_lab: dict[str, Any], named: str
) -> None:
    for complaint in ((), (twitch(),)):
        card = order_cards(client, service, [order], low_lab, *complaint)[
            "electrolyte-depleting-drug"
        ]
        assert card["indicator"] == "warning"
        drug = (
            order["medicationCodeableConcept"].get("text")
            or order["medicationCodeableConcept"]["coding"][0]["display"]
        )
        assert drug.lower() in card["summary"].lower() and named in card["summary"]


@BOTH_HOOKS
@pytest.mark.parametrize(
    ("order", "other_lab"),
    [
        (draft("7646", "omeprazole 20 MG"), lab(POTASSIUM, 3.1, "mmol/L")),  # PPI: Mg only
        (draft("4603", "furosemide 40 MG"), lab(CALCIUM, 7.9, "mg/dL")),  # loop: K and Mg
        (draft("4603", "furosemide 40 MG"), lab(POTASSIUM, 4.1, "mmol/L")),  # K normal
        (draft("312615", "predniSONE 20 MG Oral Tablet"), lab(MAGNESIUM, 1.3, "mg/dL")),
    ],
)
def test_depleting_drug_without_twitch_and_its_electrolyte_not_low_gives_no_card(
    client: TestClient, service: str, order: dict[str, Any], other_lab: dict[str, Any]
) -> None:
    assert order_call(client, service, [order], other_lab) == {"cards": []}


@BOTH_HOOKS
def test_depleting_drug_warning_with_twitch_is_one_card(client: TestClient, service: str) -> None:
    cards = order_cards(
        client,
        service,
        [draft("4603", "furosemide 40 MG")],
        twitch(),
        lab(POTASSIUM, 3.1, "mmol/L"),
        lab(MAGNESIUM, 2.0, "mg/dL"),
    )
    assert list(cards) == ["electrolyte-depleting-drug"]
    assert cards["electrolyte-depleting-drug"]["indicator"] == "warning"


def test_drug_card_offers_monitoring_of_what_the_drug_lowers_when_missing(
    client: TestClient,
) -> None:
    card = order_cards(client, SERVICE_SIGN, [draft("4603", "furosemide 40 MG")], twitch())[
        "electrolyte-depleting-drug"
    ]
    assert sorted(lab_orders(card)) == sorted([POTASSIUM, MAGNESIUM])
    card = order_cards(
        client,
        SERVICE_SIGN,
        [draft("4603", "furosemide 40 MG")],
        twitch(),
        lab(POTASSIUM, 4.0, "mmol/L"),
    )["electrolyte-depleting-drug"]
    assert lab_orders(card) == [MAGNESIUM]


# --- drugs that are not listed, and what the order hooks ignore --------------------------------


@BOTH_HOOKS
@pytest.mark.parametrize(
    "order",
    [
        draft("860975", "24 HR Metformin hydrochloride 500 MG Extended Release Oral Tablet"),
        draft("316672", "Simvastatin 10 MG Oral Tablet"),
        draft(text="Amoxicillin 500 MG Oral Capsule"),
        draft(),  # no drug chosen yet
    ],
)
def test_non_listed_drug_gives_no_card(
    client: TestClient, service: str, order: dict[str, Any]
) -> None:
    assert order_call(
        client,
        service,
        [order],
        twitch(),
        lab(MAGNESIUM, 1.2, "mg/dL"),
        lab(POTASSIUM, 2.9, "mmol/L"),
    ) == {"cards": []}


@BOTH_HOOKS
def test_existing_medicines_and_chart_findings_give_no_card(
    client: TestClient, service: str
) -> None:
    chart = (
        twitch(),
        medication("312617", "predniSONE 5 MG Oral Tablet"),
        medication("4603", "furosemide 40 MG"),
        lab(POTASSIUM, 2.4, "mmol/L"),
        lab(MAGNESIUM, 1.0, "mg/dL"),
        condition("M62.81"),
        condition("40739000", SNOMED),
        condition("F10.10"),
    )
    metformin = draft("860975", "Metformin hydrochloride 500 MG")
    assert order_call(client, service, [metformin], *chart) == {"cards": []}
    assert order_call(client, service, [], *chart) == {"cards": []}


@BOTH_HOOKS
def test_an_active_request_in_the_chart_is_not_a_draft(client: TestClient, service: str) -> None:
    # The chart's furosemide and low K alone: only drafts count in the order hooks.
    body = order_call(
        client,
        service,
        [draft(text="Paracetamol 500 MG")],
        medication("4603", "furosemide 40 MG"),
        lab(POTASSIUM, 3.0, "mmol/L"),
    )
    assert body == {"cards": []}


# --- which orders each hook considers ---------------------------------------------------------


def test_order_select_considers_only_the_selected_orders(client: TestClient) -> None:
    prednisone = draft("312615", "predniSONE 20 MG Oral Tablet", order_id="pred")
    metformin = draft("860975", "Metformin 500 MG", order_id="metf")
    furosemide = draft("4603", "furosemide 40 MG", order_id="furo")
    record = (twitch(), lab(POTASSIUM, 3.0, "mmol/L"))
    drafts = [prednisone, metformin, furosemide]
    assert order_call(
        client, SERVICE_OS, drafts, *record, selections=["MedicationRequest/metf"]
    ) == {"cards": []}
    cards = order_cards(client, SERVICE_OS, drafts, *record, selections=["MedicationRequest/pred"])
    assert list(cards) == ["corticosteroid"]
    cards = order_cards(client, SERVICE_OS, drafts, *record, selections=["MedicationRequest/furo"])
    assert list(cards) == ["electrolyte-depleting-drug"]
    assert order_call(client, SERVICE_OS, drafts, *record, selections=[]) == {"cards": []}


def test_order_select_without_selections_gives_no_card(client: TestClient) -> None:
    request = hook_request(
        twitch(),
        hook="order-select",
        draftOrders=bundle(draft("312615", "predniSONE 20 MG Oral Tablet")),
    )
    response = client.post(f"/cds-services/{SERVICE_OS}", json=request)
    assert response.status_code == 200 and response.json() == {"cards": []}


def test_order_select_selection_must_name_type_and_id(client: TestClient) -> None:
    drafts = [draft("312615", "predniSONE 20 MG Oral Tablet", order_id="pred")]
    for selection in ("pred", "ServiceRequest/pred", "MedicationRequest/other"):
        body = order_call(client, SERVICE_OS, drafts, twitch(), selections=[selection])
        assert body == {"cards": []}, selection


def test_order_sign_considers_all_draft_orders(client: TestClient) -> None:
    drafts = [
        draft("312615", "predniSONE 20 MG Oral Tablet", order_id="pred"),
        draft("860975", "Metformin 500 MG", order_id="metf"),
        draft("7646", "omeprazole 20 MG", order_id="ome"),
        draft("9000", "pyridostigmine 60 MG", order_id="pyr"),
    ]
    cards = order_cards(client, SERVICE_SIGN, drafts, twitch(), lab(MAGNESIUM, 1.4, "mg/dL"))
    assert set(cards) == {"corticosteroid", "electrolyte-depleting-drug", "cholinergic-drug"}
    assert cards["electrolyte-depleting-drug"]["indicator"] == "warning"
    assert cards["corticosteroid"]["indicator"] == "info"


def test_two_drafts_of_one_class_give_one_card_naming_both(client: TestClient) -> None:
    drafts = [
        draft("7646", "omeprazole 20 MG", order_id="a"),
        draft("4603", "furosemide 40 MG", order_id="b"),
    ]
    card = order_cards(client, SERVICE_SIGN, drafts, twitch())["electrolyte-depleting-drug"]
    assert "Omeprazole 20 mg" in card["detail"] and "Furosemide 40 mg" in card["detail"]


# --- robustness: what EHRs and the sandbox really send -----------------------------------------


@BOTH_HOOKS
def test_dstu2_medication_order_draft_does_not_crash(client: TestClient, service: str) -> None:
    order = {
        "resourceType": "MedicationOrder",
        "id": "mo-1",
        "status": "draft",
        "patient": {"reference": f"Patient/{PATIENT}"},
        "dateWritten": "2026-11-26",
        "medicationCodeableConcept": {
            "coding": [
                {"system": RXNORM, "code": "312615", "display": "predniSONE 20 MG Oral Tablet"}
            ]
        },
    }
    by_reference = {
        "resourceType": "MedicationOrder",
        "id": "mo-2",
        "status": "draft",
        "medicationReference": {"reference": "Medication/unknown"},
    }
    for drafts in ([order], [by_reference], [order, by_reference]):
        body = order_call(client, service, drafts, twitch())
        # The MedicationOrder (DSTU2) is read; the reference to an unknown Medication is not.
        expected = {"corticosteroid"} if order in drafts else set()
        assert set(cards_by_code(body)) == expected, drafts


@BOTH_HOOKS
@pytest.mark.parametrize(
    "draft_orders",
    [
        {"resourceType": "Bundle", "entry": ["not an entry", {"resource": None}, {}]},
        {
            "resourceType": "Bundle",
            "entry": [
                {
                    "resource": {
                        "resourceType": "MedicationRequest",
                        "id": "x",
                        "status": "draft",
                        "medicationCodeableConcept": "pred",
                    }
                }
            ],
        },
        {
            "resourceType": "Bundle",
            "entry": [
                {
                    "resource": {
                        "resourceType": "MedicationRequest",
                        "id": "x",
                        "medicationCodeableConcept": {"coding": "not a list", "text": 42},
                    }
                }
            ],
        },
        {"resourceType": "Bundle"},
        {"resourceType": "Bundle", "entry": {"resource": "not a list"}},
    ],
)
def test_malformed_draft_orders_are_answered_200(
    client: TestClient, service: str, draft_orders: dict[str, Any]
) -> None:
    request = hook_request(
        twitch(), hook=HOOKS[service], draftOrders=draft_orders, selections=["MedicationRequest/x"]
    )
    response = client.post(f"/cds-services/{service}", json=request)
    assert response.status_code == 200, response.text
    assert response.json() == {"cards": []}


def sandbox_request(name: str, *resources: dict[str, Any]) -> dict[str, Any]:
    """The captured sandbox request with every prefetch key filled, so no FHIR server is used.

    The fixture's own `patient` is kept; `fhirServer` stays as captured (nothing listens there):
    a complete prefetch must never make the service call it.
    """
    request = json.loads((SANDBOX / f"{name}.request.json").read_text())
    full = prefetch(*resources)
    full["patient"] = copy.deepcopy((request.get("prefetch") or {}).get("patient", full["patient"]))
    request["prefetch"] = full
    return request


@pytest.mark.parametrize(
    ("name", "service"),
    [
        ("order-select.no-drug-yet", SERVICE_OS),
        ("order-select.with-drug", SERVICE_OS),
        ("order-sign", SERVICE_SIGN),
    ],
)
def test_sandbox_order_requests_without_twitch_give_no_card(
    client: TestClient, name: str, service: str
) -> None:
    response = client.post(f"/cds-services/{service}", json=sandbox_request(name))
    assert response.status_code == 200, response.text
    assert response.json() == {"cards": []}


def test_sandbox_order_select_with_drug_and_twitch_names_prednisone(client: TestClient) -> None:
    response = client.post(
        f"/cds-services/{SERVICE_OS}", json=sandbox_request("order-select.with-drug", twitch())
    )
    assert response.status_code == 200, response.text
    cards = cards_by_code(response.json())
    assert list(cards) == ["corticosteroid"]
    card = cards["corticosteroid"]
    assert card["indicator"] == "info"
    assert "Prednisone 20 mg oral tablet" in card["summary"]
    assert "draft" in card["detail"]


@pytest.mark.parametrize(
    ("name", "service"), [("order-select.no-drug-yet", SERVICE_OS), ("order-sign", SERVICE_SIGN)]
)
def test_sandbox_orders_without_a_drug_give_no_card_even_with_twitch(
    client: TestClient, name: str, service: str
) -> None:
    request = sandbox_request(name, twitch(), lab(MAGNESIUM, 1.2, "mg/dL"))
    response = client.post(f"/cds-services/{service}", json=request)
    assert response.status_code == 200, response.text
    assert response.json() == {"cards": []}
