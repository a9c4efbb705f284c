"""HTTP routes: discovery, hook calls, feedback (CDS Hooks 2.0 §Discovery, §Calling, §Feedback).

The hook call is the hot path (an EHR calls it on every chart open while the clinician
waits), so it pays for each step once: the body is decoded once, by msgspec, and of the
record only what the facts read (`AuthenticatedRoute`, `cds.decision.request_body`);
the decision runs inline, since it is pure-Python CPU work that a thread pool in the same
process only slows down with GIL hand-offs; and the cards are serialised once, by orjson,
without FastAPI validating the response model again (the model still documents the answer).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from structlog.contextvars import bind_contextvars

from cds import metrics
from cds.cdshooks import (
    Card,
    CardsResponse,
    DiscoveryResponse,
    FeedbackRequest,
    HookRequest,
)
from cds.decision import catalog, request_body
from cds.decision.catalog import Service
from cds.decision.context import PreconditionFailed, assemble
from cds.errors import operation_outcome
from cds.logs import log
from cds.settings import app_launch_url
from cds.web.auth import AuthError, VerifiedClient
from cds.web.runtime import Runtime


class DecodedRequest(Request):
    """A request whose JSON body is decoded by `cds.decision.request_body` (msgspec, lazily)."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = request_body.parse(await self.body())
        return self._json


class AuthenticatedRoute(APIRoute):
    """FastAPI's route, authenticating the client before anything else, then reading the body
    as a `DecodedRequest`.

    FastAPI reads and parses a body before it runs any dependency, so an anonymous caller
    could make the service parse whatever it sends, and learn from a 400 what it thinks of
    it. Here the token is verified first (`authenticate`); the `Client` dependency only hands
    on the result. The body is then read by FastAPI through `request.json()`, so validation,
    its error answers and the OpenAPI documentation stay FastAPI's.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def authenticated(request: Request) -> Response:
            request.state.client = await authenticate(request)
            return await handler(DecodedRequest(request.scope, request.receive))

        return authenticated


router = APIRouter(route_class=AuthenticatedRoute)
_OUTCOME_SCHEMA = {
    "type": "object",
    "required": ["resourceType", "issue"],
    "properties": {
        "resourceType": {"type": "string", "enum": ["OperationOutcome"]},
        "issue": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["severity", "code"],
                "properties": {
                    "severity": {"type": "string"},
                    "code": {"type": "string"},
                    "diagnostics": {"type": "string"},
                },
            },
        },
    },
}


def outcomes(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses for the OperationOutcome errors a route can answer.

    "4XX" keeps FastAPI from documenting its default 422, which this service never sends.
    """
    content = {"application/fhir+json": {"schema": _OUTCOME_SCHEMA}}
    documented: dict[int | str, dict[str, Any]] = {
        status: {"description": HTTPStatus(status).phrase, "content": content}
        for status in statuses
    }
    documented["4XX"] = {"description": "Other client errors", "content": content}
    return documented


def runtime(request: Request) -> Runtime:
    """The shared parts built at start-up (see `cds.web.runtime.build_runtime`)."""
    built: Runtime = request.app.state.runtime
    return built


async def authenticate(request: Request) -> VerifiedClient | None:
    """Verify the client's JWT against the exact URL it called (CDS Hooks §Trusting Clients).

    The URL is the public base URL and the path; only with TWITCH_CDS_DEV_AUDIENCE_FROM_HOST
    (start-up refuses JWT mode without one or the other) is it the URL as the request names it.
    A request with several Authorization headers is refused: which one counts would depend
    on the code reading them.
    """
    rt = runtime(request)
    if rt.verifier is None:
        return None
    base = rt.settings.public_base_url
    audience = (base.rstrip("/") + request.url.path) if base else str(request.url.replace(query=""))
    try:
        authorization = request.headers.getlist("authorization")
        if len(authorization) > 1:
            raise AuthError("more than one Authorization header")
        client = await rt.verifier.verify(next(iter(authorization), None), audience)
    except AuthError as error:
        log.info("authentication failed", reason=error.reason)
        raise HTTPException(
            401, error.reason, headers={"WWW-Authenticate": error.www_authenticate}
        ) from None
    bind_contextvars(issuer=client.issuer)  # every later line of the request names the client
    return client


