"""Builders of FHIR R4 resources and CDS Hooks requests, as an EHR would send them.

Tests state the clinically relevant parts (code, value, unit, date, status); the builders add
the boilerplate so that each test reads as its scenario.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

from cds.decision.catalog import search_keys
from cds.settings import PROJECT_ROOT

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
PATIENT = "p1"
_counter = iter(range(1, 1_000_000))


def days_ago(days: int) -> str:
    return (datetime.now(UTC).date() - timedelta(days=days)).isoformat()


def _id(prefix: str) -> str:
    return f"{prefix}{next(_counter)}"


def patient(gender: str = "female", patient_id: str = PATIENT) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": patient_id,
        "gender": gender,
        "name": [{"family": "Testperson", "given": ["Ada"]}],
        "birthDate": "1970-01-01",
    }


def condition(
    code: str,
    system: str = ICD10,
    *,
    clinical: str | None = "active",
    verification: str | None = None,
    onset: str | None = None,
    patient_id: str = PATIENT,
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Condition",
        "id": _id("c"),
        "code": {"coding": [{"system": system, "code": code}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "onsetDateTime": onset or days_ago(30),
    }
    if clinical:
        resource["clinicalStatus"] = {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                    "code": clinical,
                }
            ]
        }
    if verification:
        resource["verificationStatus"] = {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                    "code": verification,
                }
            ]
        }
    return resource


def twitch(code: str = "R25.3", system: str = ICD10) -> dict[str, Any]:
    """The documented twitch complaint every chart card needs."""
    return condition(code, system)


def added_twitch(patient_id: str) -> dict[str, Any]:
    """The complaint a test adds to a recorded patient's own record (Synthea, the real-world
    corpus) so that cards appear: fasciculation (ICD-10-CM R25.3), active, a week old."""
    return {
        **condition("R25.3", onset=days_ago(7), patient_id=patient_id),
        "id": "twitch-added-by-test",
        "code": {"coding": [{"system": ICD10, "code": "R25.3", "display": "Fasciculation"}]},
    }


def lab(
    loinc: str,
    value: float | None,
    unit: str | None,
    *,
    when: str | None = None,
    status: str = "final",
    low: float | None = None,
    high: float | None = None,
    range_unit: str | None = None,
    patient_id: str = PATIENT,
) -> dict[str, Any]:
    quantity: dict[str, Any] = {}
    if value is not None:
        quantity["value"] = value
    if unit is not None:
        quantity.update(unit=unit, system="http://unitsofmeasure.org", code=unit)
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": _id("o"),
        "status": status,
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "laboratory",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": LOINC, "code": loinc}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": when or days_ago(10),
        "valueQuantity": quantity,
    }
    if low is not None or high is not None:
        ref: dict[str, Any] = {}
        for name, limit in (("low", low), ("high", high)):
            if limit is not None:
                ref[name] = {
                    "value": limit,
                    "unit": range_unit or unit,
                    "system": "http://unitsofmeasure.org",
                    "code": range_unit or unit,
                }
        resource["referenceRange"] = [ref]
    return resource


def coded_observation(
    loinc: str,
    answer: str | None = None,
    *,
    value: float | None = None,
    unit: str | None = None,
    when: str | None = None,
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": _id("o"),
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": loinc}]},
        "subject": {"reference": f"Patient/{PATIENT}"},
        "effectiveDateTime": when or days_ago(10),
    }
    if answer is not None:
        resource["valueCodeableConcept"] = {"coding": [{"system": SNOMED, "code": answer}]}
    if value is not None:
        resource["valueQuantity"] = {
            "value": value,
            **({"unit": unit, "code": unit, "system": "http://unitsofmeasure.org"} if unit else {}),
        }
    return resource


def medication(
    code: str | None = None,
    display: str | None = None,
    *,
    status: str = "active",
    text: str | None = None,
    kind: str = "MedicationRequest",
) -> dict[str, Any]:
    concept: dict[str, Any] = {}
    if code or display:
        coding: dict[str, Any] = {"system": RXNORM}
        if code:
            coding["code"] = code
        if display:
            coding["display"] = display
        concept["coding"] = [coding]
    if text:
        concept["text"] = text
    resource: dict[str, Any] = {
        "resourceType": kind,
        "id": _id("m"),
        "status": status,
        "subject": {"reference": f"Patient/{PATIENT}"},
        "medicationCodeableConcept": concept,
    }
    if kind == "MedicationRequest":
        resource["intent"] = "order"
    return resource


def family_history(code: str, system: str = SNOMED, relation: str = "MTH") -> dict[str, Any]:
    return {
        "resourceType": "FamilyMemberHistory",
        "id": _id("f"),
        "status": "completed",
        "patient": {"reference": f"Patient/{PATIENT}"},
        "relationship": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode", "code": relation}
            ]
        },
        "condition": [{"code": {"coding": [{"system": system, "code": code}]}}],
    }


def bundle(*resources: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "entry": [{"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": r} for r in resources],
    }


PREFETCH_KEYS = search_keys(PROJECT_ROOT / "hooks")


def prefetch(*resources: dict[str, Any], gender: str = "female") -> dict[str, Any]:
    """A complete prefetch under the service's keys: every key present, empty ones as Bundles."""
    grouped: dict[str, list[dict[str, Any]]] = {key: [] for key in PREFETCH_KEYS.values()}
    for resource in resources:
        grouped[PREFETCH_KEYS[resource["resourceType"]]].append(resource)
    return {"patient": patient(gender), **{k: bundle(*v) for k, v in grouped.items()}}


def hook_request(
    *resources: dict[str, Any], hook: str = "patient-view", gender: str = "female", **context: Any
) -> dict[str, Any]:
    return {
        "hookInstance": str(uuid.uuid4()),
        "hook": hook,
        "context": {"patientId": PATIENT, "userId": "Practitioner/example", **context},
        "prefetch": prefetch(*resources, gender=gender),
    }


def today() -> date:
    return datetime.now(UTC).date()


def transaction(*resources: dict[str, Any]) -> dict[str, Any]:
    """A batch that stores the resources under their own ids (PUT Type/id)."""
    return {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
            for r in resources
        ],
    }


def alive(record: dict[str, Any]) -> dict[str, Any]:
    """A Synthea Bundle with its Patient's death left out (deceased[x]).

    Synthea records some patients as deceased (Fletcher_Hyatt, 1996), and a deceased patient
    gets no cards (issue 16); tests that read such a record for its content read it as a
    living patient's, as bench/cases.py does.
    """
    for entry in record.get("entry", []):
        resource = entry.get("resource", {})
        if resource.get("resourceType") == "Patient":
            for key in [k for k in resource if k.startswith("deceased")]:
                del resource[key]
    return record
