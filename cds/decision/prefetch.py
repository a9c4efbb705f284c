"""Prefetched data as the EHR sent it -> one pool of this patient's resources by type.

The pool ignores key names (a client that names keys differently still works), unpacks
Bundles, skips OperationOutcomes and non-resources, and keeps only this patient's resources:
prefetch is untrusted input. Bundle entries' `fullUrl`s are kept, so that references written
as full URLs or `urn:uuid:` resolve (a patient, a `medicationReference`).

Whose a resource is (contract "Reading the record"): its `subject` (or `patient`) names this
patient by a relative reference (`Patient/id`, also versioned), an absolute reference on the
request's `fhirServer`, the `urn:uuid:` (or other full URL) of this patient's Bundle entry, an
identifier equal to one of the Patient's identifiers, or an id the Patient links to
(`Patient.link` replaces, replaced-by, seealso: merged records). Anything else - another
patient, another server, a display alone, a conditional reference, no subject at all on a
type that has one - is not this patient's, and is counted by type.

Of several copies of one resource (same type and id), the later `meta.versionId`, then
`meta.lastUpdated`, then `issued` counts, never the bundle order; copies that nothing orders
are all kept (each result then stands beside the others, the most severe deciding). A copy
marked entered-in-error withdraws the resource. Whose a resource is, and which copy counts,
is decided once all of the record is in (`by_type`), since the Patient may come last.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cds.decision.catalog import PrefetchTemplate
from cds.decision.facts import READ_TYPES
from cds.decision.facts.record import codings, instant, listed, text

Resource = dict[str, Any]
MAX_BUNDLE_DEPTH = 3
PATIENT_REFERENCES = ("subject", "patient")
# The types the service reads that belong to a patient: without a subject they are nobody's.
PATIENT_OWNED = frozenset(READ_TYPES - {"Patient", "Medication"})
LINKS = frozenset({"replaces", "replaced-by", "seealso"})
ENTERED_IN_ERROR = "entered-in-error"
_PATIENT = re.compile(r"(?:^|/)Patient/([^/?#]+)(?:/_history/[^/]+)?$")
_LAST_UPDATED = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)\s*(Z|[+-]\d{2}:?\d{2})?$"
)


@dataclass(frozen=True)
class Identity:
    """How this patient is named: ids (its own and linked ones), identifiers, full URLs."""

    ids: frozenset[str]
    identifiers: frozenset[tuple[str, str]]
    urls: frozenset[str]
    server: str | None
    # Verdicts by reference string: a record names its patient the same way hundreds of times.
    _targets: dict[str, bool] = field(default_factory=dict, compare=False)

    def names(self, reference: Any) -> bool:
        """Whether a Reference (a dict) names this patient."""
        if not isinstance(reference, dict):
            return False
        target = reference.get("reference")
        if isinstance(target, str):
            verdict = self._targets.get(target)  # by the string as sent: stripped only once
            if verdict is not None:
                return verdict
            stripped = target.strip()
            if stripped:
                verdict = self._targets[target] = self._names_target(stripped)
                return verdict
        identifier = reference.get("identifier")
        return isinstance(identifier, dict) and _identifier_key(identifier) in self.identifiers

    def _names_target(self, target: str) -> bool:
        if target in self.urls:
            return True
        match = _PATIENT.search(target)
        if match is None or match[1] not in self.ids:
            return False
        base = target[: match.start()].rstrip("/")
        if not base:
            return not target.startswith("/")  # relative: Patient/id
        return self.server is not None and base == self.server


@dataclass
class ResourcePool:
    """This patient's resources by `resourceType`, with counts of what was left out.

    `fhir_server` is the request's `fhirServer`: absolute references on it name its patients.
    """

    fhir_server: str | None = None
    # Bundle entries by their `fullUrl`, for references written as full URLs or urn:uuid.
    references: dict[str, Resource] = field(default_factory=dict)
    skipped: int = 0
    patient_id: str | None = None
    # Resources left out, by (resource type, reason): another patient's, entered in error.
    left_out: Counter[tuple[str, str]] = field(default_factory=Counter)
    _arrived: list[Resource] = field(default_factory=list)
    _by_type: dict[str, list[Resource]] | None = None

    @property
    def other_patient(self) -> int:
        return sum(
            n for (_, reason), n in self.left_out_counts().items() if reason == "other-patient"
        )

    def left_out_counts(self) -> Counter[tuple[str, str]]:
        """Resources left out, by (resource type, reason), once the record is sorted."""
        self._sort()
        return self.left_out

    @property
    def by_type(self) -> dict[str, list[Resource]]:
        return self._sort()

    def count(self) -> int:
        return sum(len(resources) for resources in self.by_type.values())

    def add_all(self, values: Iterable[Any], patient_id: str) -> None:
        self.patient_id = patient_id
        for value in values:
            self._add(value, 0)
        self._by_type = None

    def _add(self, value: Any, depth: int) -> None:
        if not isinstance(value, dict) or not isinstance(value.get("resourceType"), str):
            self.skipped += value is not None
            return
        kind = value["resourceType"]
        if kind == "Bundle":
            if depth < MAX_BUNDLE_DEPTH:
                entries = [e for e in listed(value.get("entry")) if isinstance(e, dict)]
                self.references.update(
                    (e["fullUrl"].strip(), e["resource"])
                    for e in entries
                    if isinstance(e.get("fullUrl"), str) and isinstance(e.get("resource"), dict)
                )
                for entry in entries:
                    self._add(entry.get("resource"), depth + 1)
            return
        if kind != "OperationOutcome":
            self._arrived.append(value)

    def _sort(self) -> dict[str, list[Resource]]:
        """Whose each resource is and which copy counts, once the whole record is in."""
        if self._by_type is not None:
            return self._by_type
        identity = self._identity()
        self.left_out = left_out = Counter[tuple[str, str]]()
        # Copies of one resource by (type, id), in the order of first arrival; a resource
        # without an id is its own entry, by its place in the record.
        copies: dict[tuple[str, str] | int, list[Resource]] = {}
        for index, resource in enumerate(self._arrived):
            kind = resource["resourceType"]
            if not self._belongs(resource, identity):
                if kind != "Patient" or text(resource.get("id")) not in identity.ids:
                    left_out[(kind, "other-patient")] += 1
                continue
            resource_id = text(resource.get("id"))
            key = (kind, resource_id) if resource_id else index
            found = copies.get(key)
            if found is None:
                copies[key] = [resource]
            else:
                found.append(resource)
        by_type: dict[str, list[Resource]] = {}
        for key, found in copies.items():
            if isinstance(key, tuple):
                if any(map(_entered_in_error, found)):
                    left_out[(key[0], ENTERED_IN_ERROR)] += 1
                    continue
                if len(found) > 1:
                    found = _latest(found) if key[0] in READ_TYPES else found[:1]
            by_type.setdefault(found[0]["resourceType"], []).extend(found)
        self._by_type = by_type
        return by_type

    def _belongs(self, resource: Resource, identity: Identity) -> bool:
        kind = resource["resourceType"]
        if kind == "Patient":
            return resource.get("id") in (None, self.patient_id)
        named = False
        for name in PATIENT_REFERENCES:
            if name in resource:
                if identity.names(resource[name]):
                    return True
                named = True
        return not named and kind not in PATIENT_OWNED

    def _identity(self) -> Identity:
        """This patient's ids, identifiers and full URLs, from the context and the Patient."""
        patient_id = self.patient_id or ""
        patients = [
            r
            for r in self._arrived
            if r["resourceType"] == "Patient" and r.get("id") in (None, patient_id)
        ]
        ids = {patient_id}
        for patient in patients:
            ids |= _linked(patient)
        ids |= {  # another record of the patient that names this one as merged or the same
            str(r.get("id"))
            for r in self._arrived
            if r["resourceType"] == "Patient"
            and isinstance(r.get("id"), str)
            and patient_id in _linked(r)
        }
        identifiers = {
            key
            for patient in patients
            for i in listed(patient.get("identifier"))
            if isinstance(i, dict) and (key := _identifier_key(i)) is not None
        }
        urls = {f"urn:uuid:{patient_id}"} | {
            url
            for url, r in self.references.items()
            if r.get("resourceType") == "Patient"
            and text(r.get("id")) in ids
            and (url.startswith("urn:") or self._on_server(url))
        }
        server = self.fhir_server.rstrip("/") if self.fhir_server else None
        return Identity(frozenset(ids), frozenset(identifiers), frozenset(urls), server)

    def _on_server(self, url: str) -> bool:
        return bool(self.fhir_server) and url.startswith(str(self.fhir_server).rstrip("/") + "/")


