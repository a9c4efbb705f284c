"""Conditions, coded findings and family history -> problem / family facts and the complaint.

A concept counts once (the most recent record of it). Recorded answers with a value (smoking
status, AUDIT-C, sleep duration) are decided by the latest answer alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from typing import Any

from cds.decision.facts.record import (
    FINAL_OBSERVATION,
    Evidence,
    Facts,
    Resource,
    Resources,
    When,
    Window,
    codings,
    codings_of,
    days_ago,
    listed,
    number,
    observation_time,
    parse_date,
    patient_reported,
    status_code,
    text,
    threshold_words,
)
from cds.decision.facts.vocabulary import Vocabulary
from cds.units import convert, quantity_units, unit_factors

Candidate = tuple[Resource, "dict[str, Evidence]", bool, tuple[date, ...]]

ACTIVE_CONDITION = {"active", "recurrence", "relapse"}
EXCLUDED_VERIFICATION = {"refuted", "entered-in-error"}
SUSPECTED_VERIFICATION = {"provisional", "differential", "unconfirmed"}


@dataclass(frozen=True)
class Record:
    """One record of a concept: its evidence, whether it is only suspected, and its order."""

    evidence: Evidence
    suspected: bool
    order: tuple[date, ...]


def read_problems(
    vocabulary: Vocabulary, resources: Resources, window: Window, facts: Facts
) -> Evidence | None:
    """Adds one `problem` fact per concept; returns the twitch complaint's evidence.

    A concept is `suspected` only when every current record of it is (a provisional or
    differential diagnosis); a confirmed record then gives the evidence.
    """
    knowledge = vocabulary.knowledge
    seen: dict[str, list[Record]] = {}
    for resource, found, suspected, order in _candidates(vocabulary, resources, window):
        if not facts.readable(resource):
            continue
        for concept, evidence in found.items():
            seen.setdefault(concept, []).append(Record(evidence, suspected, order))
    chosen: dict[str, Record] = {}
    for concept, records in seen.items():
        best = max(records, key=lambda r: (not r.suspected, r.order))
        chosen[concept] = best
        fact: dict[str, Any] = {"kind": "problem", "concept": concept, "suspected": best.suspected}
        diagnosis_of = knowledge.valuesets[concept].diagnosis_of
        if diagnosis_of:
            fact["diagnosis_of"] = diagnosis_of
        facts.add(fact, best.evidence)
    complaint = chosen.get("twitch")
    return (
        None
        if complaint is None
        else Evidence(
            "complaint",
            knowledge.valuesets["twitch"].label,
            complaint.evidence.when,
            status=complaint.evidence.status,
            code=complaint.evidence.code,
        )
    )


def read_family(vocabulary: Vocabulary, histories: list[Resource], facts: Facts) -> None:
    """One `family` fact per concept recorded in a relative."""
    seen: set[str] = set()
    for history in histories:
        if history.get("status") == "entered-in-error":
            continue
        found = [
            c
            for cond in listed(history.get("condition"))
            if isinstance(cond, dict)
            for c in codings(cond.get("code"))
        ]
        concepts = {k: v for k, v in vocabulary.concepts_of(found).items() if k not in seen}
        if not concepts or not facts.readable(history):
            continue
        relation = codings(history.get("relationship"))
        who = relation[0].get("display") or relation[0].get("code") if relation else None
        for concept, match in concepts.items():
            seen.add(concept)
            facts.add(
                {"kind": "family", "concept": concept},
                Evidence(
                    "family",
                    f"{match.display} in the family",
                    parse_date(history.get("date")),
                    status=who,
                    code=match.code_label,
                ),
            )


def _candidates(
    vocabulary: Vocabulary, resources: Resources, window: Window
) -> Iterator[Candidate]:
    """Resources that record a concept: the evidence per concept, whether only suspected,
    and the order among records of the same concept."""
    for condition in resources.get("Condition", []):
        current = _current_condition(condition, window)
        if current is None:
            continue
        when, status, suspected = current
        found = _coded(vocabulary, codings(condition.get("code")), when, status)
        if found:
            yield condition, found, suspected, (when or date.min,)
    yield from _observed(vocabulary, resources.get("Observation", []), window)


def _current_condition(condition: Resource, window: Window) -> tuple[date | None, str, bool] | None:
    """Date, status as shown, and suspicion of a current Condition; None if not current.

    Current means clinically active. A Condition without a clinical status counts only when
    its onset or recorded date lies within the lookback: an old or undated entry without a
    status is history, not a current problem.
    """
    verification = status_code(condition.get("verificationStatus"))
    if verification in EXCLUDED_VERIFICATION:
        return None
    clinical = status_code(condition.get("clinicalStatus"))
    onset, recorded = (
        parse_date(condition.get("onsetDateTime")),
        parse_date(condition.get("recordedDate")),
    )
    if clinical is None:
        recent = any(d is not None and d >= window.since for d in (onset, recorded))
        if not recent or any(key.startswith("abatement") for key in condition):
            return None
        clinical = "active"
    elif clinical not in ACTIVE_CONDITION:
        return None
    suspected = verification in SUSPECTED_VERIFICATION
    return onset or recorded, f"{clinical}, {verification}" if suspected else clinical, suspected


def _observed(
    vocabulary: Vocabulary, observations: list[Resource], window: Window
) -> Iterator[Candidate]:
    """Final findings in the lookback. Per concept the latest observation decides: a newer
    "absent" answer outweighs an older "present" one, and an absent finding is no evidence."""
    latest: dict[str, tuple[When, Resource, Evidence | None]] = {}
    answers: dict[str, tuple[When, Resource]] = {}
    for obs in observations:
        if text(obs.get("status")) not in FINAL_OBSERVATION:
            continue
        spec = _recorded_answer_spec(vocabulary, obs)
        matches = vocabulary.concepts_of(
            codings(obs.get("code")) + codings(obs.get("valueCodeableConcept"))
        )
        when = observation_time(obs) if spec or matches else None  # read dates only if needed
        if when is None or when.day < window.since or window.in_future(when):
            continue
        if spec is not None and (spec not in answers or when.key() >= answers[spec][0].key()):
            answers[spec] = (when, obs)
        affirmed = _affirmed(vocabulary, obs)
        for concept, match in matches.items():
            if concept not in latest or when.key() >= latest[concept][0].key():
                evidence = Evidence(
                    "problem",
                    match.display,
                    when.day,
                    status=text(obs["status"]),
                    code=match.code_label,
                    provenance=_provenance(vocabulary, obs, when.day, window),
                )
                latest[concept] = (when, obs, evidence if affirmed else None)
    for concept, (when, obs, affirming) in latest.items():
        if affirming is not None:
            yield obs, {concept: affirming}, False, (when.day,)
    # A smoking status, AUDIT-C or sleep duration: the latest answer alone decides, so a
    # newer "former smoker" or a newer normal score outweighs an older positive one.
    for spec, (when, obs) in answers.items():
        found = _answer(vocabulary, spec, obs, when.day, window)
        if found:
            yield obs, found, False, (when.day,)


def _affirmed(vocabulary: Vocabulary, obs: Resource) -> bool:
    """Whether a finding observation says the finding is there.

    Only a value that affirms it, or no value at all (the code itself is the finding), does:
    `valueBoolean: false`, an "absent"/"no"/"negative" answer (rules/record.yaml), a negative
    interpretation, or a missing value with a `dataAbsentReason` do not.
    """
    interpretations = {text(c.get("code")) for c in codings_of(obs.get("interpretation"))}
    if interpretations & vocabulary.negative_interpretations:
        return False
    if "valueBoolean" in obs:
        return obs["valueBoolean"] is True
    if "valueCodeableConcept" in obs:
        return not vocabulary.is_absent_answer(obs["valueCodeableConcept"])
    if "valueString" in obs:
        value = obs["valueString"]
        return isinstance(value, str) and value.strip().lower() not in vocabulary.absent_words
    if any(key.startswith("value") for key in obs):
        return True
    return "dataAbsentReason" not in obs


def _coded(
    vocabulary: Vocabulary, found: list[dict[str, Any]], when: date | None, status: str
) -> dict[str, Evidence]:
    return {
        concept: Evidence("problem", match.display, when, status=status, code=match.code_label)
        for concept, match in vocabulary.concepts_of(found).items()
    }


def _recorded_answer_spec(vocabulary: Vocabulary, obs: Resource) -> str | None:
    """The coded or scored observation of rules/labs.yaml this Observation is, if any."""
    for coding in codings(obs.get("code")):
        code = text(coding.get("code"))
        if code in vocabulary.coded:
            return vocabulary.coded[code]
        if code in vocabulary.scored:
            return vocabulary.scored[code]
    return None


def _provenance(vocabulary: Vocabulary, obs: Resource, day: date, window: Window) -> str | None:
    """'patient-reported, 2 days ago' for the patient's own answer; None for the EHR's."""
    if not patient_reported(obs):
        return None
    who = vocabulary.knowledge.findings.assessment.patient_reported
    return f"{who}, {days_ago(day, window.today)}"


def _answer(
    vocabulary: Vocabulary, spec_name: str, obs: Resource, when: date, window: Window
) -> dict[str, Evidence]:
    """The concept a positive answer or score records, with the answer as evidence."""
    sex = window.sex
    provenance = _provenance(vocabulary, obs, when, window)
    labs = vocabulary.knowledge.labs
    if spec_name in labs.coded_observations:
        coded = labs.coded_observations[spec_name]
        answers = {text(c.get("code")) for c in codings(obs.get("valueCodeableConcept"))}
        positive = [v for v in coded.positive_values if v.code in answers]
        if not positive:
            return {}
        # The answer is the evidence; the question stays beside the code, so that a summary
        # reads "smokes tobacco daily", not "Tobacco smoking status: Smokes tobacco daily".
        return {
            coded.concept: Evidence(
                "problem",
                positive[0].display,
                when,
                status=text(obs["status"]),
                code=f"{vocabulary.label_of(coded.codes[0])} ({coded.label})",
                provenance=provenance,
            )
        }
    scored = labs.scored_observations[spec_name]
    value = _score(obs, scored.units)
    if value is None or not scored.positive.holds(value, sex):
        return {}
    return {
        scored.concept: Evidence(
            "problem",
            scored.label,
            when,
            value=value,
            unit=scored.unit or "points",
            status=text(obs["status"]),
            judged="positive: " + threshold_words(scored.positive, sex, scored.unit or "points"),
            code=vocabulary.label_of(scored.codes[0]),
            provenance=provenance,
        )
    }


def _score(obs: Resource, units: dict[str, float] | None) -> float | None:
    """A score or duration in the spec's unit; None when missing or not convertible."""
    quantity = obs.get("valueQuantity")
    value = (
        number(quantity.get("value"))
        if isinstance(quantity, dict)
        else number(obs.get("valueInteger"))
    )
    if value is None or not units or not isinstance(quantity, dict):
        return value
    converted = convert(value, quantity_units(quantity), unit_factors(units))
    return None if converted is None else converted[0]
