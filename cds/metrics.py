"""Prometheus metrics: what an operator graphs and alerts on, without patient data.

Labels are bounded sets only (route templates, service ids from the catalogue, indicators,
card topics from rules/, prefetch keys, feedback outcomes): never a raw path, an id from a
request or free text, so a client cannot grow the series without bound.

`twitch-cds serve` runs uvicorn with several worker processes, each with its own counters.
prometheus-client's multiprocess mode sums them: when `PROMETHEUS_MULTIPROC_DIR` is set
(`cds.web.serving` sets it, to an emptied directory, before any worker starts), every process
writes its values to files there and `/metrics` aggregates those files, whichever worker
answers. Without it (tests, in-process use) the process's own registry is exposed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

if TYPE_CHECKING:  # at run time only the types: `twitch-cds serve` imports this module too
    from starlette.types import Scope

    from cds.cdshooks import Card

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# prometheus-client chooses where values live when it is imported (just above): expose
# from the same place, even if the variable is set later in this process.
MULTIPROCESS = bool(os.environ.get(MULTIPROC_ENV))

REQUESTS = Counter(
    "twitch_cds_http_requests", "HTTP requests answered", ["method", "route", "service", "status"]
)
LATENCY = Histogram(
    "twitch_cds_http_request_duration_seconds",
    "Time from request start to the end of the answer",
    ["method", "route", "service"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
CARDS = Counter("twitch_cds_cards", "Cards returned", ["service", "indicator", "topic"])
FHIR_QUERIES = Counter(
    "twitch_cds_fhir_fallback_queries",
    "Prefetch templates fetched from the EHR's FHIR server",
    ["key"],
)
FHIR_FAILURES = Counter(
    "twitch_cds_fhir_fallback_failures",
    "Prefetch templates the FHIR server did not deliver",
    ["key"],
)
UNREAD = Counter(
    "twitch_cds_resources_unread",
    "Resources that exist in a record but were not used, by type and reason",
    ["resource_type", "reason"],
)
# The resource types a label may name; any other is "other" (the type comes from the request).
UNREAD_TYPES = frozenset(
    {
        "Patient",
        "Observation",
        "Condition",
        "MedicationRequest",
        "MedicationStatement",
        "Medication",
        "FamilyMemberHistory",
        "ServiceRequest",
        "Encounter",
        "EpisodeOfCare",
    }
)
FEEDBACK = Counter(
    "twitch_cds_feedback_entries",
    "New feedback entries stored, by the topic of the card they are about",
    ["service", "topic", "outcome"],
)


def exposed_registry() -> CollectorRegistry:
    """What a scrape reports: the sum of every worker's files, or this process's registry."""
    if MULTIPROCESS:
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry
    return REGISTRY


def exposition() -> tuple[bytes, str]:
    """The current metrics in Prometheus text format, and its content type."""
    return generate_latest(exposed_registry()), CONTENT_TYPE_LATEST


def observe_request(method: str, route: str, service: str, status: int, seconds: float) -> None:
    """One answered request. `service` is a catalogue id or "" (discovery, probes...)."""
    REQUESTS.labels(method, route, service, str(status)).inc()
    LATENCY.labels(method, route, service).observe(seconds)


def service_of(scope: Scope) -> str:
    """The catalogue id of the service a request addressed, or "" (an unknown id is "")."""
    service_id = scope.get("path_params", {}).get("service_id")
    runtime = getattr(getattr(scope.get("app"), "state", None), "runtime", None)
    catalog = getattr(runtime, "catalog", {})
    return service_id if isinstance(service_id, str) and service_id in catalog else ""


def count_cards(service: str, cards: Iterable[Card]) -> None:
    """The cards of one answer, by indicator and topic (the finding's code in rules/)."""
    for card in cards:
        topic = card.source.topic.code if card.source.topic else ""
        CARDS.labels(service, card.indicator, topic).inc()


def count_fhir_fallback(outcomes: Iterable[tuple[str, bool]]) -> None:
    """The prefetch templates one request fetched from the FHIR server, and which failed.

    Plain (prefetch key, failed) pairs: metrics stay below the FHIR client, not beside it.
    """
    for key, failed in outcomes:
        FHIR_QUERIES.labels(key).inc()
        if failed:
            FHIR_FAILURES.labels(key).inc()


def count_feedback(service: str, stored: Iterable[tuple[str, str]]) -> None:
    """Newly stored feedback entries, as (card topic, outcome) pairs."""
    for topic, outcome in stored:
        FEEDBACK.labels(service, topic, outcome).inc()


def count_unread(counts: Iterable[tuple[tuple[str, str], int]]) -> None:
    """Resources of one request that were not used, as ((resource type, reason), count).

    The reasons are the fixed set of cds.decision.facts.record.UnreadReason; a resource type
    outside UNREAD_TYPES is counted as "other", so a request cannot add series.
    """
    for (resource_type, reason), count in counts:
        kind = resource_type if resource_type in UNREAD_TYPES else "other"
        UNREAD.labels(kind, reason).inc(count)