async def authenticated_client(request: Request) -> VerifiedClient | None:
    """The client `AuthenticatedRoute` verified before the body was read."""
    client: VerifiedClient | None = request.state.client
    return client


Client = Annotated[VerifiedClient | None, Depends(authenticated_client)]


def find_service(request: Request, service_id: str) -> Service:
    service = runtime(request).catalog.get(service_id)
    if service is None:
        # The id is not echoed: a misconfigured client may put an identifier in the path.
        raise HTTPException(404, "no CDS service with this id; see GET /cds-services")
    return service


@router.get(
    "/cds-services",
    response_model=DiscoveryResponse,
    response_model_exclude_none=True,
    responses=outcomes(401),
)
async def discovery(request: Request, _client: Client) -> DiscoveryResponse:
    return catalog.discovery(runtime(request).catalog)


@router.post(
    "/cds-services/{service_id}",
    response_model=CardsResponse,
    responses=outcomes(400, 401, 404, 412, 413, 415),
)
async def call_service(
    service_id: str, body: HookRequest, request: Request, client: Client
) -> Response:
    rt = runtime(request)
    service = find_service(request, service_id)
    if body.hook != service.hook:
        return operation_outcome(400, f"service {service.id} answers hook {service.hook!r}")
    started = time.perf_counter()
    try:
        record = await assemble(body, service, rt.fetcher)
    except PreconditionFailed as failed:
        log.info(
            "precondition failed",
            service=service.id,
            hook=service.hook,
            keys=sorted(failed.reasons),
        )
        return operation_outcome(
            412, [f"{key}: {reason}" for key, reason in sorted(failed.reasons.items())]
        )
    fetched_ms = (time.perf_counter() - started) * 1000
    decision = rt.pipeline.decide(
        body, service, record.pool, datetime.now(UTC).date(), launch_url(request)
    )
    facts = decision.facts
    metrics.count_cards(service.id, decision.cards)
    unread = facts.unread_counts() + record.pool.left_out_counts()
    metrics.count_unread(unread.items())
    rt.issued.record(service.id, decision.cards)
    log.info(
        "hook",
        service=service.id,
        hook=service.hook,
        tenant=client.tenant if client else None,
        resources=record.pool.count(),
        skipped=record.pool.skipped,
        other_patient=record.pool.other_patient,
        deceased=decision.deceased,
        unread={f"{kind}/{reason}": n for (kind, reason), n in sorted(unread.items())},
        tolerated_faults=dict(sorted(facts.faults.items())),
        fetched=record.fetched_keys,
        unavailable=sorted(record.unavailable),
        facts=facts.kinds(),
        cards=len(decision.cards),
        fetch_ms=round(fetched_ms, 2),
        total_ms=round((time.perf_counter() - started) * 1000, 2),
    )
    return cards_response(decision.cards)


def launch_url(request: Request) -> str:
    """The assessment app's SMART launch URL on the URL of the request (the pipeline uses
    TWITCH_CDS_PUBLIC_BASE_URL's instead when it is set)."""
    return app_launch_url(str(request.base_url))


def cards_response(cards: list[Card]) -> Response:
    """`CardsResponse` as JSON, null fields left out (the spec forbids null values)."""
    answer = CardsResponse(cards=cards).model_dump(mode="json", exclude_none=True)
    return Response(orjson.dumps(answer), media_type="application/json")


@router.post("/cds-services/{service_id}/feedback", responses=outcomes(400, 401, 404, 413, 415))
async def feedback(
    service_id: str, body: FeedbackRequest, request: Request, _client: Client
) -> JSONResponse:
    service = find_service(request, service_id)
    stored = await run_in_threadpool(runtime(request).store.store, service.id, body.feedback)
    metrics.count_feedback(service.id, ((e.topic, e.outcome) for e in stored))
    log.info("feedback", service=service.id, entries=len(body.feedback), new=len(stored))
    return JSONResponse({"stored": len(stored), "received": len(body.feedback)})
