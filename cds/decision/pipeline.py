"""The CPU-bound part of a hook call: record -> facts -> rules -> findings -> cards.

Everything here is synchronous and free of I/O. The route runs it inline on the event loop:
it is pure-Python CPU work, so a worker thread of the same process would not run it any
sooner, only hand the GIL back and forth with the event loop; more throughput comes from more
worker processes (`twitch-cds serve --workers N`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from cds.cdshooks import Card, HookRequest
from cds.decision.cards import CardBuilder, CardContext
from cds.decision.catalog import Service
from cds.decision.engine import RulesEngine
from cds.decision.facts import FactBuilder, Facts, Vocabulary, is_deceased
from cds.decision.facts.record import listed
from cds.decision.findings import consolidate
from cds.decision.prefetch import ResourcePool
from cds.knowledge import Knowledge
from cds.settings import Settings, app_launch_url


@dataclass(frozen=True)
class Decision:
    cards: list[Card]
    facts: Facts
    deceased: bool = False


def _draft_entries(request: HookRequest) -> list[dict[str, Any]]:
    """The entries of `context.draftOrders` that hold a resource (read leniently: the sandbox's
    Bundle is not valid FHIR)."""
    entries = request.context.draftOrders.get("entry") if request.context.draftOrders else None
    return [
        e for e in listed(entries) if isinstance(e, dict) and isinstance(e.get("resource"), dict)
    ]


def draft_orders(request: HookRequest, service: Service) -> list[dict[str, Any]]:
    """The orders a hook asks about: the selected ones (order-select) or all (order-sign)."""
    if service.draft_orders == "none":
        return []
    orders = [
        e["resource"]
        for e in _draft_entries(request)
        if e["resource"].get("resourceType") != "Medication"
    ]
    if service.draft_orders == "selected":
        selected = set(request.context.selections or [])
        orders = [o for o in orders if f"{o.get('resourceType')}/{o.get('id')}" in selected]
    return orders


def draft_medications(request: HookRequest) -> dict[str, dict[str, Any]]:
    """Medications sent beside the draft orders, by every reference that may name them
    (`Medication/id` and the entry's `fullUrl`): an EHR that codes the drug once in a
    Medication refers to it from the order's `medicationReference`."""
    found: dict[str, dict[str, Any]] = {}
    for entry in _draft_entries(request):
        medication = entry["resource"]
        if medication.get("resourceType") != "Medication":
            continue
        if isinstance(medication.get("id"), str):
            found[f"Medication/{medication['id']}"] = medication
        if isinstance(entry.get("fullUrl"), str):
            found[entry["fullUrl"]] = medication
    return found


@dataclass(frozen=True)
class Pipeline:
    """The shared, read-only parts that turn a record into cards."""

    knowledge: Knowledge
    facts: FactBuilder
    engine: RulesEngine
    cards: CardBuilder
    lookback_days: int
    # The app's launch URL on TWITCH_CDS_PUBLIC_BASE_URL; a route passes the request's own
    # when that is not set, `twitch-cds evaluate` (no request) then shows no link.
    app_launch_url: str | None = None

    def decide(
        self,
        request: HookRequest,
        service: Service,
        pool: ResourcePool,
        today: date,
        app_launch_url: str | None = None,
    ) -> Decision:
        """`app_launch_url`: where the assessment app is launched (the cards' `smart` link),
        when the pipeline's own is not set."""
        if is_deceased(pool.by_type.get("Patient", [])):
            return Decision([], Facts(), deceased=True)  # no advice about a deceased patient
        facts = self.facts.build(
            pool.by_type,
            today,
            draft_orders(request, service),
            pool.references,
            draft_medications(request),
        )
        findings = consolidate(self.engine.evaluate(service.ruleset, facts.facts), self.knowledge)
        context = CardContext(
            request.hookInstance,
            request.context.patientId,
            self.lookback_days,
            service.id,
            self.app_launch_url or app_launch_url,
            today,
        )
        return Decision(self.cards.build(findings, facts, context), facts)


def build_pipeline(knowledge: Knowledge, settings: Settings) -> Pipeline:
    """Record -> cards; also what `twitch-cds evaluate` runs, without a server."""
    return Pipeline(
        knowledge,
        FactBuilder(Vocabulary(knowledge), settings.lookback_days),
        RulesEngine(knowledge),
        CardBuilder(knowledge),
        settings.lookback_days,
        app_launch_url(settings.public_base_url) if settings.public_base_url else None,
    )
