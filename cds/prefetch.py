"""Prefetched data as the EHR sent it -> one pool of resources by type.

The pool ignores key names (a client that names keys differently still works), unpacks
Bundles, skips OperationOutcomes and non-resources, drops duplicates by id, and drops
resources about another patient: prefetch is untrusted input.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from cds.catalog import PrefetchTemplate

Resource = dict[str, Any]
MAX_BUNDLE_DEPTH = 3
PATIENT_REFERENCES = ("subject", "patient")


@dataclass
class ResourcePool:
    """The patient's resources by `resourceType`, with counts of what was left out."""

    by_type: dict[str, list[Resource]] = field(default_factory=dict)
    skipped: int = 0
    other_patient: int = 0
    _seen: set[tuple[str, str]] = field(default_factory=set)

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
                for entry in entries:
                    resource = entry.get("resource") if isinstance(entry, dict) else None
                    self._add(resource, patient_id, depth + 1)
            return
        if kind == "OperationOutcome":
            return
        if not _belongs_to(value, patient_id):
            self.other_patient += 1
            return
        resource_id = value.get("id")
        if isinstance(resource_id, str):
            if (kind, resource_id) in self._seen:
                return
            self._seen.add((kind, resource_id))
        self.by_type.setdefault(kind, []).append(value)


def _belongs_to(resource: Resource, patient_id: str) -> bool:
    """False when the resource names a different patient; True when it names none."""
    if resource["resourceType"] == "Patient":
        return resource.get("id") in (None, patient_id)
    for name in PATIENT_REFERENCES:
        reference = resource.get(name)
        if isinstance(reference, dict) and isinstance(reference.get("reference"), str):
            target = reference["reference"]
            if target.startswith("Patient/") or "/Patient/" in target:
                return target.rsplit("/", 1)[-1] == patient_id
    return True


def is_prefetched(value: Any) -> bool:
    """Absent, null, or an OperationOutcome all mean "not prefetched" (CDS Hooks §Prefetch)."""
    return isinstance(value, dict) and value.get("resourceType") not in (None, "OperationOutcome")


def unsatisfied(prefetch: dict[str, Any] | None,
                templates: Iterable[PrefetchTemplate]) -> list[PrefetchTemplate]:
    """The service's templates the client did not fill."""
    prefetch = prefetch or {}
    return [t for t in templates if not is_prefetched(prefetch.get(t.key))]
