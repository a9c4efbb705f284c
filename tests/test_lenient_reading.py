"""Issue 16, read leniently and never say "no result" falsely: through HTTP, with the shapes
vendors send.

A resource is checked only in the elements the service reads (cds/decision/facts/elements.py):
a vendor, R5 or STU3 element, a blank string, a malformed extension, a number where a string
belongs lose nothing; a fault in a read element sets only that resource aside, and the work-up
card names it with its date and reason. Each test failed before the issue was resolved (a
critical potassium was dropped, the card said "no result").
"""

from __future__ import annotations

import copy
import re
import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cds.decision.facts.elements import READS, read
from tests.conftest import SERVICE_PV, SERVICE_SIGN
from tests.support.cards import cards_by_code
from tests.support.fhir import (
    condition,
    days_ago,
    family_history,
    hook_request,
    lab,
    medication,
    twitch,
)

POTASSIUM, MAGNESIUM, CALCIUM = "2823-3", "19123-9", "17861-6"
PREDNISONE = "312617"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"


def answer(client: TestClient, request: dict[str, Any]) -> dict[str, Any]:
    response = client.post(f"/cds-services/{SERVICE_PV}", json=request)
    assert response.status_code == 200, response.text
    return dict(response.json())


def cards(client: TestClient, *resources: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return cards_by_code(answer(client, hook_request(*resources)))


def plain(markdown: str) -> str:
    """Card markdown as it reads: record text is escaped there (cds/decision/cards.py md)."""
    return markdown.replace("\\", "")


def critical_potassium(**extra: Any) -> dict[str, Any]:
    return {**lab(POTASSIUM, 2.1, "mmol/L"), **extra}


def prednisone(kind: str = "MedicationRequest", **extra: Any) -> dict[str, Any]:
    return {**medication(PREDNISONE, "predniSONE 5 MG Oral Tablet", kind=kind), **extra}


# --- point 1: what nobody reads is never fatal -----------------------------------------------

VENDOR_SHAPES = {
    "a vendor element": {"epicResultFlag": {"abnormal": True}},
    # R5 Observation.triggeredBy and .instantiatesCanonical; STU3 Observation.comment.
    "an R5 element": {"triggeredBy": [{"observation": {"reference": "Observation/x"}}]},
    "an STU3 element": {"comment": "Haemolysed sample, repeat advised"},
    "a blank method.text": {"method": {"text": ""}},
    "a blank note": {"note": [{"text": ""}]},
    "an extension with two value[x]": {
        "extension": [
            {"url": "http://vendor.example/ext", "valueString": "x", "valueBoolean": True}
        ]
    },
    "a numeric performer display": {"performer": [{"display": 12345}]},
    "a meta.lastUpdated with spaces": {"meta": {"lastUpdated": "2026-03-01 10:15:00 +0100"}},
}


@pytest.mark.parametrize("shape", list(VENDOR_SHAPES.values()), ids=list(VENDOR_SHAPES))
def test_a_critical_potassium_survives_elements_nobody_reads(
    client: TestClient, shape: dict[str, Any]
) -> None:
    found = cards(client, twitch(), critical_potassium(**shape))
    assert found["hypokalemia"]["indicator"] == "critical"
    assert "Potassium" not in found.get("workup-incomplete", {}).get("detail", "")


def test_faults_inside_a_read_element_that_hapi_tolerates_are_tolerated(
    client: TestClient,
) -> None:
    """Inside the code and the value: a vendor key, a blank display, a malformed extension."""
    result = critical_potassium()
    result["code"]["coding"][0].update(display="", vendorRank=1)
    result["valueQuantity"]["extension"] = [{"valueString": "no url"}]
    assert cards(client, twitch(), result)["hypokalemia"]["indicator"] == "critical"


def test_a_cerner_status_with_a_trailing_space_is_read(client: TestClient) -> None:
    found = cards(
        client, twitch(), critical_potassium(status="final "), prednisone(status="active ")
    )
    assert found["hypokalemia"]["indicator"] == "critical"
    assert "corticosteroid" in found
    assert "active " not in found["corticosteroid"]["detail"]


def test_an_epic_medication_statement_with_stu3_dose_quantity_is_read(
    client: TestClient,
) -> None:
    statement = prednisone(
        "MedicationStatement",
        dosage=[
            {
                "text": "5 mg by mouth daily",
                "doseQuantity": {"value": 5, "unit": "mg"},  # STU3 Dosage.doseQuantity
                "route": {"coding": [{"system": "urn:oid:1.2.840.114350", "code": "15"}]},
            }
        ],
    )
    assert "corticosteroid" in cards(client, twitch(), statement)


def test_a_prednisone_order_with_a_vendor_element_is_read(client: TestClient) -> None:
    order = prednisone(epicOrderClass={"code": "Normal"}, courseOfTherapyType={"text": ""})
    assert "corticosteroid" in cards(client, twitch(), order)


@pytest.mark.parametrize(
    "dosage",
    [
        [{"doseAndRate": ["5 mg"]}],
        [{"doseAndRate": [{"doseQuantity": "5 mg"}], "timing": "daily"}],
        [{"text": 5}],
    ],
)
def test_a_garbled_dose_never_sets_the_drug_aside(
    client: TestClient, dosage: list[dict[str, Any]]
) -> None:
    """The dose is shown, not judged: the order still counts, in the chart and as a draft."""
    assert "corticosteroid" in cards(client, twitch(), prednisone(dosageInstruction=dosage))
    request = hook_request(twitch(), hook="order-sign")
    request["context"]["draftOrders"] = {
        "resourceType": "Bundle",
        "entry": [{"resource": prednisone(status="draft", dosageInstruction=dosage)}],
    }
    response = client.post(f"/cds-services/{SERVICE_SIGN}", json=request)
    assert response.status_code == 200, response.text
    assert "corticosteroid" in cards_by_code(response.json())


def single(concept: dict[str, Any]) -> dict[str, Any]:
    """The concept with its one coding written as an object, not a list of one."""
    [coding] = concept["coding"]
    return {**concept, "coding": coding}


def test_an_object_where_a_list_belongs_is_read_as_a_list_of_one(client: TestClient) -> None:
    """As HAPI reads it (a warning, not an error): a potassium low by its laboratory's own
    range, whose code, range and flag are objects, not lists, is still judged by that range."""
    result = lab(POTASSIUM, 3.6, "mmol/L")
    result["referenceRange"] = {"low": {"value": 3.8, "unit": "mmol/L"}}
    result["code"] = single(result["code"])
    result["interpretation"] = {"coding": {"system": INTERPRETATION, "code": "L"}}
    # code.coding, referenceRange, interpretation and its coding
    assert read(result).faults["object for a list"] == 4
    card = cards(client, twitch(), result)["hypokalemia"]
    assert card["indicator"] == "warning"
    assert "below the laboratory's lower limit of 3.8 mmol/L" in plain(card["detail"])


def test_an_empty_member_name_is_an_unknown_element(client: TestClient) -> None:
    """`{"": ...}` inside a read element (found by the fuzz test): counted, never a 500."""
    result = critical_potassium()
    result["code"][""] = 1
    assert read(result).faults["unknown element"] == 1
    assert cards(client, twitch(), result)["hypokalemia"]["indicator"] == "critical"


def test_a_draft_order_whose_coding_is_an_object_is_read(client: TestClient) -> None:
    order = prednisone(status="draft")
    order["medicationCodeableConcept"] = single(order["medicationCodeableConcept"])
    request = hook_request(twitch(), hook="order-sign")
    request["context"]["draftOrders"] = {"resourceType": "Bundle", "entry": {"resource": order}}
    response = client.post(f"/cds-services/{SERVICE_SIGN}", json=request)
    assert response.status_code == 200, response.text
    assert "corticosteroid" in cards_by_code(response.json())


def test_a_numeric_string_value_is_read_as_its_number(client: TestClient) -> None:
    """fhir.resources reads "2.1" as the decimal 2.1, and so does the service."""
    result = critical_potassium()
    result["valueQuantity"]["value"] = "2.1"
    assert cards(client, twitch(), result)["hypokalemia"]["indicator"] == "critical"


# --- point 1: a fault in a read element makes only that resource unreadable -------------------


def test_an_unreadable_result_is_named_with_its_date_and_what_could_not_be_read(
    client: TestClient,
) -> None:
    result = lab(POTASSIUM, 4.0, "mmol/L", when=days_ago(3))
    result["valueQuantity"]["value"] = "four"
    found = cards(client, twitch(), result, lab(MAGNESIUM, 1.4, "mg/dL"))
    detail = plain(found["workup-incomplete"]["detail"])
    assert f"**Potassium**: no usable result in the last 365 days (set aside: {days_ago(3)}: " in (
        detail
    )
    assert "unreadable (valueQuantity)" in detail
    assert "usable potassium" in found["workup-incomplete"]["summary"]
    assert found["hypomagnesemia"]["indicator"] == "warning"  # the rest still counts


def test_an_unreadable_result_flagged_critical_asks_to_check_the_laboratory_system(
    client: TestClient,
) -> None:
    result = critical_potassium()
    result["valueQuantity"]["value"] = "2,1"  # a decimal comma: not a FHIR decimal
    result["interpretation"] = [{"coding": [{"system": INTERPRETATION, "code": "LL"}]}]
    found = cards(client, twitch(), result)
    card = found["lab-result-unreadable"]
    assert card["indicator"] == "warning"
    assert "potassium" in card["summary"] and "laboratory system" in card["summary"]
    assert "unreadable (valueQuantity)" in plain(card["detail"])
    assert card["source"]["url"] == "https://clsi.org/shop/standards/gp47"
    assert "hypokalemia" not in found


def test_an_unreadable_result_whose_number_reads_as_critical_gets_the_warning(
    client: TestClient,
) -> None:
    result = critical_potassium()
    result["valueQuantity"]["value"] = "2,1"
    assert cards(client, twitch(), result)["lab-result-unreadable"]["indicator"] == "warning"


def test_an_unreadable_normal_looking_result_gets_no_warning(client: TestClient) -> None:
    result = lab(POTASSIUM, 4.0, "mmol/L")
    result["valueQuantity"]["value"] = "4,0"
    result["interpretation"] = [{"coding": [{"system": INTERPRETATION, "code": "N"}]}]
    assert "lab-result-unreadable" not in cards(client, twitch(), result)


CREATINE_KINASE, SODIUM = "2157-6", "2951-2"


def undated(result: dict[str, Any]) -> dict[str, Any]:
    del result["effectiveDateTime"]
    return result


def test_an_undated_raised_result_of_any_analyte_asks_to_check_the_laboratory_system(
    client: TestClient,
) -> None:
    """Not only work-up tests: an undated creatine kinase of 450 U/L (a real MII record) is
    named with its value and why it was not used, not dropped without a word."""
    found = cards(client, twitch(), undated(lab(CREATINE_KINASE, 450, "U/L")))
    card = found["lab-result-unreadable"]
    assert card["indicator"] == "warning"
    assert "creatine kinase" in card["summary"] and "laboratory system" in card["summary"]
    detail = plain(card["detail"])
    assert "**Creatine kinase** (final): 450 U/L, undated: no effective date or issued time" in (
        detail
    )
    assert "may be raised" in detail


@pytest.mark.parametrize(
    ("result", "looks"),
    [
        (lab(POTASSIUM, 3.1, "mmol/L", status="preliminary"), "may be low"),
        (lab(SODIUM, 126, "mmol/L", when="2999-01-01"), "may be low"),
        (undated(lab(SODIUM, 118, "mmol/L")), "may be critical"),
    ],
    ids=["preliminary low potassium", "future-dated low sodium", "undated critical sodium"],
)
def test_a_set_aside_result_that_looks_abnormal_gets_the_warning(
    client: TestClient, result: dict[str, Any], looks: str
) -> None:
    card = cards(client, twitch(), result)["lab-result-unreadable"]
    assert card["indicator"] == "warning"
    assert looks in plain(card["detail"])


def test_a_set_aside_result_is_no_warning_when_it_looks_normal_or_a_usable_one_exists(
    client: TestClient,
) -> None:
    assert "lab-result-unreadable" not in cards(
        client, twitch(), undated(lab(CREATINE_KINASE, 120, "U/L"))
    )
    assert "lab-result-unreadable" not in cards(
        client, twitch(), undated(lab(SODIUM, 126, "mmol/L")), lab(SODIUM, 140, "mmol/L")
    )


def test_a_card_wanting_a_test_names_its_set_aside_result_instead_of_not_measured(
    client: TestClient,
) -> None:
    """The muscular dystrophy card wants a creatine kinase: with only an undated one on
    record it says so, never "Not measured: no creatine kinase result"."""
    found = cards(
        client, twitch(), family_history("73297009"), undated(lab(CREATINE_KINASE, 150, "U/L"))
    )
    detail = plain(found["red-flag-muscular-dystrophy"]["detail"])
    assert "creatine kinase result" not in detail
    assert (
        "**No usable result:** creatine kinase (150 U/L, undated: no effective date or issued "
        "time); the order is suggested below." in detail
    )
    without = cards(client, twitch(), family_history("73297009"))
    assert "**Not measured:** no creatine kinase result" in plain(
        without["red-flag-muscular-dystrophy"]["detail"]
    )


def test_tolerated_faults_are_counted_by_kind() -> None:
    result = critical_potassium(
        vendorFlag=1,  # unknown element
        method={"text": ""},  # unread: not looked into
        language="",  # blank value
        extension=[{"url": "u", "valueString": "a", "valueCode": "b"}],  # malformed extension
    )
    result["code"]["text"] = 7  # a number where a string belongs
    reading = read(result)
    assert reading.unreadable is None
    assert dict(reading.faults) == {
        "unknown element": 1,
        "blank value": 1,
        "malformed extension": 1,
        "invalid primitive": 1,
    }


@pytest.mark.parametrize(
    ("change", "element"),
    [
        ({"status": ["final"]}, "status"),
        ({"code": "2823-3"}, "code"),
        ({"effectiveDateTime": "yesterday"}, "effectiveDateTime"),
        ({"referenceRange": [{"low": {"value": "low"}}]}, "referenceRange"),
    ],
)
def test_a_fault_in_a_read_element_names_that_element(change: dict[str, Any], element: str) -> None:
    assert read(critical_potassium(**change)).unreadable == element


# --- point 2: the real reason, never "no result" ----------------------------------------------


def test_a_preliminary_result_with_a_ucum_unit_is_named_preliminary(client: TestClient) -> None:
    found = cards(client, twitch(), lab(POTASSIUM, 3.9, "mmol/L", status="preliminary"))
    detail = plain(found["workup-incomplete"]["detail"])
    assert "**Potassium**: no usable result" in detail
    assert f"3.9 mmol/L, {days_ago(10)}: preliminary" in detail
    assert "convertible" not in detail


@pytest.mark.parametrize(
    ("result", "reason"),
    [
        (lab(MAGNESIUM, 1.4, "mg"), "unit not convertible (unit mg)"),
        (lab(MAGNESIUM, 0, "mg/dL"), "impossible value"),
        (lab(MAGNESIUM, 1.4, "mg/dL", when=days_ago(-30)), "future-dated"),
        (lab(MAGNESIUM, None, None), "no numeric value"),
    ],
    ids=["unit", "impossible", "future", "no-value"],
)
def test_each_reason_a_result_is_set_aside_is_stated(
    client: TestClient, result: dict[str, Any], reason: str
) -> None:
    detail = plain(cards(client, twitch(), result)["workup-incomplete"]["detail"])
    assert "**Magnesium**: no usable result" in detail
    assert reason in detail


@pytest.mark.parametrize(
    ("date", "reason"),
    [("12/01/2026", "unreadable (effective[x])"), (None, "no effective date or issued time")],
)
def test_a_result_without_a_readable_date_is_named_undated(
    client: TestClient, date: str | None, reason: str
) -> None:
    result = lab(MAGNESIUM, 1.4, "mg/dL")
    del result["effectiveDateTime"]
    if date:
        result["effectiveDateTime"] = date
    detail = plain(cards(client, twitch(), result)["workup-incomplete"]["detail"])
    assert "**Magnesium**: no usable result" in detail
    assert f"undated: {reason}" in detail


def test_set_aside_resources_are_counted_in_metrics(client: TestClient) -> None:
    result = lab(POTASSIUM, 4.0, "mmol/L")
    result["valueQuantity"]["value"] = "four"
    before = _unread_metric(client.get("/metrics").text, "Observation", "unreadable")
    answer(
        client, hook_request(twitch(), result, lab(MAGNESIUM, 1.4, "mg/dL", status="preliminary"))
    )
    text = client.get("/metrics").text
    assert _unread_metric(text, "Observation", "unreadable") == before + 1
    assert _unread_metric(text, "Observation", "preliminary") >= 1
    labels = re.findall(r"twitch_cds_resources_unread_total\{([^}]*)\}", text)
    assert labels and all(
        set(re.findall(r"(\w+)=", label)) == {"reason", "resource_type"} for label in labels
    )


def _unread_metric(text: str, kind: str, reason: str) -> float:
    pattern = (
        rf'^twitch_cds_resources_unread_total\{{(?=[^}}]*resource_type="{kind}")'
        rf'(?=[^}}]*reason="{reason}")[^}}]*\}} (\S+)$'
    )
    match = re.search(pattern, text, re.MULTILINE)
    return float(match[1]) if match else 0.0


# --- property: an element nobody reads never changes the cards ---------------------------------

RECORD = (
    twitch(),
    critical_potassium(),
    lab(MAGNESIUM, 1.4, "mg/dL"),
    lab(CALCIUM, 9.4, "mg/dL"),
    condition("M62.81"),
    prednisone(),
    prednisone("MedicationStatement"),
    family_history("73297009"),
)
# Top-level names read outside the element check: ids (pooling), meta (versions), and the
# prefixes the readers test for presence.
READ_ELSEWHERE = {"id", "meta", "resourceType"}
JSON = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(10**6), 10**6),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=8),
        st.sampled_from(["", " ", "final", "2.1", "LL"]),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


