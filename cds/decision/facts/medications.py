"""Medications the patient is on, and drugs being ordered -> drug / depletes facts.

Only therapy counts: an active order (not a proposal, plan or a "do not perform"), or a
statement that the patient takes it. The drug is read as EHRs send it: a code, a
`medicationReference` to a Medication (contained, sent beside the draft orders, elsewhere in
the record, or fetched), or only the reference's `display`; product codes and brand names
through rules/ (a product code alone is named by its RxNorm name). A drug of a class that
counts only when systemic (corticosteroids) is left out when its route, dose form or product
name says it is not systemic (the route synonym table of rules/medications.yaml: eye, ear,
nose, inhaled, skin, rectal).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from cds.decision.facts.record import (
    Evidence,
    Facts,
    Resource,
    Resources,
    codings,
    joined,
    listed,
    number,
    parse_date,
    text,
)
from cds.decision.facts.vocabulary import Vocabulary
from cds.knowledge import Ingredient, Knowledge

ACTIVE_REQUEST = {"active"}
ACTIVE_STATEMENT = {"active", "intended"}  # not not-taken, completed, entered-in-error...
NOT_THERAPY_INTENT = {"proposal", "plan", "option"}
_MEDICATION_REFERENCE = re.compile(r"(?:^|/)Medication/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")


@dataclass(frozen=True)
class Drug:
    """What a request or statement says is given: the drug's concepts and its dose form."""

    concepts: tuple[Any, ...]
    form: Any
    label: str


def read_medications(
    vocabulary: Vocabulary,
    resources: Resources,
    facts: Facts,
    references: dict[str, Resource] | None = None,
) -> None:
    """One `drug` fact (and its `depletes` facts) per ingredient of the current therapy."""
    medications = medication_index(resources, references)
    seen: set[str] = set()
    for kind, statuses in (
        ("MedicationRequest", ACTIVE_REQUEST),
        ("MedicationStatement", ACTIVE_STATEMENT),
    ):
        for resource in resources.get(kind, []):
            if text(resource.get("status")) not in statuses or not is_therapy(resource):
                continue
            drug = drug_of(resource, medications)
            ingredients = _counted(vocabulary, resource, drug) - seen
            if not ingredients or not facts.readable(resource):
                continue
            seen |= ingredients
            for ingredient in sorted(ingredients):
                _add_drug(
                    vocabulary,
                    "drug",
                    "depletes",
                    ingredient,
                    _label_of(vocabulary, drug),
                    resource,
                    facts,
                )


def read_drafts(
    vocabulary: Vocabulary,
    orders: list[Resource],
    facts: Facts,
    resources: Resources | None = None,
    references: dict[str, Resource] | None = None,
) -> None:
    """Drugs being ordered. Read leniently: the sandbox's drafts are not valid FHIR."""
    medications = medication_index(resources or {}, references)
    for order in orders:
        if not is_therapy(order):
            continue
        drug = drug_of(order, medications)
        for ingredient in sorted(_counted(vocabulary, order, drug)):
            _add_drug(
                vocabulary,
                "draft",
                "draft-depletes",
                ingredient,
                _label_of(vocabulary, drug),
                order,
                facts,
            )


def is_therapy(resource: Resource) -> bool:
    """A request that orders the drug: not a proposal or plan, not "do not perform"."""
    return (
        resource.get("doNotPerform") is not True
        and text(resource.get("intent")) not in NOT_THERAPY_INTENT
    )


def medication_index(
    resources: Resources, references: dict[str, Resource] | None
) -> dict[str, Resource]:
    """Medication resources by every reference that may name them: `Medication/id`, and the
    full URLs (absolute or `urn:uuid:`) of the bundle entries they came in."""
    index = {
        f"Medication/{m['id']}": m
        for m in resources.get("Medication", [])
        if isinstance(m.get("id"), str)
    }
    index.update(
        {url: r for url, r in (references or {}).items() if r.get("resourceType") == "Medication"}
    )
    return index


def unresolved_medication_ids(
    resources: Resources,
    references: dict[str, Resource] | None,
    orders: Sequence[Resource] = (),
) -> set[str]:
    """Ids of Medications that therapy (and the draft `orders`) refers to but neither the
    record nor `references` contains."""
    index = medication_index(resources, references)
    referring = [
        *resources.get("MedicationRequest", []),
        *resources.get("MedicationStatement", []),
        *orders,
    ]
    missing: set[str] = set()
    for resource in referring:
        ref = _reference(resource)
        if ref and not ref.startswith("#") and _resolve(ref, resource, index) is None:
            match = _MEDICATION_REFERENCE.search(ref)
            if match:
                missing.add(match[1])
    return missing


def drug_of(resource: Resource, medications: dict[str, Resource]) -> Drug:
    """The drug's concepts and form, following a `medicationReference` where it resolves,
    else the reference's display."""
    if "medicationCodeableConcept" in resource:
        concept = resource["medicationCodeableConcept"]
        return Drug((concept,), None, _label(concept))
    ref = _reference(resource)
    target = _resolve(ref, resource, medications) if ref else None
    if target is not None:
        concepts = (
            target.get("code"),
            *(
                i.get("itemCodeableConcept")
                for i in listed(target.get("ingredient"))
                if isinstance(i, dict)
            ),
        )
        return Drug(concepts, target.get("form"), _label(target.get("code")))
    reference = resource.get("medicationReference")
    display = reference.get("display") if isinstance(reference, dict) else None
    concept = {"text": display} if isinstance(display, str) else None
    return Drug((concept,), None, display if isinstance(display, str) else "")


