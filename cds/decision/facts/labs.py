"""Laboratory results -> one `lab` fact per analyte (its latest result) and `lab-missing` facts.

Results are read as laboratories send them: single Observations or `component`s of a panel,
a number in `valueQuantity` or in `valueString` ("2.4", "<5"), units in any spelling, several
reference ranges, the laboratory's own flag. Time alone decides which result is the latest
(full instants, `issued` breaking ties, never the order in the bundle). Where results of one
day cannot be ordered, the most severe decides and the others are stated beside it, so that a
critical value is never hidden. A preliminary result counts only when it is critical
(critical values are phoned before finalisation). Impossible values and results dated in the
future are invalid: counted, never judged.

A result that exists but is not used - unreadable, preliminary, without a convertible unit or a
value, future-dated, impossible - is set aside with its date and reason, and a work-up test
whose only results were set aside is named with them, never called absent. A set-aside result
of an analyte with no usable result, whose laboratory flag or value (as far as it can be read)
is beyond the analyte's limits, is a `lab-set-aside` fact: whatever the analyte, the clinician
is asked to look in the laboratory system rather than trust the absence of a card.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from cds.decision.facts.record import (
    FINAL_OBSERVATION,
    Evidence,
    Facts,
    Resource,
    SetAside,
    UnreadReason,
    When,
    Window,
    codings,
    codings_of,
    fmt,
    listed,
    number,
    observation_date,
    observation_time,
    text,
    threshold_words,
)
from cds.decision.facts.vocabulary import Vocabulary
from cds.knowledge import Analyte, Code, Knowledge, Threshold
from cds.units import convert, quantity_units, unit_key

# The limit from rules/ is used where the laboratory sent no reference range of its own.
USUAL_LIMIT = ", the usual adult limit"
PRELIMINARY = "preliminary"
# How many other same-day results are named beside the one that decides.
MAX_STATED_BESIDE = 3
_NUMBER = re.compile(r"^\s*(<=|>=|<|>|≤|≥)?\s*([-+]?\d+(?:\.\d+)?|[-+]?\.\d+)\s*(\S.*)?$")
_COMPARATORS = {"≤": "<=", "≥": ">="}
_AGE_YEARS = {"a": 1.0, "mo": 1 / 12, "wk": 7 / 365.25, "d": 1 / 365.25}
# The values a result may have: (low, low included, high, high included).
Interval = tuple[float, bool, float, bool]
# The time of a result that has none that can be read: only its value is looked at.
_NO_TIME = When(date.min, datetime.min.replace(tzinfo=UTC), False)
# What a set-aside result may be, most severe first, as the card names it.
_LOOKS = ("critical", "low", "raised")
# Suspects: per analyte, set-aside results that look beyond its limits, with their severity
# and day (the most severe, then the latest, is shown).
Suspects = dict[str, list[tuple[int, date, Evidence]]]


@dataclass(frozen=True)
class Reading:
    """One candidate result: the Observation, the part that holds the value (the Observation
    itself or one of its components), and the rules' code it was recognised by."""

    when: When
    obs: Resource
    part: Resource
    code: Code
    rank: int


@dataclass(frozen=True)
class LabResult:
    analyte: str
    when: When
    value: float | None
    comparator: str | None
    measured: tuple[float, str] | None
    reported: str | None
    ref_low: float | None
    ref_high: float | None
    code: str
    corrected: bool
    status: str
    flag: str | None

    @property
    def stated_unit(self) -> str | None:
        """The unit the laboratory wrote beside the value (None when it sent none and the
        unit was taken from the reference range or the analyte)."""
        if self.measured is None or self.reported is None:
            return None
        unit = self.measured[1]
        return unit if self.reported.endswith(f" {unit}") else None


@dataclass(frozen=True)
class Judgement:
    low: bool
    critical: bool
    high: bool
    basis: str = ""
    notes: tuple[str, ...] = ()

    @property
    def severity(self) -> int:
        return 2 if self.critical else 1 if self.low or self.high else 0


@dataclass
class Decided:
    """The result that decides for an analyte, its judgement, and what is stated beside it."""

    result: LabResult
    judgement: Judgement
    beside: list[LabResult] = field(default_factory=list)


