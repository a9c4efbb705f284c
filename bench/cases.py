"""The request bodies of the benchmark: one patient-view call per record size.

- small: a twitch complaint, 10 lab results and 3 medications (what a new patient has);
- medium: ~100 resources, five years of labs and vitals, problems, drugs (a typical chart);
- large: the largest Synthea record of tests/fixtures (1,111 entries, ~1.5 MB), moved forward
  in time so that its last year is the past year and its labs fall in the lookback;
- x-large: ~5,000 resources, the large record followed by older copies of itself (a long
  history), cut at 5,000 resources.

Every case carries a twitch complaint, so the whole pipeline runs and cards come back. Dates
are relative to the day the body is built, so the cards are the same whichever day it runs
(`bench.expected` compares them with dates as day offsets). Each case has a fixed
hookInstance, so card uuids are the same from call to call.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

from bench import expected
from cds.decision.catalog import search_keys
from cds.settings import PROJECT_ROOT

ROOT = Path(__file__).resolve().parent.parent
SYNTHEA_LARGEST = (
    ROOT
    / "tests"
    / "fixtures"
    / "synthea"
    / "Fletcher_Hyatt_fe0562b5-f517-4951-8366-32fdab088930.json"
)
SERVICE = "fasciculation-pv"
PATIENT_ID = "bench-patient-1"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"
# The cards of the medium record (the load test's body), from the snapshot of bench/expected.py:
# low magnesium, a proton-pump inhibitor that lowers it, prednisone.
EXPECTED_CARDS = frozenset(
    card["source"]["topic"]["code"] for card in expected.load().get("medium", [])
)
# The service's prefetch keys (hooks/prefetch.yaml); other types go under a key of their own,
# which the service pools like any other.
PREFETCH_KEYS = search_keys(PROJECT_ROOT / "hooks")
XLARGE_RESOURCES = 5000
HISTORY_COPY_YEARS = 25
_DATE = re.compile(r"^(\d{4}-\d{2}-\d{2})")

# --- resources --------------------------------------------------------------------------------


def _day(days_ago: int) -> str:
    return (datetime.now(UTC).date() - timedelta(days=days_ago)).isoformat()


def _ref() -> dict[str, str]:
    return {"reference": f"Patient/{PATIENT_ID}"}


def _category(code: str) -> list[dict[str, Any]]:
    return [
        {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                    "code": code,
                }
            ]
        }
    ]


def _lab(
    n: int,
    loinc: str,
    display: str,
    value: float,
    unit: str,
    days_ago: int,
    low: float,
    high: float,
) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": f"lab-{n}",
        "status": "final",
        "category": _category("laboratory"),
        "code": {"coding": [{"system": LOINC, "code": loinc, "display": display}]},
        "subject": _ref(),
        "effectiveDateTime": f"{_day(days_ago)}T08:30:00Z",
        "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
        "referenceRange": [
            {"low": {"value": low, "unit": unit}, "high": {"value": high, "unit": unit}}
        ],
    }


def _vital(
    n: int, loinc: str, display: str, value: float, unit: str, days_ago: int
) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": f"vital-{n}",
        "status": "final",
        "category": _category("vital-signs"),
        "code": {"coding": [{"system": LOINC, "code": loinc, "display": display}]},
        "subject": _ref(),
        "effectiveDateTime": f"{_day(days_ago)}T09:00:00Z",
        "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
    }


def _condition(
    n: int,
    code: str,
    system: str,
    display: str,
    days_ago: int,
    clinical: str = "active",
    subject: dict[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "id": f"cond-{n}",
        "clinicalStatus": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                    "code": clinical,
                }
            ]
        },
        "verificationStatus": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                    "code": "confirmed",
                }
            ]
        },
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/condition-category",
                        "code": "problem-list-item",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": system, "code": code, "display": display}], "text": display},
        "subject": subject or _ref(),
        "onsetDateTime": _day(days_ago),
        "recordedDate": _day(days_ago),
    }


def _twitch(subject: dict[str, str] | None = None) -> dict[str, Any]:
    """The complaint every case carries (ICD-10-CM R25.3), documented 20 days ago."""
    return _condition(1, "R25.3", ICD10, "Fasciculation", 20, subject=subject)


def _medication(
    n: int, rxcui: str, display: str, status: str, days_ago: int, kind: str = "MedicationRequest"
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": kind,
        "id": f"med-{n}",
        "status": status,
        "medicationCodeableConcept": {
            "coding": [{"system": RXNORM, "code": rxcui, "display": display}],
            "text": display,
        },
        "subject": _ref(),
    }
    if kind == "MedicationRequest":
        resource.update(
            intent="order",
            authoredOn=_day(days_ago),
            requester={"reference": "Practitioner/bench-doc"},
            dosageInstruction=[
                {
                    "text": "as directed",
                    "timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}},
                }
            ],
        )
    else:
        resource["effectivePeriod"] = {"start": _day(days_ago)}
    return resource


# (LOINC, display, unit, low, high, values oldest..newest)
LAB_PANELS = [
    (
        "19123-9",
        "Magnesium [Mass/volume] in Serum or Plasma",
        "mg/dL",
        1.7,
        2.2,
        [2.0, 1.9, 1.8, 1.7, 1.6, 1.4],
    ),
    (
        "17861-6",
        "Calcium [Mass/volume] in Serum or Plasma",
        "mg/dL",
        8.6,
        10.3,
        [9.4, 9.2, 9.5, 9.1, 9.3, 9.2],
    ),
    (
        "2823-3",
        "Potassium [Moles/volume] in Serum or Plasma",
        "mmol/L",
        3.5,
        5.1,
        [4.2, 4.0, 4.4, 3.9, 4.1, 4.0],
    ),
    (
        "2951-2",
        "Sodium [Moles/volume] in Serum or Plasma",
        "mmol/L",
        136,
        145,
        [140, 139, 141, 138, 140, 139],
    ),
    (
        "62292-8",
        "25-Hydroxyvitamin D2+D3 [Mass/volume] in Serum or Plasma",
        "ng/mL",
        30,
        100,
        [32, 35, 31, 38, 34, 36],
    ),
    (
        "1751-7",
        "Albumin [Mass/volume] in Serum or Plasma",
        "g/dL",
        3.5,
        5.0,
        [4.2, 4.1, 4.3, 4.0, 4.2, 4.1],
    ),
    (
        "2132-9",
        "Cobalamin (Vitamin B12) [Mass/volume] in Serum or Plasma",
        "pg/mL",
        200,
        900,
        [450, 480, 430, 460, 470, 455],
    ),
    (
        "2157-6",
        "Creatine kinase [Enzymatic activity/volume] in Serum or Plasma",
        "U/L",
        30,
        200,
        [90, 110, 95, 100, 105, 98],
    ),
    (
        "3016-3",
        "Thyrotropin [Units/volume] in Serum or Plasma",
        "m[IU]/L",
        0.4,
        4.0,
        [1.8, 2.1, 1.9, 2.0, 2.2, 1.7],
    ),
    (
        "2345-7",
        "Glucose [Mass/volume] in Serum or Plasma",
        "mg/dL",
        70,
        99,
        [92, 88, 95, 90, 97, 93],
    ),
    (
        "2160-0",
        "Creatinine [Mass/volume] in Serum or Plasma",
        "mg/dL",
        0.6,
        1.2,
        [0.9, 0.8, 0.9, 1.0, 0.9, 0.9],
    ),
    (
        "718-7",
        "Hemoglobin [Mass/volume] in Blood",
        "g/dL",
        12,
        16,
        [13.5, 13.8, 13.2, 13.6, 13.9, 13.4],
    ),
]
LAB_AGES = [1800, 1460, 1095, 730, 365, 14]  # days ago: five years, the latest two weeks ago
MEDICATIONS = [
    (1, "7646", "omeprazole", "active", 800, "MedicationRequest"),
    (2, "312617", "predniSONE 5 MG Oral Tablet", "active", 30, "MedicationRequest"),
    (3, "29046", "lisinopril", "active", 1900, "MedicationRequest"),
    (4, "6809", "metformin", "stopped", 1400, "MedicationRequest"),
    (5, "745679", "albuterol 0.09 MG/ACTUAT inhalant", "active", 2900, "MedicationRequest"),
    (6, "308182", "amoxicillin 250 MG Oral Capsule", "completed", 400, "MedicationRequest"),
    (7, "161", "acetaminophen", "active", 100, "MedicationStatement"),
    (8, "5640", "ibuprofen", "completed", 600, "MedicationStatement"),
]


def medium_resources() -> list[dict[str, Any]]:
    """~100 resources of one patient: five years of labs and vitals, problems, drugs."""
    labs = []
    for loinc, display, unit, low, high, values in LAB_PANELS:
        for value, days_ago in zip(values, LAB_AGES, strict=True):
            labs.append(_lab(len(labs) + 1, loinc, display, value, unit, days_ago, low, high))
    vitals = [
        _vital(i, code, display, value, unit, days)
        for i, (code, display, value, unit, days) in enumerate(
            [
                ("8867-4", "Heart rate", 72, "/min", 14),
                ("8867-4", "Heart rate", 70, "/min", 365),
                ("8480-6", "Systolic blood pressure", 128, "mm[Hg]", 14),
                ("8462-4", "Diastolic blood pressure", 82, "mm[Hg]", 14),
                ("29463-7", "Body weight", 71.5, "kg", 14),
                ("8302-2", "Body height", 168, "cm", 14),
                ("39156-5", "Body mass index", 25.3, "kg/m2", 14),
                ("8310-5", "Body temperature", 36.8, "Cel", 14),
                ("9279-1", "Respiratory rate", 14, "/min", 14),
            ],
            start=1,
        )
    ]
    conditions = [
        _twitch(),
        _condition(2, "38341003", SNOMED, "Hypertensive disorder", 2000),
        _condition(3, "235595009", SNOMED, "Gastroesophageal reflux disease", 900),
        _condition(4, "195967001", SNOMED, "Asthma", 3000),
        _condition(5, "44054006", SNOMED, "Diabetes mellitus type 2", 1500, "resolved"),
        _condition(6, "40055000", SNOMED, "Chronic sinusitis", 2500, "resolved"),
        _condition(7, "10509002", SNOMED, "Acute bronchitis", 400, "resolved"),
        _condition(8, "162864005", SNOMED, "Body mass index 30+ - obesity", 1200, "resolved"),
    ]
    family = {
        "resourceType": "FamilyMemberHistory",
        "id": "fmh-1",
        "status": "completed",
        "patient": _ref(),
        "relationship": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode", "code": "FTH"}
            ]
        },
        "condition": [
            {
                "code": {
                    "coding": [
                        {"system": SNOMED, "code": "38341003", "display": "Hypertensive disorder"}
                    ]
                }
            }
        ],
    }
    return [*labs, *vitals, *conditions, *(_medication(*m) for m in MEDICATIONS), family]


def small_resources() -> list[dict[str, Any]]:
    """A twitch complaint, the latest result of 10 lab panels, 3 medications."""
    labs = [
        _lab(n, loinc, display, values[-1], unit, LAB_AGES[-1], low, high)
        for n, (loinc, display, unit, low, high, values) in enumerate(LAB_PANELS[:10], 1)
    ]
    return [_twitch(), *labs, *(_medication(*m) for m in MEDICATIONS[:3])]


def _shift_dates(value: Any, days: int) -> Any:
    """`value` with the date part of every date or dateTime string moved by `days`."""
    if isinstance(value, dict):
        return {key: _shift_dates(item, days) for key, item in value.items()}
    if isinstance(value, list):
        return [_shift_dates(item, days) for item in value]
    if isinstance(value, str) and (match := _DATE.match(value)):
        try:
            moved = date.fromisoformat(match[1]) + timedelta(days=days)
        except ValueError:
            return value
        return moved.isoformat() + value[10:]
    return value


@cache
def _synthea_largest() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(Patient, other resources) of the largest Synthea record, its last day a week ago.

    The record ends with the patient's death in 1997; the death is left out, so that the
    record is a living patient's and its last year of labs is within the lookback.
    """
    resources = [entry["resource"] for entry in json.loads(SYNTHEA_LARGEST.read_text())["entry"]]
    latest = max(date.fromisoformat(m[1]) for m in _dates(resources))
    days = (datetime.now(UTC).date() - timedelta(days=7) - latest).days
    moved = [_shift_dates(r, days) for r in resources]
    (patient,) = [r for r in moved if r["resourceType"] == "Patient"]
    patient.pop("deceasedDateTime", None)
    return patient, [r for r in moved if r["resourceType"] != "Patient"]


