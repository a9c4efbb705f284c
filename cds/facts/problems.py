"""Conditions, coded findings and family history -> problem / family facts and the complaint.

A concept counts once (the most recent record of it). Recorded answers with a value (smoking
status, AUDIT-C, sleep duration) are decided by the latest answer alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from typing import Any

from cds.facts.record import (
    FINAL_OBSERVATION,
    Evidence,
    Facts,
    Resource,
    Resources,
    Window,
    code_label,
    codings,
    number,
    observation_date,
    parse_date,
    status_code,
    text,
    threshold_words,
    valid,
)
from cds.facts.vocabulary import Vocabulary
from cds.units import quantity_unit, to_canonical

ACTIVE_CONDITION = {"active", "recurrence", "relapse"}
EXCLUDED_VERIFICATION = {"refuted", "entered-in-error"}
ProblemCandidate = tuple[Resource, "dict[str, Evidence]"]


def read_problems(vocabulary: Vocabulary, resources: Resources, window: Window,
                  facts: Facts) -> Evidence | None:
    """Adds one `problem` fact per concept; returns the twitch complaint's evidence."""
    knowledge = vocabulary.knowledge
    seen: dict[str, Evidence] = {}
    for resource, found in _candidates(vocabulary, resources, window):
        if not valid(resource, facts):
            continue
        for concept, evidence in found.items():
            previous = seen.get(concept)
            if previous is None or (evidence.when or date.min) > (previous.when or date.min):
                seen[concept] = evidence
    for concept, evidence in seen.items():
        fact = {"kind": "problem", "concept": concept}
        diagnosis_of = knowledge.valuesets[concept].diagnosis_of
        if diagnosis_of:
            fact["diagnosis_of"] = diagnosis_of
        facts.add(fact, evidence)
    complaint = seen.get("twitch")
    return None if complaint is None else Evidence(
        "complaint", knowledge.valuesets["twitch"].label, complaint.when,
        status=complaint.status, code=complaint.code)


def read_family(vocabulary: Vocabulary, histories: list[Resource], facts: Facts) -> None:
    """One `family` fact per concept recorded in a relative."""
    seen: set[str] = set()
    for history in histories:
        if history.get("status") == "entered-in-error":
            continue
        conditions = history.get("condition")
        found = [c for cond in conditions if isinstance(cond, dict)
                 for c in codings(cond.get("code"))] if isinstance(conditions, list) else []
        concepts = {k: v for k, v in vocabulary.concepts_of(found).items() if k not in seen}
        if not concepts or not valid(history, facts):
            continue
        relation = codings(history.get("relationship"))
        who = relation[0].get("display") or relation[0].get("code") if relation else None
        for concept, match in concepts.items():
            seen.add(concept)
            facts.add({"kind": "family", "concept": concept},
                      Evidence("family", f"{match.display} in the family",
                               parse_date(history.get("date")), status=who,
                               code=code_label(match.coding)))


def _candidates(vocabulary: Vocabulary, resources: Resources,
                window: Window) -> Iterator[ProblemCandidate]:
    """Resources that record a concept, each with the evidence it gives per concept."""
    for condition in resources.get("Condition", []):
        if status_code(condition.get("verificationStatus")) in EXCLUDED_VERIFICATION:
            continue
        clinical = status_code(condition.get("clinicalStatus"))
        if clinical not in ACTIVE_CONDITION and not (
                clinical is None and "abatementDateTime" not in condition):
            continue
        when = parse_date(condition.get("onsetDateTime")) or parse_date(
            condition.get("recordedDate"))
        found = _coded(vocabulary, codings(condition.get("code")), when, clinical or "active")
        if found:
            yield condition, found
    latest: dict[str, tuple[date, Resource]] = {}
    for obs in resources.get("Observation", []):
        if text(obs.get("status")) not in FINAL_OBSERVATION:
            continue
        when = observation_date(obs)
        if when is None or when < window.since:
            continue
        found = _coded(vocabulary, codings(obs.get("code")) + codings(
            obs.get("valueCodeableConcept")), when, obs["status"])
        if found:
            yield obs, found
        spec = _recorded_answer_spec(vocabulary, obs)
        if spec is not None and (spec not in latest or when >= latest[spec][0]):
            latest[spec] = (when, obs)
    # A smoking status, AUDIT-C or sleep duration: the latest answer alone decides, so a
    # newer "former smoker" or a newer normal score outweighs an older positive one.
    for spec, (when, obs) in latest.items():
        found = _answer(vocabulary, spec, obs, when, window.sex)
        if found:
            yield obs, found


def _coded(vocabulary: Vocabulary, found: list[dict[str, Any]], when: date | None,
           status: str) -> dict[str, Evidence]:
    return {concept: Evidence("problem", match.display, when, status=status,
                              code=code_label(match.coding))
            for concept, match in vocabulary.concepts_of(found).items()}


def _recorded_answer_spec(vocabulary: Vocabulary, obs: Resource) -> str | None:
    """The coded or scored observation of rules/labs.yaml this Observation is, if any."""
    for coding in codings(obs.get("code")):
        code = text(coding.get("code"))
        if code in vocabulary.coded:
            return vocabulary.coded[code]
        if code in vocabulary.scored:
            return vocabulary.scored[code]
    return None


def _answer(vocabulary: Vocabulary, spec_name: str, obs: Resource, when: date,
            sex: str | None) -> dict[str, Evidence]:
    """The concept a positive answer or score records, with the answer as evidence."""
    labs = vocabulary.knowledge.labs
    if spec_name in labs.coded_observations:
        coded = labs.coded_observations[spec_name]
        answers = {text(c.get("code")) for c in codings(obs.get("valueCodeableConcept"))}
        positive = [v for v in coded.positive_values if v.code in answers]
        if not positive:
            return {}
        # The answer is the evidence; the question stays beside the code, so that a summary
        # reads "smokes tobacco daily", not "Tobacco smoking status: Smokes tobacco daily".
        return {coded.concept: Evidence(
            "problem", positive[0].display, when, status=obs["status"],
            code=f"LOINC {coded.codes[0].code} ({coded.label})")}
    scored = labs.scored_observations[spec_name]
    value = _score(obs, scored.units)
    if value is None or not scored.positive.holds(value, sex):
        return {}
    return {scored.concept: Evidence(
        "problem", scored.label, when, value=value, unit=scored.unit or "points",
        status=obs["status"], judged="positive: " + threshold_words(
            scored.positive, sex, scored.unit or "points"),
        code=f"LOINC {scored.codes[0].code}")}


def _score(obs: Resource, units: dict[str, float] | None) -> float | None:
    """A score or duration in the spec's unit; None when missing or not convertible."""
    quantity = obs.get("valueQuantity")
    value = number(quantity.get("value")) if isinstance(quantity, dict) else number(
        obs.get("valueInteger"))
    if value is None or not units or not isinstance(quantity, dict):
        return value
    return to_canonical(value, quantity_unit(quantity), {u.lower(): f for u, f in units.items()})