def read_labs(
    vocabulary: Vocabulary, observations: list[Resource], window: Window, facts: Facts
) -> None:
    """Adds a `lab` fact per judged analyte, a `lab-missing` fact per absent work-up test and
    a `lab-set-aside` fact per analyte whose only results were set aside and look abnormal."""
    knowledge = vocabulary.knowledge
    candidates: dict[str, list[Reading]] = {}
    suspects: Suspects = {}
    for obs in observations:
        for name, reading in _readings(vocabulary, obs, window, facts, suspects):
            candidates.setdefault(name, []).append(reading)
    decided = {
        name: _decide(vocabulary, name, found, window, facts, suspects)
        for name, found in candidates.items()
    }
    results = {name: d for name, d in decided.items() if d is not None}
    for name, chosen in results.items():
        analyte = knowledge.labs.analytes[name]
        if analyte.finding or analyte.high or analyte.low or analyte.flags:
            outranking = results.get(analyte.outranked_by or "")
            _add_lab(vocabulary, chosen, results.get("albumin"), outranking, window, facts)
    for name, found in suspects.items():
        if name not in results:
            *_, evidence = max(found, key=lambda s: s[:2])
            facts.add({"kind": "lab-set-aside", "analyte": name}, evidence)
    _missing(knowledge, set(results), facts)


def _readings(
    vocabulary: Vocabulary, obs: Resource, window: Window, facts: Facts, suspects: Suspects
) -> Iterator[tuple[str, Reading]]:
    """The analyte results an Observation carries, itself or in its components."""
    status = text(obs.get("status"))
    if status not in FINAL_OBSERVATION and status != PRELIMINARY:
        return
    parts = [obs, *(c for c in listed(obs.get("component")) if isinstance(c, dict))]
    found = [(part, match) for part in parts for match in _analyte_of(vocabulary, part)]
    if not found:
        return
    # Dates are read only where they matter, and in full only within the lookback.
    day = observation_date(obs)
    if day is not None and day < window.since:
        return
    when = observation_time(obs) if day is not None else None
    if when is None:
        # Dated in a form that cannot be read, or not dated at all: never the latest result.
        dated = any(key.startswith(("effective", "issued")) for key in obs)
        for part, (name, code, rank) in found:
            reading = Reading(_NO_TIME, obs, part, code, rank)
            reason: UnreadReason = "unreadable" if dated else "undated"
            detail = "effective[x]" if dated else None
            _set_aside(vocabulary, name, reading, reason, window, facts, suspects, detail)
        return
    if window.in_future(when):
        for part, (name, code, rank) in found:  # a data-entry error: never the latest
            reading = Reading(when, obs, part, code, rank)
            _set_aside(vocabulary, name, reading, "future-dated", window, facts, suspects)
        return
    for part, (name, spec, rank) in found:
        yield name, Reading(when, obs, part, spec, rank)


def _analyte_of(vocabulary: Vocabulary, part: Resource) -> list[tuple[str, Code, int]]:
    """The analyte (with the rules' code and its rank) the part's LOINC code names, if any."""
    for coding in codings(part.get("code")):
        code = text(coding.get("code"))
        if code in vocabulary.analytes and vocabulary.is_system(coding, "loinc"):
            return [vocabulary.analytes[code]]
    return []


