"""Care already in place: a neurology referral or encounter -> the `neurology-care` fact."""

from __future__ import annotations

from datetime import date

from cds.facts.record import Evidence, Facts, Resources, codings_of, parse_date
from cds.facts.vocabulary import Vocabulary

# Where a neurology referral or encounter is recorded, and which statuses do not count.
CARE_SOURCES = (
    ("ServiceRequest", ("performerType", "code"), {"revoked", "entered-in-error", "draft"}),
    ("Encounter", ("serviceType", "type"), {"cancelled", "entered-in-error"}),
)


def read_neurology_care(vocabulary: Vocabulary, resources: Resources, facts: Facts) -> None:
    """A neurology referral or encounter on record (whichever key it arrived under)."""
    latest: Evidence | None = None
    for kind, fields, excluded in CARE_SOURCES:
        for resource in resources.get(kind, []):
            if resource.get("status") in excluded:
                continue
            found = [c for name in fields for c in codings_of(resource.get(name))]
            if "neurology-care" not in vocabulary.concepts_of(found):
                continue
            when = parse_date(resource.get("authoredOn")) or parse_date(
                (resource.get("period") or {}).get("start")
                if isinstance(resource.get("period"), dict) else None)
            what = "Neurology referral" if kind == "ServiceRequest" else "Neurology encounter"
            evidence = Evidence("problem", what, when, status=resource.get("status"))
            if latest is None or (when or date.min) > (latest.when or date.min):
                latest = evidence
    if latest is not None:
        facts.add({"kind": "neurology-care"}, latest)