def _linked(patient: Resource) -> set[str]:
    """Ids of the Patient records a Patient links to as the same person."""
    found: set[str] = set()
    for link in listed(patient.get("link")):
        if not isinstance(link, dict) or text(link.get("type")) not in LINKS:
            continue
        other = link.get("other")
        target = text(other.get("reference")) if isinstance(other, dict) else None
        match = _PATIENT.search(target) if target else None
        if match:
            found.add(match[1])
    return found


def _identifier_key(identifier: dict[str, Any]) -> tuple[str, str] | None:
    value = text(identifier.get("value"))
    return (text(identifier.get("system")) or "", value) if value else None


def _entered_in_error(resource: Resource) -> bool:
    """A copy withdrawn by its author: status, or a Condition's verification status."""
    status = resource.get("status")
    if status is not None and text(status) == ENTERED_IN_ERROR:
        return True
    verification = resource.get("verificationStatus")
    if verification is None:
        return False
    return any(text(c.get("code")) == ENTERED_IN_ERROR for c in codings(verification))


def _latest(copies: list[Resource]) -> list[Resource]:
    """The copy that counts: the later versionId, then lastUpdated, then issued. Copies that
    none of these orders are all kept (identical ones once)."""
    chosen = [copies[0]]
    for copy in copies[1:]:
        later = _later(copy, chosen[0])
        if later is True:
            chosen = [copy]
        elif later is None and all(copy != c for c in chosen):
            chosen.append(copy)
    return chosen