def _decide(
    vocabulary: Vocabulary,
    name: str,
    found: list[Reading],
    window: Window,
    facts: Facts,
    suspects: Suspects,
) -> Decided | None:
    """The latest usable result; among results of its day that time cannot order, the most
    severe, with the others stated beside it. Only the deciding Observation is validated."""
    analyte = vocabulary.knowledge.labs.analytes[name]
    # One specimen reported under several codes (a total and its fractions): the preferred
    # code decides.
    preferred: dict[tuple[Any, ...], int] = {}
    found = [
        r
        for r in sorted(found, key=lambda r: (r.when.key(), -r.rank), reverse=True)
        if preferred.setdefault((r.when.key(), r.when.day), r.rank) == r.rank
    ]
    usable: list[tuple[LabResult, Judgement, Reading]] = []
    for reading in found:
        if usable and reading.when.orderable(usable[0][0].when):
            break
        unreadable = facts.unreadable(reading.obs)
        if unreadable is not None:
            _set_aside(vocabulary, name, reading, "unreadable", window, facts, suspects, unreadable)
            continue
        result = _lab_result(vocabulary, name, analyte, reading, window)
        if isinstance(result, SetAside):
            facts.set_aside.append(result)
            continue
        judgement = judge(vocabulary, analyte, result, window.sex)
        if result.status == PRELIMINARY and not judgement.critical:
            _set_aside(vocabulary, name, reading, "preliminary", window, facts, suspects)
            continue
        usable.append((result, judgement, reading))
    if not usable:
        return None
    usable.sort(key=lambda u: (u[1].severity, u[0].when.key()), reverse=True)
    result, judgement, _ = usable[0]
    others = {u[0].reported or u[0].flag: u[0] for u in usable[1:]}
    others.pop(result.reported or result.flag, None)
    return Decided(result, judgement, list(others.values())[:MAX_STATED_BESIDE])


def _set_aside(
    vocabulary: Vocabulary,
    name: str,
    reading: Reading,
    reason: UnreadReason,
    window: Window,
    facts: Facts,
    suspects: Suspects,
    detail: str | None = None,
) -> None:
    """Set a result aside with its date, value (as far as it can be read) and reason. When
    what can still be made of it - the laboratory's flag, a number - is beyond the analyte's
    limits, it is a suspect: should the analyte have no usable result, the clinician is asked
    to look in the laboratory system rather than trust the absence of a card."""
    analyte = vocabulary.knowledge.labs.analytes[name]
    guess = _lab_result(vocabulary, name, analyte, reading, window)
    when = None if reading.when is _NO_TIME else reading.when.day
    entry = facts.put_aside(
        reading.obs, reason, detail, when=when, analyte=name, reported=guess.reported
    )
    code = _flag(vocabulary, reading.part)
    flag = vocabulary.lab_flags.get(code or "")
    if isinstance(guess, LabResult):
        judgement = judge(vocabulary, analyte, guess, window.sex)
        looks = [judgement.critical, judgement.low, judgement.high]
    else:
        looks = _reads_as(analyte, reading.part, window)
    if flag is not None:
        looks = [
            looks[0] or flag.critical,
            looks[1] or flag.direction == "low",
            looks[2] or flag.direction == "high",
        ]
    if not any(looks):
        return
    severity = len(_LOOKS) - looks.index(True)
    flagged = f"flagged {flag.label} ({code})" if flag else None
    words = (entry.words(), flagged, f"may be {_LOOKS[looks.index(True)]}")
    evidence = Evidence(
        "unread",
        analyte.label,
        status=text(reading.obs.get("status")),
        judged="; ".join(w for w in words if w),
        code=f"LOINC {reading.code.code}" if isinstance(reading.part.get("code"), dict) else None,
        analyte=name,
    )
    suspects.setdefault(name, []).append((severity, when or date.min, evidence))


def _reads_as(analyte: Analyte, part: Resource, window: Window) -> list[bool]:
    """Critical, low, high: the value of an unreadable result read as a person would
    ("2,1 mmol/L")."""
    quantity = part.get("valueQuantity")
    raw = quantity.get("value") if isinstance(quantity, dict) else part.get("valueString")
    match = _NUMBER.match(raw.replace(",", ".")) if isinstance(raw, str) else None
    units = quantity_units(quantity) if isinstance(quantity, dict) else []
    if match is None or match[1]:
        return [False, False, False]
    units = units or ([match[3].strip()] if match[3] else [])
    converted = convert(float(match[2]), units, analyte.unit_factors)
    if converted is None:
        return [False, False, False]
    return [
        bool(limit and limit.holds(converted[0], window.sex))
        for limit in (analyte.critical, analyte.low, analyte.high)
    ]


