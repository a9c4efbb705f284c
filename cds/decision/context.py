"""Context assembly: the patient's record from prefetch, else from the EHR's FHIR server.

Decides when the answer must be 412: a required template was neither prefetched nor
fetchable, and no resource of its type arrived complete under another key. Optional templates
(`required: false` in hooks/) only narrow what the rules can see, and the log says so.
A prefetched search Bundle with a `next` link is only its first page (CDS Hooks: "results may
be paginated"): its template is fetched in full, since the newest result may be on a later page.
Medications that therapy or a draft order refers to (`medicationReference`) but that neither
prefetch, the `_include` of the templates nor the draft orders' Bundle brought are read from the
FHIR server in one search; without them only the reference's display is known.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cds.cdshooks import HookRequest
from cds.decision.catalog import PrefetchTemplate, Service
from cds.decision.facts.medications import unresolved_medication_ids
from cds.decision.fhir_client import FetchResult, FhirFetcher
from cds.decision.pipeline import draft_medications, draft_orders
from cds.decision.prefetch import ResourcePool, unsatisfied

REFERENCED_MEDICATIONS = "referencedMedications"
# At most this many referenced Medications are searched for (one GET, bounded URL length).
MAX_REFERENCED_MEDICATIONS = 50


class PreconditionFailed(Exception):
    """Required data could not be obtained: the answer is 412 with these reasons."""

    def __init__(self, reasons: dict[str, str]) -> None:
        super().__init__("required prefetch data unavailable")
        self.reasons = reasons


@dataclass
class PatientRecord:
    pool: ResourcePool
    fetched_keys: list[str] = field(default_factory=list)
    # Keys that could not be obtained but did not block the answer, with the reason.
    unavailable: dict[str, str] = field(default_factory=dict)


async def assemble(request: HookRequest, service: Service, fetcher: FhirFetcher) -> PatientRecord:
    patient_id = request.context.patientId
    prefetch = request.prefetch or {}
    pool = ResourcePool(_server(request))
    pool.add_all(prefetch.values(), patient_id)
    unfilled = unsatisfied(prefetch, service.prefetch)
    missing = [t for t in service.prefetch if t in unfilled or has_next_page(prefetch.get(t.key))]
    record = PatientRecord(pool)
    if missing:
        await _fetch_missing(request, fetcher, prefetch, unfilled, missing, record)
    await _fetch_referenced_medications(request, service, fetcher, record)
    return record


async def _fetch_missing(
    request: HookRequest,
    fetcher: FhirFetcher,
    prefetch: dict[str, Any],
    unfilled: list[PrefetchTemplate],
    missing: list[PrefetchTemplate],
    record: PatientRecord,
) -> None:
    """Fetch the templates the client did not fill (or only a first page of); 412 when a
    required one cannot be obtained."""
    patient_id, pool = request.context.patientId, record.pool
    if request.fhirServer is None:
        results = [
            FetchResult(
                t.key,
                [],
                ("only a first page prefetched" if t not in unfilled else "not prefetched")
                + " and no fhirServer given",
            )
            for t in missing
        ]
    else:
        token = request.fhirAuthorization.access_token if request.fhirAuthorization else None
        context: dict[str, Any] = request.context.model_dump(exclude_none=True)
        results = await fetcher.fetch(str(request.fhirServer), token, missing, context)
    required_failures: dict[str, str] = {}
    for template, result in zip(missing, results, strict=True):
        if result.error is None:
            pool.add_all(result.resources, patient_id)
            record.fetched_keys.append(template.key)
        elif not template.required or _covered_elsewhere(
            prefetch, template, patient_id, _server(request)
        ):
            # Optional for the rules, or covered by resources the client sent under
            # another key: answer from what is available, and say so in the log.
            record.unavailable[template.key] = result.error
        else:
            required_failures[template.key] = result.error
    if required_failures:
        raise PreconditionFailed(required_failures)


async def _fetch_referenced_medications(
    request: HookRequest, service: Service, fetcher: FhirFetcher, record: PatientRecord
) -> None:
    """Read the Medications that therapy or a draft order refers to but neither the record nor
    the draft orders' Bundle holds (optional data)."""
    pool = record.pool
    ids = sorted(
        unresolved_medication_ids(
            pool.by_type,
            {**pool.references, **draft_medications(request)},
            draft_orders(request, service),
        )
    )
    if not ids or request.fhirServer is None:
        return
    template = PrefetchTemplate(
        REFERENCED_MEDICATIONS,
        "Medication?_id=" + ",".join(ids[:MAX_REFERENCED_MEDICATIONS]),
        required=False,
    )
    token = request.fhirAuthorization.access_token if request.fhirAuthorization else None
    [result] = await fetcher.fetch(str(request.fhirServer), token, [template], {})
    if result.error is None:
        pool.add_all(result.resources, request.context.patientId)
        record.fetched_keys.append(REFERENCED_MEDICATIONS)
    else:
        record.unavailable[REFERENCED_MEDICATIONS] = result.error


def has_next_page(value: Any) -> bool:
    """A Bundle announcing a `next` page holds only part of the client's search."""
    if not isinstance(value, dict) or value.get("resourceType") != "Bundle":
        return False
    links = value.get("link")
    return isinstance(links, list) and any(
        isinstance(link, dict) and link.get("relation") == "next" for link in links
    )


def _server(request: HookRequest) -> str | None:
    """The request's FHIR server: absolute references on it name its patients."""
    return str(request.fhirServer) if request.fhirServer is not None else None


def _covered_elsewhere(
    prefetch: dict[str, Any], template: PrefetchTemplate, patient_id: str, fhir_server: str | None
) -> bool:
    """Whether another key brought complete resources of the template's type.

    The template's own key does not count: it failed, or holds only a first page, and a first
    page alone can show an old normal result while the newest, abnormal one is on page 3.
    """
    others = ResourcePool(fhir_server)
    others.add_all(
        (
            value
            for key, value in prefetch.items()
            if key != template.key and not has_next_page(value)
        ),
        patient_id,
    )
    return template.resource_type in others.by_type
