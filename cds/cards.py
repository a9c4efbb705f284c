"""From findings to CDS Hooks cards: texts from rules/findings.yaml, evidence from the facts.

Every card states its evidence (value, unit and date; or the medication and its status) and
its source. Card and suggestion uuids are derived from the hookInstance, so a repeated call
yields the same uuids and feedback on them stays attributable.
"""

from __future__ import annotations

import html
import re
import uuid
from dataclasses import dataclass
from typing import Any

from cds.cdshooks import Action, Card, Coding, Link, Source, Suggestion
from cds.facts import Evidence, Facts
from cds.findings import ConsolidatedFinding
from cds.knowledge import Knowledge

SUMMARY_LIMIT = 139
LABEL_LIMIT = 60


@dataclass(frozen=True)
class CardContext:
    """What the cards of one request need besides the findings."""

    hook_instance: uuid.UUID
    patient_id: str
    lookback_days: int


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _number(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


def short_value(evidence: Evidence) -> str:
    """A measured value and its date: '1.4 mg/dL on 2026-01-01'."""
    when = f" on {evidence.when.isoformat()}" if evidence.when else ""
    return f"{_number(evidence.value or 0)} {evidence.unit}{when}"


def _in_sentence(label: str) -> str:
    """'Muscle weakness' -> 'muscle weakness'; acronyms ('ALS', 'TSH') keep their case."""
    return label[0].lower() + label[1:] if label[1:2].islower() else label


def short_evidence(evidence: Evidence) -> str:
    """The few words of evidence that fit in a summary."""
    if evidence.kind in ("medication", "order"):
        return f"{_shorten(evidence.label, LABEL_LIMIT)} ({evidence.status})"
    if evidence.value is not None:
        return f"{_in_sentence(evidence.label)} {short_value(evidence)}"
    return _in_sentence(evidence.label)


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]()#|!~])")


def md(text: object) -> str:
    """Record text (drug names, relations, codes) made inert in GitHub-flavoured markdown.

    The sandbox renders card markdown with raw HTML enabled, and EHR data is untrusted.
    """
    escaped = html.escape(" ".join(str(text).split()), quote=False)
    return _MARKDOWN_SPECIAL.sub(r"\\\1", escaped)


def evidence_line(evidence: Evidence, lookback_days: int) -> str:
    """One markdown bullet stating the evidence in full."""
    if evidence.kind == "missing":
        usable = "no usable" if evidence.judged else "no"
        note = f" ({md(evidence.judged)})" if evidence.judged else ""
        return (f"- **{md(evidence.label)}**: {usable} result in the last {lookback_days} "
                f"days{note}")
    parts = [f"**{md(evidence.label)}**"]
    if evidence.value is not None:
        parts.append(f"{_number(evidence.value)} {md(evidence.unit)}")
        if evidence.reported:
            parts.append(f"(reported as {md(evidence.reported)})")
    details = [d for d in (evidence.status, evidence.when and f"dated {evidence.when}") if d]
    if details:
        parts.append(f"({', '.join(md(d) for d in details)})")
    line = "- " + " ".join(parts)
    if evidence.judged:
        line += f": {md(evidence.judged)}"
    if evidence.code:
        line += f" · {md(evidence.code)}"
    return line


