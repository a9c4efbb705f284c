"""From the patient's QuestionnaireResponse to the transaction written to the EHR.

Scores are computed here from the Questionnaire's own FHIRPath `calculatedExpression` (with
fhirpathpy), not trusted from the browser and not re-implemented in Python. Every answered
question that carries a code becomes an Observation coded as that question, `derivedFrom` the
response, so that the rules read it at the next hook call as a patient-reported answer. Free
text stays in the response only. One transaction Bundle carries them all: the server stores
all or nothing.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import fhirpathpy
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.questionnaireresponse import QuestionnaireResponse

from cds.knowledge import FHIRPATH_R4, Assessment

Resource = dict[str, Any]
UNIT_EXTENSION = "http://hl7.org/fhir/StructureDefinition/questionnaire-unit"
SURVEY = {
    "coding": [
        {
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "survey",
            "display": "Survey",
        }
    ]
}


class InvalidResponse(ValueError):
    """The response is not a valid answer to this Questionnaire."""


def _answered(items: list[Resource]) -> Iterator[Resource]:
    for item in items:
        if item.get("answer"):
            yield item
        yield from _answered(item.get("item", []))


def _find(items: list[Resource], link_id: str) -> Resource | None:
    for item in items:
        if item.get("linkId") == link_id:
            return item
        found = _find(item.get("item", []), link_id)
        if found is not None:
            return found
    return None


def checked_response(assessment: Assessment, response: Resource, patient_id: str) -> Resource:
    """The response as written: valid R4, for this Questionnaire and patient, completed, with
    only the Questionnaire's questions answered, and its scores computed from the
    Questionnaire's expressions (an answer the browser sent for a score is replaced)."""
    if not isinstance(response, dict) or response.get("resourceType") != "QuestionnaireResponse":
        raise InvalidResponse("expected a QuestionnaireResponse")
    try:
        QuestionnaireResponse.model_validate(response)
    except ValueError as error:
        raise InvalidResponse(f"not a valid FHIR R4 QuestionnaireResponse: {error}") from None
    questions = {item["linkId"]: item for _, item in assessment.items}
    unknown = [
        i["linkId"] for i in _answered(response.get("item", [])) if i["linkId"] not in questions
    ]
    if unknown:
        raise InvalidResponse(f"answers to questions the assessment does not ask: {unknown}")
    written: Resource = {
        **copy.deepcopy(response),
        "questionnaire": assessment.questionnaire["url"],
        "status": "completed",
        "subject": {"reference": f"Patient/{patient_id}"},
        "author": {"reference": f"Patient/{patient_id}"},
        "source": {"reference": f"Patient/{patient_id}"},
        "authored": response.get("authored") or datetime.now(UTC).isoformat(timespec="seconds"),
    }
    topic_of = {item["linkId"]: topic for topic, item in assessment.items}
    for link_id, expression in assessment.calculated.items():
        result = fhirpathpy.evaluate(written, expression, {"resource": written}, FHIRPATH_R4)
        item = _find(written.get("item", []), link_id)
        if item is None and result:
            item = {"linkId": link_id}
            _group(written, topic_of[link_id]).setdefault("item", []).append(item)
        if item is None:
            continue
        if result:
            item["answer"] = [{"valueInteger": int(result[0])}]
        else:
            item.pop("answer", None)
    return written


def _group(response: Resource, topic: str) -> Resource:
    """The response's top-level group of `topic`, added when the response has none."""
    items: list[Resource] = response.setdefault("item", [])
    found = next((i for i in items if i.get("linkId") == topic), None)
    if found is None:
        found = {"linkId": topic}
        items.append(found)
    return found


def _value(question: Resource, answer: Resource) -> Resource | None:
    """The Observation value of one answer; None for free text (never derived)."""
    if "valueBoolean" in answer:
        return {"valueBoolean": answer["valueBoolean"]}
    if "valueCoding" in answer:
        return {"valueCodeableConcept": {"coding": [answer["valueCoding"]]}}
    number = answer.get("valueInteger", answer.get("valueDecimal"))
    if number is None:
        return None
    unit = next(
        (e["valueCoding"] for e in question.get("extension", []) if e["url"] == UNIT_EXTENSION),
        None,
    )
    if unit is None:
        return (
            {"valueInteger": int(number)}
            if "valueInteger" in answer
            else {"valueQuantity": {"value": number}}
        )
    return {
        "valueQuantity": {
            "value": number,
            "unit": unit.get("display", unit["code"]),
            "system": unit["system"],
            "code": unit["code"],
        }
    }


def derived_observations(
    assessment: Assessment, response: Resource, response_ref: str, patient_id: str
) -> list[Resource]:
    """One Observation per answered, coded question, `derivedFrom` the response."""
    questions = {item["linkId"]: item for _, item in assessment.items}
    observations = []
    for item in _answered(response.get("item", [])):
        question = questions[item["linkId"]]
        value = _value(question, item["answer"][0])
        if value is None or not question.get("code"):
            continue
        observations.append(
            {
                "resourceType": "Observation",
                "status": "final",
                "category": [SURVEY],
                "code": {"coding": question["code"], "text": question["text"]},
                "subject": {"reference": f"Patient/{patient_id}"},
                "effectiveDateTime": response["authored"],
                "performer": [{"reference": f"Patient/{patient_id}"}],
                "derivedFrom": [{"reference": response_ref, "type": "QuestionnaireResponse"}],
                **value,
            }
        )
    return observations


def transaction(assessment: Assessment, response: Resource, patient_id: str) -> Resource:
    """The one transaction Bundle written to the EHR: the response and its Observations."""
    written = checked_response(assessment, response, patient_id)
    response_ref = f"urn:uuid:{uuid.uuid4()}"
    observations = derived_observations(assessment, written, response_ref, patient_id)
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": response_ref,
                "resource": written,
                "request": {"method": "POST", "url": "QuestionnaireResponse"},
            },
            *(
                {
                    "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                    "resource": obs,
                    "request": {"method": "POST", "url": "Observation"},
                }
                for obs in observations
            ),
        ],
    }
    Bundle.model_validate(bundle)
    return bundle
