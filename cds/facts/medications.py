"""Medications the patient is on, and drugs being ordered -> drug / depletes facts."""

from __future__ import annotations

from typing import Any

from cds.facts.record import Evidence, Facts, Resource, Resources, codings, text, valid
from cds.facts.vocabulary import Vocabulary

ACTIVE_REQUEST = {"active"}
ACTIVE_STATEMENT = {"active", "intended"}


def read_medications(vocabulary: Vocabulary, resources: Resources, facts: Facts) -> None:
    """One `drug` fact (and its `depletes` facts) per ingredient of the active medications."""
    medications = {m["id"]: m for m in resources.get("Medication", [])
                   if isinstance(m.get("id"), str)}
    seen: set[str] = set()
    for kind, statuses in (("MedicationRequest", ACTIVE_REQUEST),
                           ("MedicationStatement", ACTIVE_STATEMENT)):
        for resource in resources.get(kind, []):
            if text(resource.get("status")) not in statuses:
                continue
            concept = _medication_concept(resource, medications)
            ingredients = vocabulary.ingredients_of(concept) - seen
            if not ingredients or not valid(resource, facts):
                continue
            seen |= ingredients
            label = _medication_label(concept)
            for ingredient in sorted(ingredients):
                _add_drug(vocabulary, "drug", "depletes", ingredient, label,
                          resource["status"], facts)


def read_drafts(vocabulary: Vocabulary, orders: list[Resource], facts: Facts) -> None:
    """Drugs being ordered. Read leniently: the sandbox's drafts are not valid FHIR."""
    for order in orders:
        concept = order.get("medicationCodeableConcept")
        for ingredient in sorted(vocabulary.ingredients_of(concept)):
            _add_drug(vocabulary, "draft", "draft-depletes", ingredient,
                      _medication_label(concept), str(order.get("status", "draft")), facts)


def _medication_concept(resource: Resource, medications: dict[Any, Resource]) -> Any:
    """The drug's CodeableConcept, following a `medicationReference` when it resolves."""
    if "medicationCodeableConcept" in resource:
        return resource["medicationCodeableConcept"]
    reference = resource.get("medicationReference")
    if isinstance(reference, dict) and isinstance(reference.get("reference"), str):
        ref = reference["reference"]
        inline = resource.get("contained")
        contained = {f"#{c.get('id')}": c for c in inline
                     if isinstance(c, dict)} if isinstance(inline, list) else {}
        target = contained.get(ref) or medications.get(ref.rsplit("/", 1)[-1])
        if target:
            return target.get("code")
    return None


def _add_drug(vocabulary: Vocabulary, kind: str, depletes_kind: str, ingredient: str,
              label: str, status: str, facts: Facts) -> None:
    meds = vocabulary.knowledge.medications
    spec = meds.ingredients[ingredient]
    finding = meds.classes[spec.drug_class].finding
    evidence = facts.cite(Evidence(
        "medication" if kind == "drug" else "order", label or ingredient, status=status,
        judged=f"contains {ingredient} ({meds.classes[spec.drug_class].label})",
        lowers=tuple(spec.lowers)))
    facts.add({"kind": kind, "class": spec.drug_class, "finding": finding,
               "ingredient": ingredient}, evidence)
    for analyte in spec.lowers:
        facts.add({"kind": depletes_kind, "analyte": analyte, "finding": finding,
                   "ingredient": ingredient}, evidence)


def _medication_label(concept: Any) -> str:
    for coding in codings(concept):
        if isinstance(coding.get("display"), str):
            return coding["display"]
    if isinstance(concept, dict) and isinstance(concept.get("text"), str):
        return concept["text"]
    return ""
