"""Focused tests of reading the record (cds/decision/facts/): currency of conditions and
neurology care (issue 9, the record-reading part), suspected diagnoses, and the small readers
the HTTP tests of tests/test_ehr_shapes.py rest on (instants, units, comparators, codes)."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from cds.decision.facts import FactBuilder, Facts, Vocabulary
from cds.decision.facts.labs import _holds, _interval
from cds.decision.facts.record import instant, observation_time
from cds.decision.prefetch import ResourcePool
from cds.knowledge import load_knowledge
from cds.units import convert, unit_key
from tests.conftest import SERVICE_PV
from tests.support.cards import cards_by_code
from tests.support.fhir import (
    LOINC,
    PATIENT,
    SNOMED,
    condition,
    days_ago,
    hook_request,
    lab,
    prefetch,
    today,
    twitch,
)

KNOWLEDGE = load_knowledge(Path(__file__).resolve().parents[1] / "rules")
BUILDER = FactBuilder(Vocabulary(KNOWLEDGE), lookback_days=365)
NEUROLOGY = {"coding": [{"system": SNOMED, "code": "394591006", "display": "Neurology"}]}


def facts_of(*resources: dict[str, Any], extra: list[dict[str, Any]] | None = None) -> Facts:
    pool = ResourcePool()
    pool.add_all([*prefetch(*resources).values(), *(extra or [])], PATIENT)
    return BUILDER.build(pool.by_type, today(), None, pool.references)


def problems(facts: Facts) -> dict[str, dict[str, Any]]:
    return {f["concept"]: f for f in facts.facts if f["kind"] == "problem"}


# --- issue 9: what is current ------------------------------------------------------------------


def test_a_condition_without_clinical_status_counts_only_within_the_lookback() -> None:
    old = condition("G12.2", clinical=None, onset=days_ago(5 * 365))
    recent = condition("M62.81", clinical=None, onset=days_ago(20))
    found = problems(facts_of(old, recent))
    assert "motor-neuron-disease" not in found and "weakness" in found


def test_recorded_date_counts_when_there_is_no_onset() -> None:
    entry = condition("M62.81", clinical=None)
    del entry["onsetDateTime"]
    assert "weakness" not in problems(facts_of(entry))
    assert "weakness" in problems(facts_of({**entry, "recordedDate": days_ago(3)}))


@pytest.mark.parametrize("verification", ["provisional", "differential", "unconfirmed"])
def test_a_provisional_diagnosis_is_marked_suspected(verification: str) -> None:
    found = problems(facts_of(condition("G12.2", verification=verification)))
    assert found["motor-neuron-disease"]["suspected"] is True


def test_every_problem_fact_says_whether_it_is_suspected() -> None:
    facts = facts_of(
        twitch(),
        condition("G12.2", verification="confirmed"),
        condition("M62.81"),
        lab("72166-2", None, None),
    )
    assert all(p["suspected"] is False for p in problems(facts).values())


def test_a_confirmed_record_outweighs_a_suspected_one_of_the_same_concept() -> None:
    found = problems(
        facts_of(
            condition("G12.2", verification="provisional", onset=days_ago(3)),
            condition("G12.20", onset=days_ago(300)),
        )
    )
    assert found["motor-neuron-disease"]["suspected"] is False


def encounter(status: str, start: str, end: str | None = None) -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "id": f"enc-{status}-{start}",
        "status": status,
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "serviceType": NEUROLOGY,
        "subject": {"reference": "Patient/p1"},
        "period": {"start": start, **({"end": end} if end else {})},
    }


def referral(status: str, authored: str) -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "id": f"sr-{status}",
        "status": status,
        "intent": "order",
        "code": {"text": "Referral"},
        "performerType": NEUROLOGY,
        "subject": {"reference": "Patient/p1"},
        "authoredOn": authored,
    }


@pytest.mark.parametrize(
    ("record", "under_care"),
    [
        (encounter("finished", days_ago(8 * 365), days_ago(8 * 365)), False),
        (encounter("finished", days_ago(60), days_ago(60)), True),
        (encounter("in-progress", days_ago(3 * 365)), True),
        (referral("active", days_ago(2 * 365)), True),
        (referral("on-hold", days_ago(500)), True),
        (referral("completed", days_ago(6 * 365)), False),
        (referral("completed", days_ago(90)), True),
    ],
    ids=[
        "visit-8-years-ago",
        "visit-2-months-ago",
        "encounter-in-progress",
        "open-referral",
        "referral-on-hold",
        "old-completed-referral",
        "recent-referral",
    ],
)
def test_neurology_care_counts_only_when_current(record: dict[str, Any], under_care: bool) -> None:
    facts = facts_of(
        extra=[{"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": record}]}]
    )
    assert ("neurology-care" in facts.kinds()) is under_care


def test_a_neurology_visit_years_ago_does_not_silence_the_referral(client: TestClient) -> None:
    request = hook_request(twitch(), condition("G12.2"))
    request["prefetch"]["encounters"] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": encounter("finished", days_ago(8 * 365), days_ago(8 * 365))}],
    }
    response = client.post(f"/cds-services/{SERVICE_PV}", json=request)
    card = cards_by_code(response.json())["red-flag-motor-neuron-disease"]
    assert card["indicator"] == "warning" and card.get("suggestions")


# --- the small readers ---------------------------------------------------------------------------


def test_instants_compare_across_zones_and_dates_alone_are_imprecise() -> None:
    late = instant("2026-03-04T23:30:00-05:00")
    early = instant("2026-03-05T02:00:00Z")
    assert late and early and late[0] > early[0] and late[1]
    midnight = instant("2026-03-04T00:00:00Z")
    assert midnight and instant("2026-03-04") == (midnight[0], False)
    one = observation_time({"effectiveDateTime": "2026-03-04"})
    other = observation_time({"effectiveDateTime": "2026-03-04T10:00:00Z"})
    assert one and other and not one.orderable(other)


def test_unit_spellings_fold_to_one_key() -> None:
    assert {unit_key(u) for u in ("µg/L", "μg/L", "mcg/L", "ug/l", " UG/L ")} == {"ug/l"}
    assert convert(17, ["mg/L"], {"mg/l": 0.1}) == (1.7, "mg/L")


@pytest.mark.parametrize(
    ("op", "limit", "value", "comparator", "expected"),
    [
        ("below", 180, 150, ">", None),
        ("below", 180, 200, ">", False),
        ("below", 180, 180, ">=", False),
        ("at_or_below", 20, 5, "<", True),
        ("at_or_below", 20, 20, "<=", True),
        ("at_or_below", 20, 25, "<", None),
        ("above", 4.68, 10, ">", True),
        ("above", 4.68, 4.68, "<", False),
        ("below", 3.5, 3.5, None, False),
        ("at_or_below", 6.5, 6.5, None, True),
    ],
)
def test_comparators_decide_only_where_every_allowed_value_agrees(
    op: str, limit: float, value: float, comparator: str | None, expected: bool | None
) -> None:
    assert _holds(op, limit, _interval(value, comparator)) is expected


def loinc_check_digit(number: str) -> str:
    """LOINC's mod-10 check digit (LOINC Users' Guide, "Calculating Mod 10 check digits")."""
    digits = number[::-1]
    odd = int(digits[0::2][::-1]) * 2
    even = digits[1::2][::-1]
    total = sum(int(d) for d in f"{even}{odd}")
    return str((10 - total % 10) % 10)


def test_every_loinc_code_in_rules_has_a_valid_check_digit() -> None:
    labs = KNOWLEDGE.labs
    codes = [
        c.code
        for group in (labs.analytes, labs.scored_observations, labs.coded_observations)
        for item in group.values()
        for c in item.codes
        if c.system == "loinc"
    ] + [c.code for c in labs.panels]
    codes += [
        c.code for vs in KNOWLEDGE.valuesets.values() for c in vs.codes if c.system == "loinc"
    ]
    # The assessment's LOINC questions.
    codes += [code for (system, code) in KNOWLEDGE.assessment.topics if system == LOINC]
    assert codes
    for code in codes:
        number, check = re.fullmatch(r"(\d+)-(\d)", code).groups()  # type: ignore[union-attr]
        assert loinc_check_digit(number) == check, code


def test_a_future_result_is_set_aside_as_future_dated() -> None:
    future = lab(
        "2823-3", 4.4, "mmol/L", when=(today() + timedelta(days=3)).isoformat() + "T09:00:00Z"
    )
    [entry] = facts_of(future).set_aside
    assert (entry.reason, entry.analyte) == ("future-dated", "potassium")