def _lab_result(
    vocabulary: Vocabulary,
    name: str,
    analyte: Analyte,
    reading: Reading,
    window: Window,
) -> LabResult | SetAside:
    """The result in the analyte's canonical unit; set aside when it cannot be judged: no
    convertible value and no flag of the laboratory, or an impossible value."""
    part = reading.part
    measured, comparator, units = _measured(part)
    if not units:
        # No unit with the value (an HL7 v2 OBX without units): the result's own reference
        # range states it, or the analyte comes in one number whatever the unit (K, Na).
        units = [u for q in _range_quantities(part) for u in quantity_units(q)]
        if not units and all(factor == 1.0 for factor in analyte.units.values()):
            units = [analyte.unit]
        stated = None
    else:
        stated = units[0]
    converted = None if measured is None else convert(measured, units, analyte.unit_factors)
    flag = _flag(vocabulary, part)
    reported = (
        None
        if measured is None
        else f"{comparator or ''}{fmt(measured)}{' ' + stated if stated else ''}"
    )
    about: dict[str, Any] = {"when": reading.when.day, "analyte": name, "reported": reported}
    if converted is not None and analyte.impossible.holds(converted[0]):
        # An impossible value: a data or transmission error.
        return SetAside("Observation", "impossible-value", id(reading.obs), **about)
    if converted is None and flag is None:
        if measured is None:
            return SetAside("Observation", "no-value", id(reading.obs), **about)
        detail = f"unit {stated}" if stated else "no unit"
        return SetAside("Observation", "unit-not-convertible", id(reading.obs), detail, **about)
    value, unit = converted if converted is not None else (None, None)
    ref_low, ref_high = _reference_limits(vocabulary, part, analyte, window)
    status = str(text(reading.obs["status"]))
    raw = None if measured is None or unit is None else (measured, unit)
    return LabResult(
        name,
        reading.when,
        value,
        comparator,
        raw,
        reported,
        ref_low,
        ref_high,
        reading.code.code,
        reading.code.corrected,
        status,
        flag,
    )


def _measured(part: Resource) -> tuple[float | None, str | None, list[str]]:
    """The number, its comparator and its stated units, from valueQuantity or valueString."""
    quantity = part.get("valueQuantity")
    if isinstance(quantity, dict):
        comparator = text(quantity.get("comparator"))
        return number(quantity.get("value")), comparator, quantity_units(quantity)
    value = part.get("valueString")
    match = _NUMBER.match(value) if isinstance(value, str) else None
    if match is None:
        return None, None, []
    parsed = float(match[2])
    comparator = _COMPARATORS.get(match[1], match[1]) if match[1] else None
    return (
        (parsed if math.isfinite(parsed) else None),
        comparator,
        [match[3].strip()] if match[3] else [],
    )


def _flag(vocabulary: Vocabulary, part: Resource) -> str | None:
    """The laboratory's own flag (rules/record.yaml lab_flags), if it sent a known one."""
    for coding in codings_of(part.get("interpretation")):
        code, system = text(coding.get("code")), coding.get("system")
        if code in vocabulary.lab_flags and (
            system is None or system in vocabulary.interpretation_systems
        ):
            return code
    return None


def _range_quantities(part: Resource) -> list[dict[str, Any]]:
    ranges = part.get("referenceRange")
    return [
        q
        for r in listed(ranges)
        if isinstance(r, dict)
        for q in (r.get("low"), r.get("high"))
        if isinstance(q, dict)
    ]


def _reference_limits(
    vocabulary: Vocabulary, part: Resource, analyte: Analyte, window: Window
) -> tuple[float | None, float | None]:
    """The limits of the reference range that applies to this patient, converted; None where
    absent or not convertible. A range for the patient's sex and age beats a general one."""
    best: tuple[int, dict[str, Any]] | None = None
    for entry in listed(part.get("referenceRange")):
        if not isinstance(entry, dict):
            continue
        fit = _range_fit(vocabulary, entry, window)
        if fit is not None and (best is None or fit > best[0]):
            best = (fit, entry)
    if best is None:
        return None, None
    limits: list[float | None] = []
    for end in ("low", "high"):
        quantity = best[1].get(end)
        value = number(quantity.get("value")) if isinstance(quantity, dict) else None
        converted = (
            None
            if value is None or not isinstance(quantity, dict)
            else convert(value, quantity_units(quantity), analyte.unit_factors)
        )
        limits.append(None if converted is None else converted[0])
    return limits[0], limits[1]