class CardBuilder:
    """Builds the cards of one response. Holds only the knowledge, shared and read-only."""

    def __init__(self, knowledge: Knowledge) -> None:
        self.knowledge = knowledge
        self.texts = knowledge.findings

    def build(self, findings: list[ConsolidatedFinding], facts: Facts,
              context: CardContext) -> list[Card]:
        """Cards in the findings' order. Each missing lab is offered on one card only: cards
        that suggest particular tests (alcohol: magnesium; neuropathy: B12, HbA1c; a drug: what
        it lowers) claim them first, in card order; the work-up card (missing labs without a
        list of its own) offers the rest and names where the others are offered."""
        present = {f.code for f in findings}
        texts = self.texts.findings
        claim_order = sorted(findings, key=lambda f: (
            texts[f.code].suggest == "missing-labs" and not texts[f.code].labs))
        offered: dict[str, str] = {}
        cards = {}
        for finding in claim_order:
            if finding.evidence:
                cards[finding.code] = self._card(finding, facts, context, present, offered)
        return [cards[f.code] for f in findings if f.code in cards]

    def _card(self, finding: ConsolidatedFinding, facts: Facts, context: CardContext,
              present: set[str], offered: dict[str, str]) -> Card:
        text = self.texts.findings[finding.code]
        analytes = list(self.knowledge.labs.analytes)
        evidence = sorted((facts.evidence[ref] for ref in finding.evidence), key=lambda e: (
            e.kind == "missing", analytes.index(e.analyte) if e.kind == "missing" else 0))
        card_id = uuid.uuid5(context.hook_instance, finding.code)
        source = self.knowledge.sources[text.source]
        labs = [e for e in evidence if e.kind == "lab"]
        template = text.summary
        if finding.known:
            template = self.texts.referral.known_summary
        elif finding.indicator == "critical" and text.summary_critical:
            template = text.summary_critical
        elif labs and text.summary_with_lab:
            template = text.summary_with_lab
        chosen = self._summary_evidence(evidence)
        summary = _shorten(template.format(
            evidence=chosen, lab=short_evidence(labs[0]) if labs else "",
            value=short_value(labs[0]) if labs else ""), SUMMARY_LIMIT)
        mentioned = [self.texts.findings[code].title for code in text.mentions
                     if code in present]
        detail = "\n".join([
            "**Evidence**", "",
            *(evidence_line(e, context.lookback_days) for e in evidence), "",
            *([f"**Already on record:** {', '.join(mentioned)} (see the other cards).", ""]
              if mentioned else []),
            *(["**Known:** diagnosed and under neurology care, so no new referral is "
               "suggested.", ""] if finding.known else []),
            text.why, "", f"**Consider:** {text.consider}",
        ])
        suggestions = self._suggestions(finding, text.suggest, text.labs, facts, evidence,
                                        card_id, context, offered)
        elsewhere = [f"{e.label} ({offered[e.analyte]} card)" for e in evidence
                     if e.kind == "missing" and e.analyte in offered
                     and offered[e.analyte] != text.title]
        if elsewhere:
            detail += f"\n\n**Order offered on another card:** {', '.join(elsewhere)}."
        links = [Link(label=self.knowledge.sources[key].label, url=self.knowledge.sources[key].url)
                 for key in dict.fromkeys([text.source, *text.links])]
        return Card(
            uuid=str(card_id), summary=summary, detail=detail, indicator=finding.indicator,
            source=Source(label=source.label, url=source.url, topic=Coding(
                system=self.texts.topic_system, code=finding.code, display=text.title)),
            suggestions=suggestions or None,
            # One referral: at most one; lab orders (alone or beside a referral): any of them.
            selectionBehavior=(None if not suggestions else
                               "at-most-one" if len(suggestions) == 1
                               and text.suggest == "referral" else "any"),
            overrideReasons=[Coding(system=self.texts.topic_system, code=r.code,
                                    display=r.display) for r in self.texts.override_reasons],
            links=links,
        )

    @staticmethod
    def _summary_evidence(evidence: list[Evidence]) -> str:
        """The evidence named in the summary: all missing tests, else the first non-complaint."""
        missing = [e.label for e in evidence if e.kind == "missing"]
        if missing:
            return ", ".join(_in_sentence(label) for label in missing)
        chosen = next((e for e in evidence if e.kind != "complaint"), evidence[0])
        return short_evidence(chosen)

    def _suggestions(self, finding: ConsolidatedFinding, kind: str | None, labs: list[str],
                     facts: Facts, evidence: list[Evidence], card_id: uuid.UUID,
                     context: CardContext, offered: dict[str, str]) -> list[Suggestion]:
        suggestions: list[Suggestion] = []
        if kind == "referral" and not finding.known:
            suggestions.append(self._referral(finding, evidence, card_id, context))
        if kind == "missing-labs" and not labs:
            labs = [name for name, a in self.knowledge.labs.analytes.items()
                    if a.workup and name in facts.missing_labs]
        if kind == "monitoring-labs":
            labs = list(dict.fromkeys(a for e in evidence for a in e.lowers))
        to_order = [name for name in labs if name in facts.missing_labs and name not in offered]
        offered.update(dict.fromkeys(to_order, self.texts.findings[finding.code].title))
        return suggestions + [self._lab_order(name, card_id, context) for name in to_order]

    def _referral(self, finding: ConsolidatedFinding, evidence: list[Evidence],
                  card_id: uuid.UUID, context: CardContext) -> Suggestion:
        referral = self.texts.referral
        title = self.texts.findings[finding.code].title
        reasons = "; ".join(e.label for e in evidence if e.kind != "complaint")
        resource: dict[str, Any] = {
            "resourceType": "ServiceRequest",
            "status": "draft",
            "intent": "proposal",
            "priority": "urgent" if finding.indicator == "critical" else "routine",
            "category": [{"text": referral.category_text}],
            "code": {"coding": [referral.code],
                     "text": f"Referral to {referral.specialty['display']}"},
            "performerType": {"coding": [referral.specialty],
                              "text": referral.specialty["display"]},
            "subject": {"reference": f"Patient/{context.patient_id}"},
            "reasonCode": [{"text": referral.reason.format(title=title, evidence=reasons)}],
        }
        return Suggestion(
            label=referral.label, uuid=str(uuid.uuid5(card_id, "referral")), isRecommended=True,
            actions=[Action(type="create", description=referral.description, resource=resource)])

    def _lab_order(self, analyte_name: str, card_id: uuid.UUID,
                   context: CardContext) -> Suggestion:
        analyte = self.knowledge.labs.analytes[analyte_name]
        code = analyte.codes[0]
        order = self.texts.lab_order
        resource = {
            "resourceType": "ServiceRequest",
            "status": "draft",
            "intent": "proposal",
            "category": [{"coding": [order.category]}],
            "code": {"coding": [{"system": code.system_uri, "code": code.code,
                                 "display": code.display}], "text": analyte.label},
            "subject": {"reference": f"Patient/{context.patient_id}"},
            "reasonCode": [{"text": order.reason}],
        }
        fields = {"test": analyte.label, "code": code.code}
        return Suggestion(
            label=order.label.format(**fields), uuid=str(uuid.uuid5(card_id, analyte_name)),
            actions=[Action(type="create", description=order.description.format(**fields),
                            resource=resource)])
