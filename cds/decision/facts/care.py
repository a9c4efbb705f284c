"""Care already in place: neurology care -> the `neurology-care` fact.

Care counts when it is current: a referral still open (ServiceRequest active or on hold), an
encounter or episode still going on, or neurology care dated within the lookback. A neurology
visit eight years ago is history, not care.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from cds.decision.facts.record import (
    Evidence,
    Facts,
    Resource,
    Resources,
    Window,
    codings_of,
    parse_date,
)
from cds.decision.facts.vocabulary import Vocabulary


@dataclass(frozen=True)
class CareSource:
    """Where neurology care is recorded, which statuses mean it is still open, and which
    mean it never happened."""

    kind: str
    label: str
    fields: tuple[str, ...]
    open_statuses: frozenset[str]
    excluded: frozenset[str]


CARE_SOURCES = (
    CareSource(
        "ServiceRequest",
        "Neurology referral",
        ("performerType", "code"),
        frozenset({"active", "on-hold"}),
        frozenset({"revoked", "entered-in-error", "draft"}),
    ),
    CareSource(
        "Encounter",
        "Neurology encounter",
        ("serviceType", "type"),
        frozenset({"arrived", "triaged", "in-progress", "onleave"}),
        frozenset({"cancelled", "entered-in-error"}),
    ),
    CareSource(
        "EpisodeOfCare",
        "Neurology episode of care",
        ("type",),
        frozenset({"active", "waitlist", "onhold"}),
        frozenset({"cancelled", "entered-in-error"}),
    ),
)


def read_neurology_care(
    vocabulary: Vocabulary, resources: Resources, window: Window, facts: Facts
) -> None:
    """The most recent current neurology care on record (whichever key it arrived under)."""
    latest: Evidence | None = None
    for source in CARE_SOURCES:
        for resource in resources.get(source.kind, []):
            status = resource.get("status")
            if not isinstance(status, str) or status in source.excluded:
                continue
            found = [c for name in source.fields for c in codings_of(resource.get(name))]
            if "neurology-care" not in vocabulary.concepts_of(found):
                continue
            when = _care_date(resource)
            if status not in source.open_statuses and (when is None or when < window.since):
                continue
            evidence = Evidence("problem", source.label, when, status=status)
            if latest is None or (when or date.min) > (latest.when or date.min):
                latest = evidence
    if latest is not None:
        facts.add({"kind": "neurology-care"}, latest)


def _care_date(resource: Resource) -> date | None:
    """The latest date the record gives for the care: period end or start, authored on."""
    period: dict[str, Any] = resource["period"] if isinstance(resource.get("period"), dict) else {}
    dates = [
        parse_date(v)
        for v in (
            period.get("end"),
            period.get("start"),
            resource.get("occurrenceDateTime"),
            resource.get("authoredOn"),
        )
    ]
    found = [d for d in dates if d is not None]
    return max(found) if found else None
