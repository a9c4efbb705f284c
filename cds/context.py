"""Context assembly: the patient's record from prefetch, else from the EHR's FHIR server.

Decides when the answer must be 412: a required template was neither prefetched nor
fetchable, and no resource of its type arrived under another key. Optional templates
(`required: false` in hooks/) only narrow what the rules can see, and the log says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cds.catalog import Service
from cds.cdshooks import HookRequest
from cds.fhir_client import FetchResult, FhirFetcher
from cds.prefetch import ResourcePool, unsatisfied


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


async def assemble(request: HookRequest, service: Service,
                   fetcher: FhirFetcher) -> PatientRecord:
    patient_id = request.context.patientId
    prefetch = request.prefetch or {}
    pool = ResourcePool()
    pool.add_all(prefetch.values(), patient_id)
    missing = unsatisfied(prefetch, service.prefetch)
    record = PatientRecord(pool)
    if not missing:
        return record
    if request.fhirServer is None:
        results = [FetchResult(t.key, [], "not prefetched and no fhirServer given")
                   for t in missing]
    else:
        token = request.fhirAuthorization.access_token if request.fhirAuthorization else None
        context: dict[str, Any] = request.context.model_dump(exclude_none=True)
        results = await fetcher.fetch(str(request.fhirServer), token, missing, context)
    required_failures: dict[str, str] = {}
    for template, result in zip(missing, results, strict=True):
        if result.error is None:
            pool.add_all(result.resources, patient_id)
            record.fetched_keys.append(template.key)
        elif not template.required or template.resource_type in pool.by_type:
            # Optional for the rules, or covered by resources the client sent under
            # another key: answer from what is available, and say so in the log.
            record.unavailable[template.key] = result.error
        else:
            required_failures[template.key] = result.error
    if required_failures:
        raise PreconditionFailed(required_failures)
    return record