def _reference(resource: Resource) -> str | None:
    reference = resource.get("medicationReference")
    ref = reference.get("reference") if isinstance(reference, dict) else None
    return ref.strip() if isinstance(ref, str) and ref.strip() else None


def _resolve(ref: str, resource: Resource, medications: dict[str, Resource]) -> Resource | None:
    if ref.startswith("#"):
        return next(
            (
                c
                for c in listed(resource.get("contained"))
                if isinstance(c, dict)
                and f"#{c.get('id')}" == ref
                and c.get("resourceType") == "Medication"
            ),
            None,
        )
    if ref in medications:
        return medications[ref]
    match = _MEDICATION_REFERENCE.search(ref)
    return medications.get(f"Medication/{match[1]}") if match else None


def _counted(vocabulary: Vocabulary, resource: Resource, drug: Drug) -> set[str]:
    """The drug's ingredients, less those of systemic-only classes not given systemically."""
    ingredients: set[str] = set()
    for concept in drug.concepts:
        ingredients |= vocabulary.ingredients_of(concept)
    classes = vocabulary.knowledge.medications.ingredients
    if not any(classes[i].drug_class in vocabulary.systemic_only for i in ingredients):
        return ingredients
    dosages = listed(resource.get("dosageInstruction", resource.get("dosage")))
    routes = [d.get("route") for d in dosages if isinstance(d, dict)]
    # A product sent by code alone is named by the table: its name carries the dose form.
    names = [{"text": p.display} for c in drug.concepts for p in vocabulary.products_of(c)]
    if vocabulary.systemic(routes, drug.form, [*drug.concepts, *names]) is False:
        return {i for i in ingredients if classes[i].drug_class not in vocabulary.systemic_only}
    return ingredients


def _label_of(vocabulary: Vocabulary, drug: Drug) -> str:
    """How the card names the drug: as the record does, else by the RxNorm name of its code."""
    if drug.label:
        return drug.label
    products = (p for c in drug.concepts for p in vocabulary.products_of(c))
    return next((p.display for p in products), "")


def class_words(knowledge: Knowledge, spec: Ingredient) -> str:
    """The drug's class in words: 'systemic corticosteroid'; a class label with `{lowers}`
    names what this ingredient lowers ('drug that lowers magnesium'), not the whole class's."""
    lowered = [knowledge.labs.analytes[a].label.lower() for a in spec.lowers]
    return knowledge.medications.classes[spec.drug_class].label.format(lowers=joined(lowered))


def _add_drug(
    vocabulary: Vocabulary,
    kind: str,
    depletes_kind: str,
    ingredient: str,
    label: str,
    resource: Resource,
    facts: Facts,
) -> None:
    meds = vocabulary.knowledge.medications
    spec = meds.ingredients[ingredient]
    finding = meds.classes[spec.drug_class].finding
    status = text(resource.get("status")) or ("draft" if kind == "draft" else "")
    evidence = facts.cite(
        Evidence(
            "medication" if kind == "drug" else "order",
            label or ingredient,
            status=status or None,
            judged=f"contains {ingredient} ({class_words(vocabulary.knowledge, spec)})",
            lowers=tuple(spec.lowers),
            started=started(resource),
            dose=dose(resource),
        )
    )
    facts.add(
        {"kind": kind, "class": spec.drug_class, "finding": finding, "ingredient": ingredient},
        evidence,
    )
    for analyte in spec.lowers:
        facts.add(
            {
                "kind": depletes_kind,
                "analyte": analyte,
                "finding": finding,
                "ingredient": ingredient,
            },
            evidence,
        )


def _label(concept: Any) -> str:
    for coding in codings(concept):
        display = coding.get("display")
        if isinstance(display, str):
            return display
    text = concept.get("text") if isinstance(concept, dict) else None
    return text if isinstance(text, str) else ""


def started(resource: Resource) -> date | None:
    """When the drug was started: an order's `authoredOn`, a statement's effective start."""
    period = resource.get("effectivePeriod")
    for value in (
        resource.get("authoredOn"),
        period.get("start") if isinstance(period, dict) else None,
        resource.get("effectiveDateTime"),
        resource.get("dateAsserted"),
    ):
        day = parse_date(value)
        if day is not None:
            return day
    return None


_PERIOD_UNITS = {"h": "hour", "d": "day", "wk": "week", "mo": "month"}


def dose(resource: Resource) -> str | None:
    """The dose as prescribed: the first dosage's text, else its dose and frequency."""
    dosages = listed(resource.get("dosageInstruction", resource.get("dosage")))
    dosage = dosages[0] if dosages else None
    if not isinstance(dosage, dict):
        return None
    written = text(dosage.get("text"))
    if written and written.strip():
        return written.strip()
    amounts = listed(dosage.get("doseAndRate"))
    first = amounts[0] if amounts else None
    amount = first.get("doseQuantity") if isinstance(first, dict) else None
    value = number(amount.get("value")) if isinstance(amount, dict) else None
    if value is None or not isinstance(amount, dict):
        return None
    unit = text(amount.get("unit")) or text(amount.get("code")) or ""
    words = f"{value:g} {unit}".strip()
    timing = dosage.get("timing")
    repeat = timing.get("repeat") if isinstance(timing, dict) else None
    if isinstance(repeat, dict):
        frequency, period = number(repeat.get("frequency")), number(repeat.get("period"))
        unit_word = _PERIOD_UNITS.get(text(repeat.get("periodUnit")) or "")
        if frequency and period and unit_word:
            times = (
                "once" if frequency == 1 else "twice" if frequency == 2 else f"{frequency:g} times"
            )
            every = f"a {unit_word}" if period == 1 else f"every {period:g} {unit_word}s"
            words += f", {times} {every}"
    return words