def _range_fit(vocabulary: Vocabulary, entry: dict[str, Any], window: Window) -> int | None:
    """How specifically a reference range fits the patient (higher is better); None when it
    is for another sex or age, or is not a normal range."""
    sex, age = window.sex, window.age
    kinds = {text(c.get("code")) for c in codings(entry.get("type"))}
    if kinds - {"normal", None}:
        return None
    fit = 0
    applies = {text(c.get("code")) for c in codings_of(entry.get("appliesTo"))}
    sexes = {s for s, codes in vocabulary.range_sexes.items() if applies & codes}
    if sexes:
        if sex not in sexes:
            return None
        fit += 1
    ages = entry.get("age")
    if isinstance(ages, dict):
        bounds = [_years(ages.get(end)) for end in ("low", "high")]
        if age is None:
            return None
        if (bounds[0] is not None and age < bounds[0]) or (
            bounds[1] is not None and age > bounds[1]
        ):
            return None
        fit += 1
    return fit


def _years(quantity: Any) -> float | None:
    if not isinstance(quantity, dict):
        return None
    value, unit = number(quantity.get("value")), quantity.get("code") or quantity.get("unit")
    factor = _AGE_YEARS.get(unit) if isinstance(unit, str) else None
    return None if value is None or factor is None else value * factor


def judge(
    vocabulary: Vocabulary,
    analyte: Analyte,
    result: LabResult,
    sex: str | None,
    corrected: float | None = None,
) -> Judgement:
    """Low / critical / high for one result, the limit that decided, and caveats.

    The result's own reference range decides "low" and "high" where it is given in a
    convertible unit (labs differ); else the default threshold from rules/. Critical limits
    always come from rules/ (they are clinical action limits, not population ranges). A value
    given as "<5" or ">150" counts only where every value it allows is on one side. Where the
    number cannot decide, the laboratory's flag does; where both speak and disagree, the
    judgement says so. A limit the source also states in the result's own unit is compared
    with the value as reported; an albumin-`corrected` value is judged in the canonical unit.
    """
    value = result.value if corrected is None else corrected
    raw = result.measured if corrected is None else None
    flag = vocabulary.lab_flags.get(result.flag or "")
    flag_words = f"the laboratory flags it {flag.label} ({result.flag})" if flag else ""
    if value is None:
        direction = flag.direction if flag else None
        return Judgement(
            direction == "low",
            bool(flag and direction == "low" and flag.critical),
            direction == "high",
            f"{flag_words}; value not judged" if flag else "",
        )
    interval = _interval(value, result.comparator)

    def _threshold(threshold: Threshold) -> bool | None:
        op, limit = threshold.limit(sex)
        stated = threshold.limit_in(raw[1]) if raw else None
        if raw is not None and stated is not None:
            return _holds(op, stated, _interval(raw[0], result.comparator))
        return _holds(op, limit, interval)

    # Limits are stated in the unit of the value shown beside them: as the laboratory reported
    # it (a limit the source states in that unit, else converted), or the canonical unit for
    # an albumin-corrected value.
    shown = _ShownUnit(analyte, result.stated_unit if raw else None)

    def beyond(
        op: str, end: str, reference: float | None, threshold: Threshold | None
    ) -> tuple[bool | None, str]:
        """Whether the result is beyond one side's limit (the laboratory's reference limit
        where the analyte uses it, else the rules' threshold), and the words of that limit:
        written only when it decides (most results are within every limit)."""
        if analyte.use_reference_range and reference is not None:
            holds = _holds(op, reference, interval)
            if not holds:
                return holds, ""
            return holds, f"{op} the laboratory's {end} limit of {shown.value(reference)}"
        if threshold is None:
            return False, ""
        holds = _threshold(threshold)
        if not holds:
            return holds, ""
        return holds, shown.threshold(threshold, sex) + USUAL_LIMIT

    notes: list[str] = []
    low, low_basis = beyond("below", "lower", result.ref_low, analyte.low)
    high, high_basis = beyond("above", "upper", result.ref_high, analyte.high)
    basis = high_basis or low_basis
    critical: bool | None = False
    if analyte.critical is not None:
        critical = _threshold(analyte.critical)
        if critical:
            basis = "critically low: " + shown.threshold(analyte.critical, sex)
    if None in (low, high, critical):
        notes.append(f"reported as {result.reported}: cannot be judged against the limit")
        if flag and flag.direction in ("low", "high"):
            low = low or (low is None and flag.direction == "low")
            high = high or (high is None and flag.direction == "high")
            critical = critical or (critical is None and flag.direction == "low" and flag.critical)
            basis = flag_words
    low, high, critical = bool(low), bool(high), bool(critical)
    if (
        flag
        and basis != flag_words
        and _disagrees(flag.direction, flag.critical, low or critical, high, critical)
    ):
        notes.append(flag_words)
    return Judgement(low or critical, critical, high, basis, tuple(notes))


