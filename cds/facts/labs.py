"""Laboratory results -> one `lab` fact per analyte (its latest result) and `lab-missing` facts.

The latest valid, convertible result alone decides. Values are converted into each analyte's
canonical unit (cds/units.py); a result whose unit cannot be converted is not judged and the
card says so rather than "no result".
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from cds.facts.record import (
    FINAL_OBSERVATION,
    Evidence,
    Facts,
    Resource,
    Window,
    codings,
    fmt,
    number,
    observation_date,
    text,
    threshold_words,
    valid,
)
from cds.facts.vocabulary import Vocabulary
from cds.knowledge import SYSTEMS, Analyte, Knowledge
from cds.units import quantity_unit, to_canonical

DEFAULT = " (default limit)"
Candidate = tuple[date, Resource, str, bool]


@dataclass(frozen=True)
class LabResult:
    analyte: str
    when: date
    value: float
    reported: str
    ref_low: float | None
    ref_high: float | None
    code: str
    corrected: bool


def read_labs(vocabulary: Vocabulary, observations: list[Resource], window: Window,
              facts: Facts) -> None:
    """Adds a `lab` fact per judged analyte and a `lab-missing` fact per absent work-up test."""
    knowledge = vocabulary.knowledge
    candidates: dict[str, list[Candidate]] = {}
    for obs in observations:
        if text(obs.get("status")) not in FINAL_OBSERVATION:
            continue
        when = observation_date(obs)
        if when is None or when < window.since:
            continue
        for coding in codings(obs.get("code")):
            if coding.get("system") == SYSTEMS["loinc"] and text(coding.get("code")) in \
                    vocabulary.analytes:
                name, code = vocabulary.analytes[coding["code"]]
                candidates.setdefault(name, []).append((when, obs, code.code, code.corrected))
                break
    latest = {name: _latest(knowledge, name, found, facts)
              for name, found in candidates.items()}
    results = {name: r for name, r in latest.items() if r is not None}
    for name, result in results.items():
        analyte = knowledge.labs.analytes[name]
        if analyte.finding or analyte.high or analyte.low or analyte.flags:
            _add_lab(knowledge, result, analyte, results.get("albumin"), window.sex, facts)
    _missing(knowledge, set(results), set(candidates) - set(results), facts)


def judge(analyte: Analyte, value: float, result: LabResult, sex: str | None
          ) -> tuple[bool, bool, bool, str]:
    """Low / critical / high for one result, and the limit that decided, in words.

    The result's own reference range decides "low" and "high" where it is given in a
    convertible unit (labs differ); else the default threshold from rules/. Critical limits
    always come from rules/ (they are clinical action limits, not population ranges).
    """
    use_range = analyte.use_reference_range
    basis = ""
    low = high = False
    if use_range and result.ref_low is not None:
        low = value < result.ref_low
        basis = f"below the lab's lower limit {fmt(result.ref_low)} {analyte.unit}"
    elif analyte.low is not None:
        low = analyte.low.holds(value, sex)
        basis = threshold_words(analyte.low, sex, analyte.unit) + DEFAULT
    if use_range and result.ref_high is not None:
        high = value > result.ref_high
        if high:
            basis = f"above the lab's upper limit {fmt(result.ref_high)} {analyte.unit}"
    elif analyte.high is not None:
        high = analyte.high.holds(value, sex)
        if high:
            basis = threshold_words(analyte.high, sex, analyte.unit) + DEFAULT
    critical = analyte.critical is not None and analyte.critical.holds(value, sex)
    if critical and analyte.critical is not None:
        basis = "critical: " + threshold_words(analyte.critical, sex, analyte.unit) + DEFAULT
    return low or critical, critical, high, basis


def _latest(knowledge: Knowledge, name: str, found: list[Candidate],
            facts: Facts) -> LabResult | None:
    """The most recent valid, convertible result: it alone decides."""
    analyte = knowledge.labs.analytes[name]
    for when, obs, code, corrected in sorted(found, key=lambda c: c[0], reverse=True):
        if not valid(obs, facts):
            continue
        result = _lab_result(obs, name, analyte, code, corrected, when)
        if result is not None:
            return result
        facts.unjudged_results += 1
    return None


def _reference_limits(obs: Resource, analyte: Analyte) -> tuple[float | None, float | None]:
    """The result's own reference range, converted; None where absent or not convertible."""
    ranges = obs.get("referenceRange")
    if not isinstance(ranges, list) or not ranges or not isinstance(ranges[0], dict):
        return None, None
    limits: list[float | None] = []
    for end in ("low", "high"):
        quantity = ranges[0].get(end)
        value = number(quantity.get("value")) if isinstance(quantity, dict) else None
        limits.append(None if value is None else
                      to_canonical(value, quantity_unit(quantity), analyte.unit_factors))
    return limits[0], limits[1]


