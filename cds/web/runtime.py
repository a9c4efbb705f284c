"""The long-lived parts every request shares, built once at start-up.

Its own module so that the app factory, the routes and the operations endpoints all import it
from one place below them, instead of from each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from cds.decision.catalog import Service, load_catalog
from cds.decision.fhir_client import FhirFetcher
from cds.decision.pipeline import Pipeline, build_pipeline
from cds.knowledge import load_knowledge
from cds.settings import Settings
from cds.store.issued_cards import IssuedCards
from cds.store.storage import DatabaseReplayCache, FeedbackStore, make_engine, migrate
from cds.web.auth import JwtVerifier, parse_trusted_issuers


@dataclass
class Runtime:
    """The long-lived parts every request shares (read-only after start-up)."""

    settings: Settings
    catalog: dict[str, Service]
    pipeline: Pipeline
    store: FeedbackStore
    verifier: JwtVerifier | None
    fetcher: FhirFetcher
    issued: IssuedCards
    replay_cache: DatabaseReplayCache


def build_runtime(settings: Settings, http_client: httpx.AsyncClient) -> Runtime:
    knowledge = load_knowledge(settings.rules_dir)
    engine = make_engine(settings.database_url)
    migrate(engine)
    verifier = None
    replay_cache = DatabaseReplayCache(engine)
    if settings.auth == "jwt":
        settings.check_audience()
        verifier = JwtVerifier(
            parse_trusted_issuers(settings.trusted_issuers),
            replay_cache,
            leeway_seconds=settings.jwt_leeway_seconds,
            jwks_ttl_seconds=settings.jwks_cache_seconds,
        )
    store = FeedbackStore(engine)
    return Runtime(
        settings=settings,
        catalog=load_catalog(settings.hooks_dir, knowledge),
        pipeline=build_pipeline(knowledge, settings),
        store=store,
        verifier=verifier,
        fetcher=FhirFetcher(
            http_client,
            settings.fhir_allowed_bases,
            settings.fhir_timeout_seconds,
            settings.fhir_max_pages,
        ),
        issued=IssuedCards(store),
        replay_cache=replay_cache,
    )