def _later(one: Resource, other: Resource) -> bool | None:
    """Whether `one` is a later version than `other` (None: nothing tells)."""
    for read in (_version, _last_updated, _issued):
        a, b = read(one), read(other)
        if a is not None and b is not None and a != b:
            return a > b  # type: ignore[operator]
    return None


def _version(resource: Resource) -> int | None:
    meta = resource.get("meta")
    version = text(meta.get("versionId")) if isinstance(meta, dict) else None
    return int(version) if version and version.isdigit() else None


def _last_updated(resource: Resource) -> datetime | None:
    """meta.lastUpdated, also as some servers write it: a space for the T, spaces around."""
    meta = resource.get("meta")
    value = text(meta.get("lastUpdated")) if isinstance(meta, dict) else None
    match = _LAST_UPDATED.match(value) if value else None
    if match is None:
        return None
    zone = (match[3] or "Z").replace("Z", "+00:00")
    zone = zone if ":" in zone else f"{zone[:3]}:{zone[3:]}"
    found = instant(f"{match[1]}T{match[2]}{zone}")
    return found[0] if found else None


def _issued(resource: Resource) -> datetime | None:
    found = instant(resource.get("issued"))
    return found[0] if found else None


def is_prefetched(value: Any) -> bool:
    """Absent, null, or an OperationOutcome all mean "not prefetched" (CDS Hooks §Prefetch)."""
    return isinstance(value, dict) and value.get("resourceType") not in (None, "OperationOutcome")


def unsatisfied(
    prefetch: dict[str, Any] | None, templates: Iterable[PrefetchTemplate]
) -> list[PrefetchTemplate]:
    """The service's templates the client did not fill."""
    prefetch = prefetch or {}
    return [t for t in templates if not is_prefetched(prefetch.get(t.key))]
