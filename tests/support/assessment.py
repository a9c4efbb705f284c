"""The patient's answers to the assessment, as the app receives them from LHC-Forms."""

from __future__ import annotations

from functools import cache
from typing import Any

from cds.assessment.answers import transaction
from cds.knowledge import Knowledge, load_knowledge
from cds.settings import PROJECT_ROOT
from tests.support.fhir import LOINC, PATIENT

ORDINAL = "http://hl7.org/fhir/StructureDefinition/ordinalValue"


@cache
def rules() -> Knowledge:
    return load_knowledge(PROJECT_ROOT / "rules")


def answer(code: str, system: str = LOINC) -> dict[str, Any]:
    return {"valueCoding": {"system": system, "code": code}}


def response(answers: dict[str, dict[str, Any]], authored: str | None = None) -> dict[str, Any]:
    """A QuestionnaireResponse answering `answers` (linkId -> answer value), items under their
    groups as the Questionnaire nests them."""
    knowledge = rules()
    groups: dict[str, list[dict[str, Any]]] = {}
    for topic, item in knowledge.assessment.items:
        if item["linkId"] in answers:
            groups.setdefault(topic, []).append(
                {"linkId": item["linkId"], "answer": [answers[item["linkId"]]]}
            )
    unknown = [k for k in answers if k not in {i["linkId"] for _, i in knowledge.assessment.items}]
    items = [{"linkId": topic, "item": found} for topic, found in groups.items()]
    items += [{"linkId": k, "answer": [answers[k]]} for k in unknown]
    resource: dict[str, Any] = {
        "resourceType": "QuestionnaireResponse",
        "status": "completed",
        "item": items,
    }
    if authored:
        resource["authored"] = authored
    return resource


def written_observations(
    knowledge: Knowledge, answers: dict[str, dict[str, Any]], authored: str
) -> list[dict[str, Any]]:
    """The Observations the app writes for these answers, with ids, as the FHIR server then
    returns them (derivedFrom the stored response)."""
    bundle = transaction(knowledge.assessment, response(answers, authored), PATIENT)
    response_id = "qr1"
    observations = []
    for index, entry in enumerate(bundle["entry"][1:], start=1):
        obs = dict(entry["resource"])
        obs["id"] = f"assessment-obs-{index}"
        obs["derivedFrom"] = [{"reference": f"QuestionnaireResponse/{response_id}"}]
        observations.append(obs)
    return observations
