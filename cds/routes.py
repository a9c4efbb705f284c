"""HTTP routes: discovery, hook calls, feedback (CDS Hooks 2.0 §Discovery, §Calling, §Feedback)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from http import HTTPStatus
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from structlog.contextvars import bind_contextvars

from cds import catalog, metrics
from cds.auth import AuthError, VerifiedClient
from cds.catalog import Service
from cds.cdshooks import (
    CardsResponse,
    DiscoveryResponse,
    FeedbackRequest,
    HookRequest,
)
from cds.context import PreconditionFailed, assemble
from cds.errors import operation_outcome
from cds.logs import log

if TYPE_CHECKING:  # cds.app imports this module to mount the router
    from cds.app import Runtime

router = APIRouter()
EXCLUDE_NONE = {"response_model_exclude_none": True}
_OUTCOME_SCHEMA = {"type": "object", "required": ["resourceType", "issue"], "properties": {
    "resourceType": {"type": "string", "enum": ["OperationOutcome"]},
    "issue": {"type": "array", "minItems": 1, "items": {
        "type": "object", "required": ["severity", "code"], "properties": {
            "severity": {"type": "string"}, "code": {"type": "string"},
            "diagnostics": {"type": "string"}}}}}}


def outcomes(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses for the OperationOutcome errors a route can answer.

    "4XX" keeps FastAPI from documenting its default 422, which this service never sends.
    """
    content = {"application/fhir+json": {"schema": _OUTCOME_SCHEMA}}
    documented: dict[int | str, dict[str, Any]] = {
        status: {"description": HTTPStatus(status).phrase, "content": content}
        for status in statuses}
    documented["4XX"] = {"description": "Other client errors", "content": content}
    return documented


def runtime(request: Request) -> Runtime:
    """The shared parts built at start-up (see `cds.app.build_runtime`)."""
    return request.app.state.runtime


async def authenticate(request: Request) -> VerifiedClient | None:
    """Verify the client's JWT against the exact URL it called (CDS Hooks §Trusting Clients)."""
    rt = runtime(request)
    if rt.verifier is None:
        return None
    base = rt.settings.public_base_url
    audience = (base.rstrip("/") + request.url.path) if base else \
        str(request.url.replace(query=""))
    try:
        client = await rt.verifier.verify(request.headers.get("authorization"), audience)
    except AuthError as error:
        log.info("authentication failed", reason=error.reason)
        raise HTTPException(401, error.reason,
                            headers={"WWW-Authenticate": error.www_authenticate}) from None
    bind_contextvars(issuer=client.issuer)  # every later line of the request names the client
    return client


Client = Annotated[VerifiedClient | None, Depends(authenticate)]


def find_service(request: Request, service_id: str) -> Service:
    service = runtime(request).catalog.get(service_id)
    if service is None:
        # The id is not echoed: a misconfigured client may put an identifier in the path.
        raise HTTPException(404, "no CDS service with this id; see GET /cds-services")
    return service


@router.get("/cds-services", response_model=DiscoveryResponse, **EXCLUDE_NONE,
            responses=outcomes(401))
async def discovery(request: Request, _client: Client) -> DiscoveryResponse:
    return catalog.discovery(runtime(request).catalog)


@router.post("/cds-services/{service_id}", response_model=CardsResponse, **EXCLUDE_NONE,
             responses=outcomes(400, 401, 404, 412, 413, 415))
async def call_service(service_id: str, body: HookRequest, request: Request,
                       client: Client) -> CardsResponse | JSONResponse:
    rt = runtime(request)
    service = find_service(request, service_id)
    if body.hook != service.hook:
        return operation_outcome(400, f"service {service.id} answers hook {service.hook!r}")
    started = time.perf_counter()
    try:
        record = await assemble(body, service, rt.fetcher)
    except PreconditionFailed as failed:
        log.info("precondition failed", service=service.id, hook=service.hook,
                 keys=sorted(failed.reasons))
        return operation_outcome(412, [f"{key}: {reason}"
                                       for key, reason in sorted(failed.reasons.items())])
    fetched_ms = (time.perf_counter() - started) * 1000
    decision = await run_in_threadpool(rt.pipeline.decide, body, service, record.pool,
                                       datetime.now(UTC).date())
    facts = decision.facts
    metrics.count_cards(service.id, decision.cards)
    rt.issued.record(service.id, decision.cards)
    log.info("hook", service=service.id, hook=service.hook,
             tenant=client.tenant if client else None,
             resources=record.pool.count(), skipped=record.pool.skipped,
             other_patient=record.pool.other_patient,
             invalid_resources=facts.invalid_resources, unjudged=facts.unjudged_results,
             fetched=record.fetched_keys, unavailable=sorted(record.unavailable),
             facts=facts.kinds(), cards=len(decision.cards),
             fetch_ms=round(fetched_ms, 2),
             total_ms=round((time.perf_counter() - started) * 1000, 2))
    return CardsResponse(cards=decision.cards)


@router.post("/cds-services/{service_id}/feedback",
             responses=outcomes(400, 401, 404, 413, 415))
async def feedback(service_id: str, body: FeedbackRequest, request: Request,
                   _client: Client) -> JSONResponse:
    service = find_service(request, service_id)
    stored = await run_in_threadpool(runtime(request).store.store, service.id, body.feedback)
    metrics.count_feedback(service.id, stored)
    log.info("feedback", service=service.id, entries=len(body.feedback), new=len(stored))
    return JSONResponse({"stored": len(stored), "received": len(body.feedback)})