@dataclass(frozen=True)
class _ShownUnit:
    """Limits in the unit the value is shown in: the reported unit when it is not the
    canonical one (a limit the source states in that unit as stated, else converted)."""

    analyte: Analyte
    reported_unit: str | None

    @property
    def factor(self) -> float | None:
        """Reported unit -> canonical unit; None when the value is shown in canonical units."""
        unit = self.reported_unit
        if unit is None or unit_key(unit) == unit_key(self.analyte.unit):
            return None
        return self.analyte.unit_factors.get(unit_key(unit))

    def value(self, canonical: float) -> str:
        factor = self.factor
        if factor is None or self.reported_unit is None:
            return f"{fmt(canonical)} {self.analyte.unit}"
        return f"{fmt(canonical / factor)} {self.reported_unit}"

    def threshold(self, threshold: Threshold, sex: str | None) -> str:
        factor = self.factor
        if factor is None or self.reported_unit is None:
            return threshold_words(threshold, sex, self.analyte.unit)
        stated = threshold.limit_in(self.reported_unit)
        if stated is None:
            canonical = threshold.limit(sex)[1]
            stated = float(rounded_like(canonical / factor, fmt(canonical)))
        return threshold_words(threshold, sex, self.reported_unit, stated)


def significant_digits(number_text: str) -> int:
    """How many significant digits a reported number carries ('30' 2, '0.6' 1, '1.25' 3)."""
    digits = number_text.lstrip("+-<>=≤≥ ").replace(".", "").lstrip("0")
    return max(len(digits), 1)


def rounded_like(value: float, reported_number: str) -> str:
    """A converted value to the precision of the reported one (at least two significant
    digits, so 0.6 mmol/L is 1.5 mg/dL, not 1 mg/dL): 30 nmol/L is 12 ng/mL, not 12.02."""
    if value == 0:
        return "0"
    digits = max(significant_digits(reported_number), 2)
    decimals = digits - 1 - math.floor(math.log10(abs(value)))
    rounded = round(value, decimals)
    return fmt(rounded) if decimals > 0 else str(int(rounded))


def _disagrees(
    direction: str | None, flag_critical: bool, low: bool, high: bool, critical: bool
) -> bool:
    service = "low" if low else "high" if high else "normal"
    if direction is None:
        return service == "normal" or (flag_critical and not critical)
    return direction != service or (direction == "low" and flag_critical != critical)


def _interval(value: float, comparator: str | None) -> Interval:
    inf = math.inf
    return {
        "<": (-inf, False, value, False),
        "<=": (-inf, False, value, True),
        ">": (value, False, inf, False),
        ">=": (value, True, inf, False),
    }.get(comparator or "", (value, True, value, True))


def _holds(op: str, limit: float, interval: Interval) -> bool | None:
    """Whether the comparison holds for every value of the interval (True), for none
    (False), or for some only (None: the result cannot decide)."""
    lo, lo_in, hi, hi_in = interval
    every, none = {
        "below": (hi < limit or (hi == limit and not hi_in), lo >= limit),
        "at_or_below": (hi <= limit, lo > limit or (lo == limit and not lo_in)),
        "above": (lo > limit or (lo == limit and not lo_in), hi <= limit),
        "at_or_above": (lo >= limit, hi < limit or (hi == limit and not hi_in)),
    }[op]
    return True if every else False if none else None


