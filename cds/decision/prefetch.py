"""Prefetched data as the EHR sent it -> one pool of resources by type.

The pool ignores key names (a client that names keys differently still works), unpacks
Bundles, skips OperationOutcomes and non-resources, drops duplicates by id, and drops
resources about another patient: prefetch is untrusted input. The patient is recognised in
every reference form EHRs write: `Patient/id`, `{fhirServer}/Patient/id`, versioned
`Patient/id/_history/n`, and `urn:uuid:` (or any full URL) resolved through the bundle entries'
`fullUrl`s, which the pool keeps so that other references (a `medicationReference`) resolve too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from cds.decision.catalog import PrefetchTemplate

Resource = dict[str, Any]
MAX_BUNDLE_DEPTH = 3
PATIENT_REFERENCES = ("subject", "patient")
_PATIENT = re.compile(r"(?:^|/)Patient/([^/?#]+)(?:/_history/[^/]+)?$")


@dataclass
class ResourcePool:
    """The patient's resources by `resourceType`, with counts of what was left out."""

    by_type: dict[str, list[Resource]] = field(default_factory=dict)
    # Bundle entries by their `fullUrl`, for references written as full URLs or urn:uuid.
    references: dict[str, Resource] = field(default_factory=dict)
    skipped: int = 0
    other_patient: int = 0
    _seen: set[tuple[str, str]] = field(default_factory=set)
    # Whose each patient reference names, decided once per distinct reference (and Bundle):
    # a record's resources all name the same patient, in one or two forms.
    _patients: dict[str, bool | None] = field(default_factory=dict)

    def _belongs_to(self, resource: Resource, patient_id: str) -> bool:
        """False when the resource names a different patient; True when it names this one, or
        none that can be told (a conditional or unresolvable reference)."""
        if resource["resourceType"] == "Patient":
            return resource.get("id") in (None, patient_id)
        for name in PATIENT_REFERENCES:
            reference = resource.get(name)
            target = reference.get("reference") if isinstance(reference, dict) else None
            if not isinstance(target, str):
                continue
            if target not in self._patients:
                self._patients[target] = _names_patient(target.strip(), patient_id, self.references)
            verdict = self._patients[target]
            if verdict is not None:
                return verdict
        return True

    def count(self) -> int:
        return sum(len(resources) for resources in self.by_type.values())

    def add_all(self, values: Iterable[Any], patient_id: str) -> None:
        for value in values:
            self._add(value, patient_id, 0)

    def _add(self, value: Any, patient_id: str, depth: int) -> None:
        if not isinstance(value, dict) or not isinstance(value.get("resourceType"), str):
            self.skipped += value is not None
            return
        kind = value["resourceType"]
        if kind == "Bundle":
            entries = value.get("entry")
            if depth < MAX_BUNDLE_DEPTH and isinstance(entries, list):
                entries = [e for e in entries if isinstance(e, dict)]
                self.references.update(
                    (e["fullUrl"].strip(), e["resource"])
                    for e in entries
                    if isinstance(e.get("fullUrl"), str) and isinstance(e.get("resource"), dict)
                )
                self._patients.clear()  # a reference may resolve now that did not before
                for entry in entries:
                    self._add(entry.get("resource"), patient_id, depth + 1)
            return
        if kind == "OperationOutcome":
            return
        if not self._belongs_to(value, patient_id):
            self.other_patient += 1
            return
        resource_id = value.get("id")
        if isinstance(resource_id, str):
            if (kind, resource_id) in self._seen:
                return
            self._seen.add((kind, resource_id))
        self.by_type.setdefault(kind, []).append(value)


def _names_patient(target: str, patient_id: str, references: dict[str, Resource]) -> bool | None:
    """Whether a reference names this patient (True), another (False), or no patient that can
    be told (None: look at the next reference field)."""
    named = references.get(target)
    if isinstance(named, dict) and named.get("resourceType") == "Patient":
        return named.get("id") in (None, patient_id)
    if target == f"urn:uuid:{patient_id}":
        return True
    match = _PATIENT.search(target)
    return None if match is None else match[1] == patient_id


def is_prefetched(value: Any) -> bool:
    """Absent, null, or an OperationOutcome all mean "not prefetched" (CDS Hooks §Prefetch)."""
    return isinstance(value, dict) and value.get("resourceType") not in (None, "OperationOutcome")


def unsatisfied(
    prefetch: dict[str, Any] | None, templates: Iterable[PrefetchTemplate]
) -> list[PrefetchTemplate]:
    """The service's templates the client did not fill."""
    prefetch = prefetch or {}
    return [t for t in templates if not is_prefetched(prefetch.get(t.key))]
