"""Operational endpoints for orchestrators and monitoring: liveness, readiness, metrics.

They are unauthenticated (probes and Prometheus carry no CDS client JWT), answer no patient
data, and are left out of the OpenAPI document. A reverse proxy facing EHRs should not pass
`/metrics` on (deploy/proxy/haproxy.cfg refuses it); Prometheus scrapes each replica directly.
With `TWITCH_CDS_METRICS_PORT` set, `/metrics` leaves the service port (`metrics_router` is not
mounted) and `cds.web.serving` answers it on that port instead.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from cds import metrics
from cds.logs import log
from cds.web.runtime import Runtime

router = APIRouter(include_in_schema=False)
metrics_router = APIRouter(include_in_schema=False)


@router.get("/health")
@router.get("/healthz")
async def health() -> dict[str, str]:
    """Liveness: the process answers HTTP. Says nothing about the database, on purpose: a
    database outage must not make an orchestrator restart every replica."""
    return {"status": "ok"}


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    """Readiness: rules and service definitions are loaded and the database answers.

    A proxy or orchestrator sends traffic only to a replica that is ready; 503 otherwise,
    with the failed checks named (no connection strings or error messages: they may hold
    passwords).
    """
    runtime: Runtime | None = getattr(request.app.state, "runtime", None)
    checks = {
        "rules": runtime is not None and bool(runtime.catalog),
        "database": runtime is not None and await run_in_threadpool(_database_answers, runtime),
    }
    status = 200 if all(checks.values()) else 503
    if status != 200:
        log.warning("not ready", failed=sorted(name for name, ok in checks.items() if not ok))
    return JSONResponse(
        {
            "status": "ready" if status == 200 else "not ready",
            "checks": {name: "ok" if ok else "failed" for name, ok in checks.items()},
        },
        status_code=status,
    )


def _database_answers(runtime: Runtime) -> bool:
    try:
        with runtime.store.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as error:  # any driver error means "not ready", never a 500
        log.warning("database check failed", error=type(error).__name__)
        return False
    return True


@metrics_router.get("/metrics")
async def prometheus_metrics() -> Response:
    """Prometheus text format; with several worker processes, the sum over all of them."""
    body, content_type = await run_in_threadpool(metrics.exposition)
    return Response(body, media_type=content_type)
