"""The ASGI application: wiring of settings, knowledge, engine, storage and routes.

`create_app(settings)` builds everything once; requests only read it. Tests build an app
with their own `Settings`; `twitch-cds serve` and other ASGI servers use `app` (the factory
`cds.web.app:create_app` with default settings).
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.staticfiles import StaticFiles

from cds.assessment import app as assessment_app
from cds.assessment.app import AssessmentApp
from cds.assessment.session import SessionCipher
from cds.errors import describe_validation_errors, operation_outcome
from cds.logs import configure_logging, log
from cds.settings import Settings, get_settings
from cds.store import housekeeping
from cds.web import operations, routes
from cds.web.middleware import EdgeMiddleware
from cds.web.runtime import Runtime, build_runtime


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.log_level)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        timeout = httpx.Timeout(settings.fhir_timeout_seconds)
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as client:
            app.state.runtime = build_runtime(settings, client)
            app.state.assessment_app = AssessmentApp(
                assessment=app.state.runtime.pipeline.knowledge.assessment,
                http=client,
                cipher=SessionCipher(settings.app_session_key),
                client_id=settings.app_client_id,
                allowed_bases=tuple(settings.fhir_allowed_bases),
                frame_ancestors=settings.app_frame_ancestors,
                public_base_url=settings.public_base_url,
            )
            # What start-up built (models, rules, knowledge) lives as long as the process: out
            # of the collector's generations, each collection no longer walks it, which a large
            # request body (hundreds of thousands of objects) otherwise triggers again and again.
            gc.freeze()
            if settings.auth == "none":
                log.warning(
                    "authentication disabled (TWITCH_CDS_AUTH=none): "
                    "for local development and the CDS Hooks sandbox only"
                )
            runtime: Runtime = app.state.runtime
            log_trust_relaxations(runtime)
            log.info("started", services=len(runtime.catalog), auth=settings.auth)
            chores = [asyncio.create_task(runtime.issued.run())]
            if runtime.verifier is not None:
                chores.append(
                    asyncio.create_task(
                        housekeeping.purge_expired_tokens(
                            runtime.replay_cache, housekeeping.REPLAY_PURGE_SECONDS
                        )
                    )
                )
            yield
            for chore in chores:
                chore.cancel()
            await runtime.issued.flush()
            runtime.store.engine.dispose()
            log.info("stopped")

    app = FastAPI(
        title="twitch-cds",
        version="0.1.0",
        lifespan=lifespan,
        description="CDS Hooks service: causes and red flags of muscle twitching.",
        docs_url="/docs" if settings.api_docs else None,
        redoc_url="/redoc" if settings.api_docs else None,
        openapi_url="/openapi.json" if settings.api_docs else None,
    )
    edge_routers = [routes.router, operations.router, assessment_app.router]
    if settings.metrics_port is None:  # else served on its own port (cds.web.serving)
        edge_routers.append(operations.metrics_router)
    for router in edge_routers:
        app.include_router(router)
    # The assessment page's own files, and LHC-Forms as the image build copied it.
    app.mount("/app/static", StaticFiles(directory=assessment_app.PAGE_DIR), name="app-static")
    if settings.app_assets_dir.is_dir():
        app.mount(
            "/app/assets/lforms",
            StaticFiles(directory=settings.app_assets_dir),
            name="app-lforms",
        )
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
    # Private Network Access: a public https EHR page (the CDS Hooks sandbox) may call a
    # service on a private or loopback address only when its preflight allows it.
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type"],
        allow_private_network=True,
        max_age=600,
    )
    app.add_middleware(
        EdgeMiddleware,
        max_body_bytes=settings.max_body_bytes,
        body_budget_bytes=settings.body_budget_bytes,
        routes=[route for router in edge_routers for route in router.routes],
    )
    return app


def log_trust_relaxations(runtime: Runtime) -> None:
    """Warn at start about every way JWT verification was configured below the standard, so
    that an operator reading the log sees what a development setting left open."""
    if runtime.verifier is None:
        return
    if not runtime.settings.public_base_url:
        log.warning(
            "token audience taken from the Host header (TWITCH_CDS_DEV_AUDIENCE_FROM_HOST): "
            "a client may name any audience; for development only, set "
            "TWITCH_CDS_PUBLIC_BASE_URL in production"
        )
    for issuer in runtime.verifier.issuers_without_typ:
        log.warning("tokens of this issuer may omit typ (require_typ false)", issuer=issuer)


async def _invalid_request(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return operation_outcome(400, describe_validation_errors(list(exc.errors())))


async def _http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    return operation_outcome(
        exc.status_code, str(exc.detail), headers=dict(exc.headers) if exc.headers else None
    )


async def _unexpected(_request: Request, exc: Exception) -> Response:
    log.error("unhandled error", error=type(exc).__name__)
    return operation_outcome(500, "internal error")
