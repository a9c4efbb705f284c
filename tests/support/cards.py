"""Checks every card must pass (contract "Cards", CDS Hooks 2.0 card invariants)."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi.testclient import TestClient

from tests.support.fhir import LOINC, hook_request

TOPIC_SYSTEM = "https://github.com/twitch-cds/twitch-cds/CodeSystem/finding"
# The red-flag topics of the contract ("Cards").
RED_FLAGS = {
    "red-flag-motor-neuron-disease",
    "red-flag-neuropathy",
    "red-flag-radiculopathy",
    "red-flag-myopathy",
    "red-flag-hypothyroid-myopathy",
    "red-flag-neuromyotonia",
    "red-flag-muscular-dystrophy",
}


def assert_no_empty_values(value: Any, path: str = "$") -> None:
    """The spec forbids null, "", [] and {} anywhere (CDS Hooks §Use of JSON)."""
    assert value is not None and value != "" and value != [] and value != {}, path
    if isinstance(value, dict):
        for key, item in value.items():
            assert_no_empty_values(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            assert_no_empty_values(item, f"{path}[{index}]")


def assert_valid_card(card: dict[str, Any]) -> None:
    assert_no_empty_values(card)
    uuid.UUID(card["uuid"])
    assert len(card["summary"]) < 140
    assert card["indicator"] in ("info", "warning", "critical")
    assert card["source"]["label"] and card["source"]["url"].startswith("https://")
    assert card["source"]["topic"]["system"] == TOPIC_SYSTEM
    assert "**Evidence**" in card["detail"]
    for reason in card.get("overrideReasons", []):
        assert reason["display"]
    if "suggestions" in card:
        assert card["selectionBehavior"] in ("at-most-one", "any")
        for suggestion in card["suggestions"]:
            uuid.UUID(suggestion["uuid"])
            for action in suggestion["actions"]:
                assert action["type"] == "create" and action["description"]
                assert action["resource"]["resourceType"] == "ServiceRequest"
                assert action["resource"]["subject"]["reference"].startswith("Patient/")


def cards_by_code(response_json: dict[str, Any]) -> dict[str, dict[str, Any]]:
    cards = response_json["cards"]
    for card in cards:
        assert_valid_card(card)
    codes = [card["source"]["topic"]["code"] for card in cards]
    assert len(codes) == len(set(codes)), f"more than one card per finding: {codes}"
    return dict(zip(codes, cards, strict=True))


def patient_view_cards(
    client: TestClient, *resources: dict[str, Any], extra: dict[str, Any] | None = None
) -> dict[str, dict[str, Any]]:
    """The valid cards of a patient-view call on `resources` (plus `extra` prefetch keys)."""
    request = hook_request(*resources)
    request["prefetch"].update(extra or {})
    response = client.post("/cds-services/fasciculation-pv", json=request)
    assert response.status_code == 200, response.text
    return cards_by_code(response.json())


def lab_orders(card: dict[str, Any]) -> list[str]:
    """LOINC codes of the lab orders a card suggests."""
    return [
        coding["code"]
        for suggestion in card.get("suggestions", [])
        for action in suggestion["actions"]
        for coding in action["resource"]["code"]["coding"]
        if coding["system"] == LOINC
    ]
