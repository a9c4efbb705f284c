"""`twitch-cds evaluate FILE`: the cards a service answers for a record on disk.

For knowledge authors and testers: the record goes through exactly what a hook call goes
through (prefetch pooling, facts, rules, cards), without a server, a database or a network.
FILE is one of:

- a CDS Hooks request (JSON with `hook`, `hookInstance` and `context`), used as sent;
- a FHIR Bundle (a Synthea patient, a searchset, a transaction) or a single resource;
- an NDJSON export (one resource per line, as FHIR Bulk Data writes it).

A Bundle or NDJSON must hold exactly one Patient. For order-select and order-sign, its
resources with status `draft` (MedicationRequest, ServiceRequest...) are the draft orders,
all of them selected. `as_of` evaluates the record as if today were that date, so an old
export's results are not stale.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError

from cds.cdshooks import Card, HookRequest
from cds.decision.catalog import Service
from cds.decision.context import PreconditionFailed, assemble
from cds.decision.fhir_client import FhirFetcher
from cds.decision.pipeline import Decision, Pipeline
from cds.errors import describe_validation_errors
from cds.tools.demo import resolve_dates

CLI_USER = "Practitioner/twitch-cds-cli"


class EvaluationError(Exception):
    """The file cannot be evaluated; the message says why (never quoting record values)."""


def read_resources_or_request(path: Path) -> dict[str, Any] | list[dict[str, Any]]:
    """The hook request in FILE, or its resources (Bundle entries, NDJSON lines)."""
    text = path.read_text(encoding="utf-8")
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        return _ndjson(text)
    if not isinstance(document, dict):
        raise EvaluationError("expected a JSON object: a hook request, a Bundle or a resource")
    if "hookInstance" in document and "context" in document:
        return document
    if document.get("resourceType") == "Bundle":
        entries = document.get("entry") or []
        return [
            e["resource"]
            for e in entries
            if isinstance(e, dict) and isinstance(e.get("resource"), dict)
        ]
    if isinstance(document.get("resourceType"), str):
        return [document]
    raise EvaluationError("expected a hook request, a FHIR Bundle or a FHIR resource")


def _ndjson(text: str) -> list[dict[str, Any]]:
    resources = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            resource = json.loads(line)
        except json.JSONDecodeError:
            raise EvaluationError(f"line {number}: not JSON (nor is the whole file)") from None
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            raise EvaluationError(f"line {number}: not a FHIR resource")
        resources.append(resource)
    return resources


def request_for(resources: list[dict[str, Any]], service: Service) -> dict[str, Any]:
    """A hook request for `service` carrying the resources as its prefetch."""
    patients = [r for r in resources if r.get("resourceType") == "Patient"]
    if len(patients) != 1 or not isinstance(patients[0].get("id"), str):
        raise EvaluationError(f"expected exactly one Patient with an id, found {len(patients)}")
    patient = patients[0]
    drafts = (
        [r for r in resources if r.get("status") == "draft"]
        if service.draft_orders != "none"
        else []
    )
    record = [r for r in resources if r not in drafts and r is not patient]
    prefetch: dict[str, Any] = {}
    for template in service.prefetch:
        if template.resource_type == "Patient":
            prefetch[template.key] = patient
        else:
            prefetch[template.key] = _searchset(
                [r for r in record if r.get("resourceType") == template.resource_type]
            )
    # Types no template asks for (Encounter, Claim...) travel too; the service ignores them.
    prefetch["other"] = _searchset(
        [
            r
            for r in record
            if r.get("resourceType") not in {t.resource_type for t in service.prefetch}
        ]
    )
    context: dict[str, Any] = {"patientId": patient["id"], "userId": CLI_USER}
    if drafts:
        context["draftOrders"] = _searchset(drafts)
        context["selections"] = [f"{r.get('resourceType')}/{r.get('id')}" for r in drafts]
    return {
        "hook": service.hook,
        "hookInstance": str(uuid.uuid4()),
        "context": context,
        "prefetch": prefetch,
    }


def _searchset(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": r} for r in resources],
    }


@dataclass(frozen=True)
class Evaluation:
    service: Service
    request: HookRequest
    decision: Decision


def evaluate(
    path: Path, catalog: dict[str, Service], pipeline: Pipeline, hook: str | None, as_of: date
) -> Evaluation:
    # The demo patients' dates are written relative to the day they are used; resolve them
    # against the evaluation date so a demo file evaluates as the demo shows it.
    content = resolve_dates(read_resources_or_request(path), as_of)
    wanted = hook or (content.get("hook") if isinstance(content, dict) else None) or "patient-view"
    services = [s for s in catalog.values() if s.hook == wanted]
    if not services:
        raise EvaluationError(
            f"no service answers hook {wanted!r}; hooks: "
            + ", ".join(sorted({s.hook for s in catalog.values()}))
        )
    service = services[0]
    raw = content if isinstance(content, dict) else request_for(content, service)
    try:
        request = HookRequest.model_validate({**raw, "hook": service.hook})
    except ValidationError as error:
        raise EvaluationError(
            "; ".join(describe_validation_errors([dict(detail) for detail in error.errors()]))
        ) from None
    record = asyncio.run(_assemble(request, service))
    return Evaluation(service, request, pipeline.decide(request, service, record.pool, as_of))


async def _assemble(request: HookRequest, service: Service) -> Any:
    """The record as the service would pool it; nothing is fetched (no allowed FHIR base)."""
    async with httpx.AsyncClient() as client:
        try:
            return await assemble(request, service, FhirFetcher(client, [], 1.0, 1))
        except PreconditionFailed as failed:
            raise EvaluationError(
                "required data missing: "
                + "; ".join(f"{key}: {reason}" for key, reason in sorted(failed.reasons.items()))
            ) from None


def render_table(cards: list[Card]) -> str:
    """Cards for a terminal: indicator, topic, summary and source, one card per block."""
    if not cards:
        return "No cards (no documented twitch complaint, or nothing to say)."
    blocks = []
    for card in cards:
        topic = card.source.topic.code if card.source.topic else "-"
        lines = [
            f"[{card.indicator.upper()}] {card.summary}",
            f"  topic:  {topic}",
            f"  source: {card.source.label}",
        ]
        lines += [
            f"  evidence: {_plain(line.removeprefix('- '))}"
            for line in _evidence_lines(card.detail or "")
        ]
        lines += [f"  suggests: {s.label}" for s in card.suggestions or []]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _plain(markdown: str) -> str:
    """Markdown of the card detail as terminal text: no emphasis marks, no escapes."""
    return re.sub(r"\\(.)", r"\1", markdown.replace("**", "")).strip()


def _evidence_lines(detail: str) -> list[str]:
    """The bullet lines under the card detail's **Evidence** heading."""
    lines = detail.splitlines()
    if "**Evidence**" not in detail:
        return []
    start = next(i for i, line in enumerate(lines) if "**Evidence**" in line) + 1
    evidence = []
    for line in lines[start:]:
        if line.startswith("- "):
            evidence.append(line)
        elif evidence and not line.strip():
            break
    return evidence