def _unread_names(kind: str) -> list[str]:
    """R4B elements of the type that its family does not read."""
    model, projection = READS[kind]
    names = {field.alias or name for name, field in model.model_fields.items()}
    return sorted(n for n in names - set(projection) - READ_ELSEWHERE if not n.startswith("_"))


VENDOR_NAME = st.from_regex(r"\A(vendor|epic|cerner|x)[A-Z][a-zA-Z]{0,10}\Z")


def _objects(value: Any, path: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    """The paths of every JSON object inside a resource (through lists, by index)."""
    found: list[tuple[str | int, ...]] = []
    if isinstance(value, dict):
        found.append(path)
        for key, item in value.items():
            found += _objects(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _objects(item, (*path, index))
    return found


@st.composite
def unread_addition(draw: st.DrawFn) -> tuple[int, list[str | int], Any]:
    """Where to add (a resource of RECORD, a path into it) and what: an R4B element the
    resource's family does not read, or a vendor element, at the top; or a vendor element in
    any object inside the resource (a coding, a quantity, a dosage, a reference...)."""
    index = draw(st.integers(0, len(RECORD) - 1))
    kind = RECORD[index]["resourceType"]
    if draw(st.booleans()):
        inside = draw(st.sampled_from(_objects(RECORD[index])[1:]))
        return index, [*inside, draw(VENDOR_NAME)], draw(JSON)
    return index, [draw(st.sampled_from(_unread_names(kind)) | VENDOR_NAME)], draw(JSON)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(addition=unread_addition())
def test_an_element_nobody_reads_never_changes_the_cards(
    client: TestClient, addition: tuple[int, list[str | int], Any]
) -> None:
    index, path, value = addition
    request = hook_request(*RECORD)
    request["hookInstance"] = str(uuid.UUID(int=1))
    expected = answer(client, request)
    changed = [copy.deepcopy(r) for r in RECORD]
    target = changed[index]
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    altered = hook_request(*changed)
    altered["hookInstance"] = request["hookInstance"]
    assert answer(client, altered) == expected


def test_the_property_record_has_cards_to_lose(client: TestClient) -> None:
    """The record above shows what an unread element could wrongly take away."""
    found = cards(client, *RECORD)
    assert found["hypokalemia"]["indicator"] == "critical"
    assert {"hypomagnesemia", "corticosteroid"} <= set(found)
