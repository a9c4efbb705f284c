"""From a patient's FHIR resources to the few aggregated facts the rules reason over.

One module per fact family (problems, labs, medications, care, assessment), each reading the pooled
resources and adding its facts and evidence; `record` holds what they share, `vocabulary`
the code tables built from rules/. No family imports another.

Selection happens on plain dicts first (resource type, status, code membership, recency),
because checking every resource of a large record costs more than everything else together.
Only the resources that can become a fact are checked, and only in the elements their family
reads (`elements`), so an unreadable resource is set aside with its reason (and counted) while
the rest still count, and a fault in an element nobody reads loses nothing.
Facts are aggregated - one per analyte, concept or ingredient - because each
asserted fact costs the rules engine time.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from cds.decision.facts.assessment import read_assessment
from cds.decision.facts.care import CARE_SOURCES, read_neurology_care
from cds.decision.facts.labs import LabResult, judge, read_labs
from cds.decision.facts.medications import read_drafts, read_medications
from cds.decision.facts.problems import read_family, read_problems
from cds.decision.facts.record import (
    Evidence,
    Facts,
    Resource,
    Resources,
    SetAside,
    Window,
    parse_date,
    text,
)
from cds.decision.facts.vocabulary import Match, Vocabulary

__all__ = [
    "READ_TYPES",
    "Evidence",
    "FactBuilder",
    "Facts",
    "LabResult",
    "Match",
    "SetAside",
    "Vocabulary",
    "is_deceased",
    "judge",
    "parse_date",
]

# Every resource type a fact family reads (`FactBuilder.build` below). A request body decodes
# other resources only to their head (cds/decision/request_body.py): a family that starts reading
# another type must have it added here.
READ_TYPES = frozenset(
    {
        "Patient",
        "Condition",
        "Observation",
        "FamilyMemberHistory",
        "MedicationRequest",
        "MedicationStatement",
        "Medication",
        *(source.kind for source in CARE_SOURCES),
    }
)


class FactBuilder:
    """Builds the facts of one request. Stateless apart from the shared `Vocabulary`."""

    def __init__(self, vocabulary: Vocabulary, lookback_days: int) -> None:
        self.vocabulary = vocabulary
        self.knowledge = vocabulary.knowledge
        self.lookback_days = lookback_days

    def build(
        self,
        resources: Resources,
        today: date,
        draft_orders: list[Resource] | None = None,
        references: dict[str, Resource] | None = None,
        draft_medications: dict[str, Resource] | None = None,
    ) -> Facts:
        """The facts of one record. `references` maps bundle entries' full URLs (absolute or
        `urn:uuid:`) to their resources, for references that name a resource that way;
        `draft_medications` the Medications sent beside the draft orders, by reference."""
        facts = Facts()
        patients = resources.get("Patient", [])
        window = Window(
            today,
            today - timedelta(days=self.lookback_days),
            _sex(patients),
            _age(patients, today),
            _now(today),
        )
        complaint = read_problems(self.vocabulary, resources, window, facts)
        read_labs(self.vocabulary, resources.get("Observation", []), window, facts)
        read_medications(self.vocabulary, resources, facts, references)
        read_family(self.vocabulary, resources.get("FamilyMemberHistory", []), facts)
        read_neurology_care(self.vocabulary, resources, window, facts)
        read_assessment(self.vocabulary, resources.get("Observation", []), window, facts)
        if draft_orders:
            read_drafts(
                self.vocabulary,
                draft_orders,
                facts,
                resources,
                {**(references or {}), **(draft_medications or {})},
            )
        if complaint is not None:
            # The gate goes last: every rule joins on it, so rules see the whole record.
            facts.add({"kind": "complaint"}, complaint)
        return facts


def is_deceased(patients: list[Resource]) -> bool:
    """Whether the Patient is recorded as deceased: `deceasedBoolean` true, or a
    `deceasedDateTime` (any date: a death recorded ahead of time is still recorded)."""
    patient = patients[0] if patients else {}
    flag = patient.get("deceasedBoolean")
    return (
        flag is True
        or text(flag) == "true"
        or parse_date(patient.get("deceasedDateTime")) is not None
    )


def _sex(patients: list[Resource]) -> str | None:
    gender = patients[0].get("gender") if patients else None
    return gender if gender in ("male", "female") else None


def _age(patients: list[Resource], today: date) -> float | None:
    """Age in years from the birth date, for age-specific reference ranges."""
    born = parse_date(patients[0].get("birthDate")) if patients else None
    return None if born is None or born > today else (today - born).days / 365.25


def _now(today: date) -> datetime:
    """The current instant when `today` is today; else the end of `today` (a replayed day)."""
    now = datetime.now(UTC)
    return now if now.date() == today else datetime.combine(today, datetime.max.time(), UTC)