def _dates(value: Any) -> Iterator[re.Match[str]]:
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        for item in value:
            yield from _dates(item)
    elif isinstance(value, str) and (match := _DATE.match(value)):
        yield match


def _older_copies(resources: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """The record again and again, each copy with its own ids and 25 years older."""
    copy = 0
    while True:
        copy += 1
        for resource in _shift_dates(resources, -365 * HISTORY_COPY_YEARS * copy):
            yield {**resource, "id": f"{resource.get('id')}-h{copy}"}


def _synthea_case(limit: int | None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    patient, resources = _synthea_largest()
    twitch = _twitch({"reference": f"Patient/{patient['id']}"})
    if limit is not None:
        history = _older_copies(resources)
        resources = [*resources, *(next(history) for _ in range(limit - len(resources) - 1))]
    return patient, [twitch, *resources]


def _request(case: str, patient: dict[str, Any], resources: list[dict[str, Any]]) -> dict[str, Any]:
    """patient-view with the resources grouped by type under the service's prefetch keys."""
    grouped: dict[str, list[dict[str, Any]]] = {key: [] for key in PREFETCH_KEYS.values()}
    for resource in resources:
        kind = resource["resourceType"]
        grouped.setdefault(PREFETCH_KEYS.get(kind, kind), []).append(resource)
    return {
        "hookInstance": str(uuid.uuid5(uuid.NAMESPACE_URL, f"twitch-cds-bench/{case}")),
        "hook": "patient-view",
        "context": {"patientId": patient["id"], "userId": "Practitioner/bench-doc"},
        "prefetch": {"patient": patient, **{key: _bundle(found) for key, found in grouped.items()}},
    }


def _bundle(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "entry": [
            {"fullUrl": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, str(r['id']))}", "resource": r}
            for r in resources
        ],
    }


def _bench_patient() -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": PATIENT_ID,
        "gender": "female",
        "birthDate": "1981-03-14",
        "active": True,
    }


def medium_request() -> dict[str, Any]:
    """The medium case; also the body of the load test (tests/test_load_and_faults.py)."""
    return _request("medium", _bench_patient(), medium_resources())


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], dict[str, Any]]


CASES = (
    Case("small", lambda: _request("small", _bench_patient(), small_resources())),
    Case("medium", medium_request),
    Case("large", lambda: _request("large", *_synthea_case(None))),
    Case("x-large", lambda: _request("x-large", *_synthea_case(XLARGE_RESOURCES))),
)
CASE_NAMES = tuple(case.name for case in CASES)


def resource_count(request: dict[str, Any]) -> int:
    """Resources in a request's prefetch (Bundle entries and bare resources)."""
    return sum(
        len(value.get("entry", [])) if value.get("resourceType") == "Bundle" else 1
        for value in request["prefetch"].values()
    )


def body(request: dict[str, Any]) -> bytes:
    """A request as compact JSON bytes, as sent on the wire."""
    return json.dumps(request, separators=(",", ":")).encode()


def bench_body() -> bytes:
    """The medium case as sent on the wire (the load test's body)."""
    return body(medium_request())


def card_codes(response_json: dict[str, Any]) -> set[str]:
    return {card["source"]["topic"]["code"] for card in response_json["cards"]}