def _lab_result(obs: Resource, name: str, analyte: Analyte, code: str,
                corrected: bool, when: date) -> LabResult | None:
    quantity = obs.get("valueQuantity")
    if not isinstance(quantity, dict):
        return None
    measured = number(quantity.get("value"))
    unit = quantity_unit(quantity)
    value = None if measured is None else to_canonical(measured, unit, analyte.unit_factors)
    if value is None or measured is None:
        return None
    low, high = _reference_limits(obs, analyte)
    return LabResult(name, when, value, f"{fmt(measured)} {unit}", low, high, code, corrected)


def _add_lab(knowledge: Knowledge, result: LabResult, analyte: Analyte,
             albumin: LabResult | None, sex: str | None, facts: Facts) -> None:
    value, notes = result.value, []
    correction = analyte.albumin_correction
    window = knowledge.labs.analytes["albumin"].correction_window_days or 0
    if correction and not result.corrected and albumin is not None and \
            abs((albumin.when - result.when).days) <= window:
        value = result.value + correction.factor * (
            correction.reference_albumin - albumin.value)
        notes.append(f"corrected for albumin {fmt(albumin.value)} g/dL "
                     f"({albumin.when.isoformat()}) to {fmt(value)} {analyte.unit}")
    low, critical, high, basis = judge(analyte, value, result, sex)
    if low or critical or high:
        notes.append(basis)
    flags = {name: limit.holds(value, sex) for name, limit in analyte.flags.items()}
    notes += [f"{name}: {threshold_words(analyte.flags[name], sex, analyte.unit)}"
              for name, holds in flags.items() if holds]
    reported = result.reported
    canonical = f"{fmt(result.value)} {analyte.unit}"
    evidence = Evidence(
        "lab", analyte.label, result.when, value=value, unit=analyte.unit,
        reported=reported if reported.lower() != canonical.lower() else None,
        judged="; ".join(notes) or None, code=f"LOINC {result.code}", status="final",
        analyte=result.analyte)
    fact = {"kind": "lab", "analyte": result.analyte, "low": low, "critical": critical,
            "high": high, **flags}
    if analyte.finding:
        fact["finding"] = analyte.finding
    facts.add(fact, evidence)


def _missing(knowledge: Knowledge, present: set[str], unjudged: set[str], facts: Facts) -> None:
    """Work-up analytes with no usable result; `unjudged` ones had results that could not
    be judged (no or an unknown unit), which the card says rather than "no result"."""
    analytes = knowledge.labs.analytes
    covered = present | {analytes[p].workup_counts_for for p in present
                         if analytes[p].workup_counts_for}
    facts.missing_labs = {name for name in analytes if name not in covered}
    for name, analyte in analytes.items():
        if analyte.workup and name not in covered:
            note = "results without a convertible unit, not judged" if name in unjudged \
                else None
            facts.add({"kind": "lab-missing", "analyte": name},
                      Evidence("missing", analyte.label, analyte=name, judged=note))
