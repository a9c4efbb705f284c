"""The CDS services this deployment offers, read from `hooks/` once at start-up.

Discovery, routing and prefetch all read this one catalogue, so a service exists in exactly
one place: its YAML file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

from cds.cdshooks import DiscoveryResponse, ServiceDescription
from cds.knowledge import Knowledge

OBSERVATION_CODES_MARKER = "${observation-codes}"


@dataclass(frozen=True)
class PrefetchTemplate:
    key: str
    template: str
    required: bool

    @property
    def resource_type(self) -> str:
        """The FHIR type the template reads or searches (`Patient/{{..}}` or `Condition?..`)."""
        return self.template.split("?", 1)[0].split("/", 1)[0]


@dataclass(frozen=True)
class Service:
    id: str
    hook: str
    title: str
    description: str
    ruleset: str
    draft_orders: Literal["none", "selected", "all"]
    prefetch: tuple[PrefetchTemplate, ...]


def observation_codes(knowledge: Knowledge) -> str:
    """Every Observation code the rules read, as a FHIR token list (`system|code,...`).

    Restricting the search keeps the prefetch small; generating it from rules/ keeps it in
    step with the rules and the assessment's Questionnaire. Prefix (ICD block) codes are
    omitted: Observations are coded with LOINC or SNOMED (or the assessment's own codes).
    """
    codes: list[str] = []
    labs = knowledge.labs
    for group in (labs.analytes, labs.scored_observations, labs.coded_observations):
        codes += [f"{c.system_uri}|{c.code}" for item in group.values() for c in item.codes]
    codes += [f"{c.system_uri}|{c.code}" for c in labs.panels]
    for valueset in knowledge.valuesets.values():
        codes += [
            f"{c.system_uri}|{c.code}"
            for c in valueset.codes
            if c.system in ("snomed", "twitch-cds") and not c.prefix
        ]
    # Every question of the patient's assessment: its answers arrive as Observations coded so.
    codes += [f"{system}|{code}" for system, code in knowledge.assessment.topics]
    return ",".join(dict.fromkeys(codes))


def _shared_prefetch(hooks_dir: Path) -> dict[str, dict[str, str | bool]]:
    shared: dict[str, dict[str, dict[str, str | bool]]] = yaml.safe_load(
        (hooks_dir / "prefetch.yaml").read_text(encoding="utf-8")
    )
    return shared["prefetch"]


def search_keys(hooks_dir: Path) -> dict[str, str]:
    """The prefetch key each searched FHIR type arrives under (`Condition` -> `conditions`),
    so that test records and bench bodies are shaped exactly as discovery publishes them."""
    return {
        str(spec["template"]).split("?", 1)[0]: key
        for key, spec in _shared_prefetch(hooks_dir).items()
        if "?" in str(spec["template"])
    }


def load_catalog(hooks_dir: Path, knowledge: Knowledge) -> dict[str, Service]:
    """Services by id, with the shared prefetch templates expanded."""
    codes = observation_codes(knowledge)
    templates = tuple(
        PrefetchTemplate(
            key,
            str(spec["template"]).replace(OBSERVATION_CODES_MARKER, codes),
            bool(spec.get("required", True)),
        )
        for key, spec in _shared_prefetch(hooks_dir).items()
    )
    services: dict[str, Service] = {}
    for path in sorted(hooks_dir.glob("*.yaml")):
        if path.name == "prefetch.yaml":
            continue
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
        service = Service(
            id=spec["id"],
            hook=spec["hook"],
            title=spec["title"],
            description=spec["description"],
            ruleset=spec["ruleset"],
            draft_orders=spec["draft_orders"],
            prefetch=templates,
        )
        if service.id in services:
            raise ValueError(f"duplicate service id {service.id} in {path}")
        if service.ruleset not in knowledge.rulesets:
            raise ValueError(f"{path}: unknown ruleset {service.ruleset}")
        services[service.id] = service
    return services


def discovery(services: dict[str, Service]) -> DiscoveryResponse:
    """What GET /cds-services answers (and `twitch-cds discovery` prints)."""
    return DiscoveryResponse(
        services=[
            ServiceDescription(
                hook=s.hook,
                id=s.id,
                title=s.title,
                description=s.description,
                prefetch={t.key: t.template for t in s.prefetch},
            )
            for s in services.values()
        ]
    )