def _add_lab(
    vocabulary: Vocabulary,
    decided: Decided,
    albumin: Decided | None,
    outranking: Decided | None,
    window: Window,
    facts: Facts,
) -> None:
    knowledge = vocabulary.knowledge
    result, judgement = decided.result, decided.judgement
    analyte = knowledge.labs.analytes[result.analyte]
    value, notes = result.value, []
    correction = analyte.albumin_correction
    days = knowledge.labs.analytes["albumin"].correction_window_days or 0
    measured = None if value is None else f"{fmt(value)} {analyte.unit}"
    albumin_value = albumin.result.value if albumin else None
    if (
        correction
        and value is not None
        and not result.corrected
        and albumin is not None
        and albumin_value is not None
        and albumin.result.comparator is None
        and abs((albumin.result.when.day - result.when.day).days) <= days
    ):
        value = value + correction.factor * (correction.reference_albumin - albumin_value)
        notes.append(
            f"measured {measured}, corrected for albumin {fmt(albumin_value)} g/dL "
            f"({albumin.result.when.day.isoformat()}) to {fmt(value)} {analyte.unit}"
        )
        judgement = judge(vocabulary, analyte, result, window.sex, corrected=value)
    if outranking is not None and outranking.result.when.day == result.when.day:
        other = knowledge.labs.analytes[analyte.outranked_by or ""]
        shown = outranking.result.reported or other.label
        notes.append(f"{other.label} {shown} the same day decides")
        judgement = Judgement(False, False, judgement.high, "", ())
    if result.status == PRELIMINARY:
        notes.append("preliminary result")
    if judgement.low or judgement.critical or judgement.high:
        notes.append(judgement.basis)
    notes += judgement.notes
    notes += [
        f"also on {o.when.day.isoformat()}: {o.reported or 'flagged ' + (o.flag or '')}"
        f" (which came later is not recorded)"
        for o in decided.beside
    ]
    comparator = result.comparator if value == result.value else None
    flags = {
        name: value is not None
        and _holds(*limit.limit(window.sex), _interval(value, comparator)) is True
        for name, limit in analyte.flags.items()
    }
    notes += [
        f"{name}: {threshold_words(analyte.flags[name], window.sex, analyte.unit)}"
        for name, holds in flags.items()
        if holds
    ]
    reported = result.reported
    canonical = (
        f"{result.comparator or ''}{fmt(result.value)} {analyte.unit}"
        if result.value is not None
        else None
    )
    differs = reported is not None and reported.lower() != (canonical or "").lower()
    stated = result.stated_unit
    evidence = Evidence(
        "lab",
        analyte.label,
        result.when.day,
        value=value,
        unit=analyte.unit,
        reported=reported if differs else None,
        converted=(
            f"{result.comparator or ''}{rounded_like(result.value, fmt(result.measured[0]))} "
            f"{analyte.unit}"
            if differs
            and stated is not None
            and unit_key(stated) != unit_key(analyte.unit)
            and result.value is not None
            and result.measured is not None
            else None
        ),
        judged="; ".join(n for n in notes if n) or None,
        code=f"LOINC {result.code}",
        status=result.status,
        analyte=result.analyte,
    )
    fact = {
        "kind": "lab",
        "analyte": result.analyte,
        "low": judgement.low,
        "critical": judgement.critical,
        "high": judgement.high,
        **flags,
    }
    if analyte.finding:
        fact["finding"] = analyte.finding
    facts.add(fact, evidence)


def _missing(knowledge: Knowledge, present: set[str], facts: Facts) -> None:
    """Work-up analytes with no usable result. Results of one that were set aside (its own,
    or of an analyte that counts for it) are named with their dates and reasons, so that the
    card says "no usable result", never "no result"."""
    analytes = knowledge.labs.analytes
    covered = present | {
        analytes[p].workup_counts_for for p in present if analytes[p].workup_counts_for
    }
    facts.missing_labs = {name for name in analytes if name not in covered}
    for name, analyte in analytes.items():
        if analyte.workup and name not in covered:
            counted = {name} | {a for a, spec in analytes.items() if spec.workup_counts_for == name}
            words = facts.set_aside_words(counted)
            facts.add(
                {"kind": "lab-missing", "analyte": name},
                Evidence("missing", analyte.label, analyte=name, set_aside=words),
            )
