"""What every fact family shares: the facts container, evidence, and one way to read the
record's dates, codings, numbers and statuses.

EHR JSON is untrusted: where FHIR has a string, an object or a list may arrive, so every
reader here returns None (or nothing) rather than raising on an unexpected shape.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

from cds.decision.facts import elements
from cds.knowledge import Threshold

Resource = dict[str, Any]
Resources = dict[str, list[Resource]]
EvidenceKind = Literal[
    "complaint", "problem", "family", "lab", "missing", "unread", "medication", "order"
]
# Why a resource that exists was not used (the `reason` label of
# twitch_cds_resources_unread_total: a fixed set, never free text).
UnreadReason = Literal[
    "unreadable",
    "preliminary",
    "unit-not-convertible",
    "no-value",
    "future-dated",
    "undated",
    "impossible-value",
    "other-patient",
    "entered-in-error",
]
UNREAD_WORDS: dict[str, str] = {
    "unreadable": "unreadable",
    "preliminary": "preliminary",
    "unit-not-convertible": "unit not convertible",
    "no-value": "no numeric value",
    "future-dated": "future-dated",
    "undated": "no effective date or issued time",
    "impossible-value": "impossible value",
    "other-patient": "another patient's",
    "entered-in-error": "entered in error",
}

# How many set-aside results of one test a card names (the newest).
MAX_SET_ASIDE_NAMED = 3
# Below this, two decimals keep fewer than two significant digits (0.0073 would be "0.01").
TWO_DECIMALS_FROM = 0.1
FINAL_OBSERVATION = {"final", "amended", "corrected"}
_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?")
_DECIMAL = re.compile(r"^-?(0|[1-9][0-9]{0,17})(\.[0-9]{1,17})?([eE][+-]?[0-9]{1,3})?$")
_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?$")
# How far in the future a result may be dated before it is a data-entry error: clocks of the
# EHR, the laboratory system and this service differ by seconds to minutes.
CLOCK_SKEW = timedelta(minutes=5)


@dataclass(frozen=True)
class Evidence:
    """What a card shows as the reason for its finding."""

    kind: EvidenceKind
    label: str
    when: date | None = None
    value: float | None = None
    unit: str | None = None
    reported: str | None = None
    # The reported value converted to the canonical unit, rounded to the reported precision.
    converted: str | None = None
    status: str | None = None
    judged: str | None = None
    code: str | None = None
    lowers: tuple[str, ...] = ()
    analyte: str | None = None
    # A drug's start (authoredOn, or the start of a statement's effective time) and its dose
    # as prescribed: timing decides whether the drug can explain the twitching.
    started: date | None = None
    dose: str | None = None
    # Results that exist but were not used, in words ("2026-03-01: preliminary"): a work-up
    # test with such results is named "no usable result", never "no result".
    set_aside: tuple[str, ...] = ()
    # Who says so and how long ago, when not the EHR itself: "patient-reported, 2 days ago".
    provenance: str | None = None


@dataclass(frozen=True)
class SetAside:
    """A resource that exists but was not used, and why. `detail` says what exactly (the
    unreadable element, the unit); `resource` tells two set-asides of one resource apart."""

    resource_type: str
    reason: UnreadReason
    resource: int
    detail: str | None = None
    when: date | None = None
    analyte: str | None = None
    reported: str | None = None

    def words(self) -> str:
        """The date and the reason, as the work-up card states them."""
        reason = UNREAD_WORDS[self.reason] + (f" ({self.detail})" if self.detail else "")
        shown = f"{self.reported}, " if self.reported else ""
        day = self.when.isoformat() if self.when else "undated"
        return f"{shown}{day}: {reason}"


@dataclass(frozen=True)
class AssessmentOnFile:
    """The patient's answers to the assessment (rules/assessment/) within the lookback: when
    they last answered and which topics (Questionnaire groups) they answered."""

    when: date
    topics: frozenset[str]
    # "Yes" answers that no rule reads, by the question's display (strenuous exercise...).
    reported: tuple[str, ...] = ()


@dataclass
class Facts:
    """The input of the rules engine plus what the cards step needs to explain it."""

    facts: list[dict[str, Any]] = field(default_factory=list)
    evidence: dict[str, Evidence] = field(default_factory=dict)
    missing_labs: set[str] = field(default_factory=set)
    set_aside: list[SetAside] = field(default_factory=list)
    # Faults tolerated in resources that were read (cds/decision/facts/elements.py), by kind.
    faults: Counter[str] = field(default_factory=Counter)
    _read: dict[int, str | None] = field(default_factory=dict)
    assessment: AssessmentOnFile | None = None

    def unreadable(self, resource: Resource) -> str | None:
        """The read element that makes `resource` unreadable, or None; each resource is read
        once per request (a panel's components share their Observation)."""
        key = id(resource)
        if key not in self._read:
            reading = elements.read(resource)
            self.faults.update(reading.faults)
            self._read[key] = reading.unreadable
        return self._read[key]

    def readable(self, resource: Resource) -> bool:
        """Whether `resource` can be read; one that cannot is set aside with its reason."""
        element = self.unreadable(resource)
        if element is not None:
            self.put_aside(resource, "unreadable", element)
        return element is None

    def put_aside(
        self,
        resource: Resource,
        reason: UnreadReason,
        detail: str | None = None,
        **about: Any,
    ) -> SetAside:
        entry = SetAside(str(resource.get("resourceType")), reason, id(resource), detail, **about)
        self.set_aside.append(entry)
        return entry

    def set_aside_words(self, analytes: set[str]) -> tuple[str, ...]:
        """The newest set-aside results of these analytes, in words with their dates."""
        newest = sorted(
            {(s.when or date.min, s.words()) for s in self.set_aside if s.analyte in analytes},
            reverse=True,
        )
        return tuple(words for _, words in newest[:MAX_SET_ASIDE_NAMED])

    def unread_counts(self) -> Counter[tuple[str, str]]:
        """Resources set aside, once each, by (resource type, reason)."""
        seen = {(s.resource, s.resource_type, s.reason) for s in self.set_aside}
        return Counter((kind, reason) for _, kind, reason in seen)

    def cite(self, evidence: Evidence) -> str:
        """Register evidence once; facts refer to it by this reference."""
        ref = f"e{len(self.evidence) + 1}"
        self.evidence[ref] = evidence
        return ref

    def add(self, fact: dict[str, Any], evidence: Evidence | str) -> None:
        ref = evidence if isinstance(evidence, str) else self.cite(evidence)
        self.facts.append({**fact, "evidence": ref})

    def kinds(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for fact in self.facts:
            counts[fact["kind"]] = counts.get(fact["kind"], 0) + 1
        return counts


@dataclass(frozen=True)
class Window:
    """The request's time frame and the patient attributes every family may need."""

    today: date
    since: date
    sex: str | None
    age: float | None = None
    now: datetime | None = None

    def in_future(self, when: When) -> bool:
        """Dated after now (beyond clock skew): a data-entry error, never the latest."""
        now = self.now or datetime.combine(self.today, datetime.max.time(), UTC)
        return when.start > now + CLOCK_SKEW


_NEVER_ISSUED = datetime.min.replace(tzinfo=UTC)  # sorts a result without `issued` first


@dataclass(frozen=True)
class When:
    """When a result was taken: the written day, the instant (UTC) and whether it has a time.

    A date without a time cannot be ordered against another result of the same day; `issued`
    breaks ties between equal instants.
    """

    day: date
    start: datetime
    precise: bool
    issued: datetime | None = None

    def key(self) -> tuple[datetime, datetime]:
        return self.start, self.issued or _NEVER_ISSUED

    def orderable(self, other: When) -> bool:
        """Whether time tells which of the two results is later."""
        if self.day != other.day:
            return True
        return self.precise and other.precise and self.key() != other.key()


def parse_date(value: Any) -> date | None:
    """The start of a FHIR date/dateTime/instant of any precision ('2026', '2026-03', ...).

    The start of the period is used so that an imprecise date is never taken as more recent
    than it may be: stale data must not pass for current.
    """
    if not isinstance(value, str):
        return None
    match = _DATE.match(value)
    if not match:
        return None
    year, month, day = int(match[1]), int(match[2] or 1), int(match[3] or 1)
    try:
        return date(year, month, day)
    except ValueError:
        return None


def text(value: Any) -> str | None:
    """`value` without surrounding spaces if it is a string, else None: JSON from the EHR may
    hold a list or object where FHIR has a code, status or id, and those must not reach a set
    or dict look-up; and a status may come as "final " (Oracle Health), which is "final"."""
    return value.strip() if isinstance(value, str) else None


def listed(value: Any) -> list[Any]:
    """A repeating element as HAPI FHIR's parser reads it: a list as it is, and a single
    object where a list belongs (`"coding": {...}`, as some exports write one item) as that
    one item; anything else as nothing. The element reader counts the object as a fault."""
    if isinstance(value, list):
        return value
    return [value] if isinstance(value, dict) else []


def codings(concept: Any) -> list[dict[str, Any]]:
    if not isinstance(concept, dict):
        return []
    return [c for c in listed(concept.get("coding")) if isinstance(c, dict)]


def codings_of(value: Any) -> list[dict[str, Any]]:
    """Codings of a CodeableConcept or of a list of them."""
    concepts = value if isinstance(value, list) else [value]
    return [c for concept in concepts for c in codings(concept)]


def status_code(concept: Any) -> str | None:
    codes = [c.get("code") for c in codings(concept)]
    return next((c for c in codes if isinstance(c, str)), None)


def instant(value: Any) -> tuple[datetime, bool] | None:
    """A FHIR date/dateTime/instant as a UTC instant, and whether it carries a time.

    A date alone stands for the start of its day (UTC); a time without a zone (not valid FHIR,
    but sent) is read as UTC.
    """
    parsed = _when(value)
    return None if parsed is None else (parsed.start, parsed.precise)


def _when(value: Any, issued: datetime | None = None) -> When | None:
    day = parse_date(value)
    if day is None:
        return None
    midnight = datetime.combine(day, datetime.min.time(), UTC)
    if not _TIME.match(value):
        return When(day, midnight, False, issued)
    try:
        moment = datetime.fromisoformat(value)  # Python 3.11 reads a "Z" zone too
    except ValueError:
        return When(day, midnight, False, issued)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return When(day, moment.astimezone(UTC), True, issued)


def observation_time(obs: Resource) -> When | None:
    """When the observation was taken: effective[x] (a period by its start), else `issued`."""
    issued = _when(obs.get("issued")) if "issued" in obs else None
    for value in _times(obs):
        when = _when(value, issued.start if issued else None)
        if when is not None:
            return when
    return None


def observation_date(obs: Resource) -> date | None:
    """The day of `observation_time`, read without its time: enough to leave out a result
    before the lookback, which most results of a long record are."""
    for value in _times(obs):
        day = parse_date(value)
        if day is not None:
            return day
    return None


def _times(obs: Resource) -> tuple[Any, ...]:
    """The values that may date an observation, in the order they count."""
    period = obs.get("effectivePeriod")
    if not isinstance(period, dict):
        period = {}
    return (
        obs.get("effectiveDateTime"),
        obs.get("effectiveInstant"),
        period.get("start"),
        period.get("end"),
        obs.get("issued"),
    )


def patient_reported(obs: Resource) -> bool:
    """Derived from a QuestionnaireResponse: the patient's own answer (the assessment app
    writes each answer so, `derivedFrom` its response), not a clinician's finding."""
    return any(
        isinstance(ref, dict)
        and (
            ref.get("type") == "QuestionnaireResponse"
            or "QuestionnaireResponse/" in (text(ref.get("reference")) or "")
        )
        for ref in listed(obs.get("derivedFrom"))
    )


def days_ago(day: date, today: date) -> str:
    """'today', '1 day ago', '12 days ago'."""
    days = (today - day).days
    return "today" if days <= 0 else "1 day ago" if days == 1 else f"{days} days ago"


def number(value: Any) -> float | None:
    """A JSON number, or a string holding a FHIR decimal ("2.1"): fhir.resources reads both as
    a decimal, so the service does too. Anything else (a bool, "2,1", infinity) is None."""
    if isinstance(value, str) and _DECIMAL.match(value.strip()):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        result = float(value)
    except OverflowError:  # a JSON integer of hundreds of digits
        return None
    return result if math.isfinite(result) else None


def fmt(value: float) -> str:
    """A number as a card shows it: at most two decimals ("2.1", "135"); a value too small
    for them keeps two significant digits ("0.004", a suppressed TSH), never "0"."""
    if value != 0 and abs(value) < TWO_DECIMALS_FROM:
        return f"{value:.2g}"
    return f"{value:.2f}".rstrip("0").rstrip(".")


def joined(items: list[str], last: str = "and") -> str:
    """'a', 'a and b', 'a, b and c'."""
    return (
        items[0]
        if len(items) == 1
        else f"{', '.join(items[:-1])} {last} {items[-1]}"
        if items
        else ""
    )


def threshold_words(
    threshold: Threshold, sex: str | None, unit: str, limit: float | None = None
) -> str:
    """'below 3.5 mmol/L'; `limit` is the same limit stated in `unit` when that is not the
    unit of the rules."""
    op, stated = threshold.limit(sex)
    limit = stated if limit is None else limit
    words = {
        "below": "below",
        "at_or_below": "at or below",
        "above": "above",
        "at_or_above": "at or above",
    }[op]
    return f"{words} {fmt(limit)} {unit}"
