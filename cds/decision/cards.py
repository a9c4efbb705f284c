"""From findings to CDS Hooks cards: texts from rules/findings.yaml, evidence from the facts.

Every card states its evidence (value as reported, unit and date; or the medication with its
start and dose) and the source that states its claim: a guideline, textbook chapter or review
(a lab card links the page of the cut-off that judged the value), a drug card the drug
reference of the drug it names. A drug card speaks of a drug being ordered in the order hooks
and of a drug already taken in patient-view. A card that wants a test names it as not
measured, or names the result on record, instead of asking for it blindly. A response carries
at most one neurology suggestion,
offered on every red-flag card with the same uuid and naming every red flag; a lab test
offered on several cards is the same suggestion (same uuid) on each. Card and suggestion
uuids are derived from the hookInstance, so a repeated call yields the same uuids and
feedback on them stays attributable.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from datetime import date
from typing import Any

from cds.cdshooks import Action, Card, Coding, Link, Source, Suggestion
from cds.decision.facts import Evidence, Facts
from cds.decision.facts.record import days_ago, fmt, joined
from cds.decision.findings import ConsolidatedFinding
from cds.knowledge import CardText, Knowledge, OrderingText

SUMMARY_LIMIT = 139
LABEL_LIMIT = 60
# RxNorm writes strengths and forms in capitals ("predniSONE 20 MG Oral Tablet"); prescribers
# write "Prednisone 20 mg oral tablet". Units keep their UCUM case.
RXNORM_UNITS = {
    "MG": "mg",
    "ML": "mL",
    "MCG": "mcg",
    "MEQ": "mEq",
    "UNT": "units",
    "HR": "h",
    "ACTUAT": "actuation",
    "G": "g",
    "L": "L",
    "MMOL": "mmol",
}
_RXNORM_TOKEN = re.compile(r"^(?:[A-Z]+)(?:/[A-Z]+)?$")
_TALL_MAN = re.compile(r"^[a-z]+[A-Z]{2,}[a-zA-Z]*$")


@dataclass(frozen=True)
class CardContext:
    """What the cards of one request need besides the findings."""

    hook_instance: uuid.UUID
    patient_id: str
    lookback_days: int
    # The assessment app's launch URL (`smart` links) and what its appContext names; no link
    # without a URL.
    service_id: str | None = None
    app_launch_url: str | None = None
    today: date | None = None


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _rxnorm_units(token: str) -> str | None:
    """'MG/ML' -> 'mg/mL'; None when the token is not an RxNorm unit."""
    if not _RXNORM_TOKEN.match(token):
        return None
    parts = token.split("/")
    return (
        "/".join(RXNORM_UNITS[p] for p in parts) if all(p in RXNORM_UNITS for p in parts) else None
    )


def prescriber_name(label: str) -> str:
    """A drug name as prescribers write it: RxNorm's capitals and tall-man letters lowered
    ('predniSONE 20 MG Oral Tablet' -> 'Prednisone 20 mg oral tablet'); brand names in
    brackets and names typed by a prescriber ('Lasix 40mg') are kept as written."""
    tokens = label.split()
    rxnorm_style = any(_rxnorm_units(t) for t in tokens)
    words = []
    for token in tokens:
        unit = _rxnorm_units(token)
        if unit:
            words.append(unit)
        elif token.startswith("[") or not (rxnorm_style or _TALL_MAN.match(token)):
            words.append(token)
        else:
            words.append(token.lower())
    name = " ".join(words)
    return name[:1].upper() + name[1:]


def short_value(evidence: Evidence) -> str:
    """A measured value as the laboratory reported it, and its date: '1.4 mg/dL on
    2026-01-01', '30 nmol/L on 2026-01-01'."""
    when = f" on {evidence.when.isoformat()}" if evidence.when else ""
    converted = evidence.reported and evidence.converted
    value = evidence.reported if converted else f"{fmt(evidence.value or 0)} {evidence.unit}"
    return f"{value}{when}"


def _in_sentence(label: str) -> str:
    """'Muscle weakness' -> 'muscle weakness'; acronyms and mixed case ('ALS', 'HbA1c') keep
    their case."""
    first = label.split(" ", 1)[0]
    return label[0].lower() + label[1:] if first[1:].islower() else label


# HTML's own characters as entities, and markdown's special characters backslash-escaped: one
# table, so each character of the text is looked at once.
_INERT = str.maketrans(
    {"&": "&amp;", "<": "&lt;", ">": "&gt;"} | {c: "\\" + c for c in "\\`*_[]()#|!~"}
)


def md(text: object) -> str:
    """Record text (drug names, relations, codes) made inert in GitHub-flavoured markdown.

    The sandbox renders card markdown with raw HTML enabled, and EHR data is untrusted.
    """
    return " ".join(str(text).split()).translate(_INERT)


class CardBuilder:
    """Builds the cards of one response. Holds only the knowledge, shared and read-only."""

    def __init__(self, knowledge: Knowledge) -> None:
        self.knowledge = knowledge
        self.texts = knowledge.findings

    # -- evidence in words --------------------------------------------------------------
    def relation(self, evidence: Evidence) -> str | None:
        """A family member in words: 'MTH' -> 'mother' (rules/findings.yaml relationships)."""
        who = evidence.status
        if not who:
            return None
        return self.texts.relationships.get(who.upper(), who.lower())

    def short_evidence(self, evidence: Evidence) -> str:
        """The few words of evidence that fit in a summary."""
        if evidence.kind in ("medication", "order"):
            return _shorten(prescriber_name(evidence.label), LABEL_LIMIT)
        if evidence.kind == "family":
            who = self.relation(evidence)
            return _in_sentence(evidence.label) + (f" ({who})" if who else "")
        if evidence.provenance:
            # The patient's own answer: who says so and how long ago stand in for the date.
            value = f" {fmt(evidence.value)} {evidence.unit}" if evidence.value is not None else ""
            return f"{_in_sentence(evidence.label)}{value} ({evidence.provenance})"
        if evidence.value is not None:
            return f"{_in_sentence(evidence.label)} {short_value(evidence)}"
        return _in_sentence(evidence.label)

    def evidence_line(self, evidence: Evidence, lookback_days: int) -> str:
        """One markdown bullet stating the evidence in full."""
        if evidence.kind == "missing":
            # A result that exists but was set aside is named with its date and reason.
            usable = "no usable" if evidence.set_aside else "no"
            note = (
                f" (set aside: {md('; '.join(evidence.set_aside))})" if evidence.set_aside else ""
            )
            return (
                f"- **{md(evidence.label)}**: {usable} result in the last {lookback_days} "
                f"days{note}"
            )
        label = (
            prescriber_name(evidence.label)
            if evidence.kind in ("medication", "order")
            else evidence.label
        )
        parts = [f"**{md(label)}**"]
        if evidence.reported and evidence.converted:
            # As reported, with the conversion the service judged, rounded like the report.
            parts.append(f"{md(evidence.reported)} (= {md(evidence.converted)})")
        elif evidence.value is not None:
            parts.append(f"{fmt(evidence.value)} {md(evidence.unit)}")
            if evidence.reported:
                parts.append(f"(reported as {md(evidence.reported)})")
        status = self.relation(evidence) if evidence.kind == "family" else evidence.status
        details = [
            d
            for d in (status, evidence.provenance, evidence.when and f"dated {evidence.when}")
            if d
        ]
        if evidence.kind == "medication":
            details.append(
                f"started {evidence.started}" if evidence.started else "start date not recorded"
            )
        elif evidence.started:
            details.append(f"ordered {evidence.started}")
        if evidence.kind in ("medication", "order"):
            details.append(f"dose {evidence.dose}" if evidence.dose else "dose not recorded")
        if details:
            parts.append(f"({', '.join(md(d) for d in details)})")
        line = "- " + " ".join(parts)
        if evidence.judged:
            line += f": {md(evidence.judged)}"
        if evidence.code:
            line += f" · {md(evidence.code)}"
        return line

    # -- the response ---------------------------------------------------------------------
    def build(
        self, findings: list[ConsolidatedFinding], facts: Facts, context: CardContext
    ) -> list[Card]:
        """Cards in the findings' order; every red-flag card offers the one referral."""
        present = {f.code for f in findings}
        red_flags = [f for f in findings if self.texts.findings[f.code].red_flag and f.evidence]
        referral = self._referral(red_flags, facts, context) if red_flags else None
        return [self._card(f, facts, context, present, referral) for f in findings if f.evidence]

    def _card(
        self,
        finding: ConsolidatedFinding,
        facts: Facts,
        context: CardContext,
        present: set[str],
        referral: Suggestion | None,
    ) -> Card:
        text = self.texts.findings[finding.code]
        analytes = list(self.knowledge.labs.analytes)
        evidence = sorted(
            (facts.evidence[ref] for ref in finding.evidence),
            key=lambda e: (
                e.kind == "missing",
                analytes.index(e.analyte) if e.kind == "missing" and e.analyte else 0,
            ),
        )
        card_id = uuid.uuid5(context.hook_instance, finding.code)
        summary, consider = self._wording(finding, text, facts, evidence)
        status = self._lab_status(text, facts, evidence, context.lookback_days)
        limit = self._limit_source(finding, facts)
        limit_line = (
            self.texts.limit_source.format(
                source=f"[{md(self.knowledge.sources[limit].label)}]"
                f"({self.knowledge.sources[limit].url})"
            )
            if limit
            else None
        )
        answered = self._answered(finding, facts, context)
        if answered:
            summary = answered[0]
        mentioned = [self.texts.findings[code].title for code in text.mentions if code in present]
        detail = "\n".join(
            [
                "**Evidence**",
                "",
                *(self.evidence_line(e, context.lookback_days) for e in evidence),
                "",
                *([limit_line, ""] if limit_line else []),
                *([answered[1], ""] if answered and answered[1] else []),
                *(
                    [f"**Already on record:** {', '.join(mentioned)} (see the other cards).", ""]
                    if mentioned
                    else []
                ),
                text.why,
                "",
                f"**Consider:** {consider}",
                *(["", *status] if status else []),
            ]
        )
        suggestions = ([referral] if referral and text.suggest == "referral" else []) + [
            self._lab_order(name, context) for name in self._labs_to_order(text, facts, evidence)
        ]
        source_key, link_keys = self._sources(finding, text, facts)
        source = self.knowledge.sources[source_key]
        links = [
            Link(label=self.knowledge.sources[key].label, url=self.knowledge.sources[key].url)
            for key in dict.fromkeys([source_key, *link_keys])
        ] + self._assessment_link(finding, facts, context)
        return Card(
            uuid=str(card_id),
            summary=_shorten(summary[:1].upper() + summary[1:], SUMMARY_LIMIT),
            detail=detail,
            indicator=finding.indicator,
            source=Source(
                label=source.label,
                url=source.url,
                topic=Coding(system=self.texts.topic_system, code=finding.code, display=text.title),
            ),
            suggestions=suggestions or None,
            # The referral alone: at most one; lab orders (alone or beside it): any of them.
            selectionBehavior=(
                None if not suggestions else "at-most-one" if suggestions == [referral] else "any"
            ),
            overrideReasons=[
                Coding(system=self.texts.override_reason_system, code=r.code, display=r.display)
                for r in self.texts.override_reasons
            ],
            links=links,
        )

    # -- what the card says ---------------------------------------------------------------
    def _wording(
        self, finding: ConsolidatedFinding, text: CardText, facts: Facts, evidence: list[Evidence]
    ) -> tuple[str, str]:
        """Summary and advice that fit what the card shows: a diagnosis on record, a suspected
        one, a known one under neurology care, a duplicate order, a low value already shown."""
        care = {fact["evidence"] for fact in facts.facts if fact["kind"] == "neurology-care"}
        labs = [e for e in evidence if e.kind == "lab"]
        diagnosis = facts.evidence[finding.diagnoses[0]] if finding.diagnoses else None
        signs = [
            facts.evidence[ref]
            for ref in finding.evidence
            if ref not in care
            and ref not in finding.diagnoses
            and facts.evidence[ref].kind not in ("complaint", "missing")
        ]
        critical = finding.indicator == "critical"
        analytes = self.knowledge.labs.analytes
        lowered = dict.fromkeys(a for e in evidence for a in e.lowers)
        words = {
            "evidence": self._summary_evidence(evidence),
            "lab": self.short_evidence(labs[0]) if labs else "",
            "value": short_value(labs[0]) if labs else "",
            "electrolyte": _in_sentence(labs[0].label) if labs else "",
            "lowers": joined([_in_sentence(analytes[a].label) for a in lowered]),
            "diagnosis": _in_sentence(diagnosis.label) if diagnosis else "",
            "signs": ", ".join(self.short_evidence(e) for e in signs),
        }
        # A drug being ordered now (order hooks) is advised on before signing; a drug the
        # patient already takes (patient-view) keeps the advice for a current drug.
        ordering = text.ordering if any(e.kind == "order" for e in evidence) else None
        flag = self.texts.red_flag_texts
        if "duplicate" in finding.tags:
            drugs = [e for e in evidence if e.kind in ("order", "medication")]
            words["evidence"] = self.short_evidence(drugs[0])
            words["other"] = self.short_evidence(drugs[-1])
            duplicate = self.texts.duplicate
            advice = self._plain_advice(text, critical, labs, ordering)
            return (
                duplicate.summary.format(**words),
                f"{duplicate.consider} {advice.format(**words)}",
            )
        if finding.known:
            summary = flag.known_critical_summary if critical and signs else flag.known_summary
            consider = flag.critical_consider if critical else flag.known_consider
        elif "suspected" in finding.tags:
            summary, consider = flag.suspected_summary, flag.suspected_consider
        elif "diagnosed" in finding.tags:
            summary = (
                flag.diagnosed_critical_summary if critical and signs else flag.diagnosed_summary
            )
            consider = flag.critical_consider if critical else flag.diagnosed_consider
        elif ordering:
            summary = (
                ordering.summary_with_lab
                if labs and ordering.summary_with_lab
                else ordering.summary
            )
            consider = self._plain_advice(text, critical, labs, ordering)
        else:
            summary = (
                text.summary_critical
                if critical and text.summary_critical
                else text.summary_with_lab
                if labs and text.summary_with_lab
                else text.summary
            )
            consider = self._plain_advice(text, critical, labs)
        return summary.format(**words), consider.format(**words)

    def _assessment_link(
        self, finding: ConsolidatedFinding, facts: Facts, context: CardContext
    ) -> list[Link]:
        """The app's `smart` link, until the patient has answered within the lookback."""
        texts = self.texts.assessment
        if (
            finding.code not in texts.link_on
            or facts.assessment is not None
            or not context.app_launch_url
        ):
            return []
        app_context = {"service": context.service_id, "hookInstance": str(context.hook_instance)}
        return [
            Link(
                label=texts.link_label,
                url=context.app_launch_url,
                type="smart",
                appContext=json.dumps(app_context, separators=(",", ":")),
            )
        ]

    def _answered(
        self, finding: ConsolidatedFinding, facts: Facts, context: CardContext
    ) -> tuple[str, str] | None:
        """The lifestyle card's summary and detail line once the patient has answered: it
        asks only about the triggers the assessment did not cover."""
        texts = self.texts.assessment
        on_file = facts.assessment
        if finding.code != texts.lifestyle_finding or on_file is None:
            return None
        when = days_ago(on_file.when, context.today or on_file.when)
        left = [t.words for t in texts.triggers if t.asked_by not in on_file.topics]
        asked = [t.words for t in texts.triggers if t.asked_by in on_file.topics]
        summary = (
            texts.lifestyle_summary.format(when=when, triggers=joined(left))
            if left
            else texts.lifestyle_all_answered.format(when=when)
        )
        lines = (
            [texts.answered_line.format(when=f"{when}, {on_file.when}", topics=joined(asked))]
            if asked
            else []
        )
        if on_file.reported:
            answers = joined([_in_sentence(r) for r in on_file.reported])
            lines.append(texts.reported_line.format(answers=md(answers)))
        return summary, " ".join(lines)

    @staticmethod
    def _plain_advice(
        text: CardText,
        critical: bool,
        labs: list[Evidence],
        ordering: OrderingText | None = None,
    ) -> str:
        if ordering:
            return (
                ordering.consider_with_lab
                if labs and ordering.consider_with_lab
                else ordering.consider
            )
        if critical and text.consider_critical:
            return text.consider_critical
        if labs and text.consider_with_lab:
            return text.consider_with_lab
        return text.consider

    def _summary_evidence(self, evidence: list[Evidence]) -> str:
        """The evidence named in the summary: all missing tests, else the first non-complaint."""
        missing = [
            ("usable " if e.set_aside else "") + _in_sentence(e.label)
            for e in evidence
            if e.kind == "missing"
        ]
        if missing:
            return ", ".join(missing)
        chosen = next((e for e in evidence if e.kind != "complaint"), evidence[0])
        return self.short_evidence(chosen)

    def _limit_source(self, finding: ConsolidatedFinding, facts: Facts) -> str | None:
        """A lab card's page of the cut-off that judged its value (critical or low)."""
        evidence = [facts.evidence[ref] for ref in finding.evidence]
        lab = next((e for e in evidence if e.kind == "lab" and e.analyte), None)
        analyte = self.knowledge.labs.analytes.get(lab.analyte) if lab and lab.analyte else None
        if analyte is None or analyte.finding != finding.code:
            return None
        limit = (
            analyte.critical
            if finding.indicator == "critical" and analyte.critical
            else analyte.low
        )
        return limit.source if limit is not None else None

    def _sources(
        self, finding: ConsolidatedFinding, text: CardText, facts: Facts
    ) -> tuple[str, list[str]]:
        """The page that states the card's claim, and further links.

        A drug card cites the drug reference of each drug it names; otherwise the card text's
        source (a guideline, textbook chapter or review). A lab card links the page of the
        cut-off that judged its value (critical or low): a laboratory catalogue is cited for
        its reference interval, never as the card's source.
        """
        knowledge = self.knowledge
        limit = self._limit_source(finding, facts)
        if limit is not None:
            return text.source, [limit, *text.links]
        ingredients = _ingredients_by_evidence(facts)
        drugs = [ingredients[ref] for ref in finding.evidence if ref in ingredients]
        mechanisms = [
            m
            for name in drugs
            if (m := knowledge.medications.ingredients[name].mechanism_source)
            and text.claims[0] in knowledge.sources[m].supports
        ]
        if mechanisms:
            return mechanisms[0], [*mechanisms[1:], *text.links]
        return text.source, text.links

    # -- suggestions ----------------------------------------------------------------------
    def _wanted_labs(self, text: CardText, evidence: list[Evidence]) -> list[str]:
        """The tests this card wants: its own list, every work-up test (work-up card), or what
        its drugs lower (monitoring)."""
        if text.suggest == "monitoring-labs":
            return list(dict.fromkeys(a for e in evidence for a in e.lowers))
        if text.suggest == "missing-labs" and not text.labs:
            return [name for name, a in self.knowledge.labs.analytes.items() if a.workup]
        return text.labs

    def _labs_to_order(self, text: CardText, facts: Facts, evidence: list[Evidence]) -> list[str]:
        """The wanted tests with no result in the lookback: offered as orders."""
        return [name for name in self._wanted_labs(text, evidence) if name in facts.missing_labs]

    def _lab_status(
        self, text: CardText, facts: Facts, evidence: list[Evidence], lookback_days: int
    ) -> list[str]:
        """What the card says about each test it wants, beyond its own evidence: not measured
        (named, and offered as an order), or already measured (named with value and date, and
        within range when it is). The work-up card lists its missing tests as its evidence."""
        if not (text.labs or text.suggest == "monitoring-labs"):
            return []
        analytes = self.knowledge.labs.analytes
        shown = {e.analyte for e in evidence if e.analyte}
        results = {
            fact["analyte"]: (fact, facts.evidence[fact["evidence"]])
            for fact in facts.facts
            if fact["kind"] == "lab"
        }
        missing: list[str] = []
        unusable: list[str] = []
        normal: list[str] = []
        on_record: list[str] = []
        for name in self._wanted_labs(text, evidence):
            if name in shown:
                continue
            aside = facts.set_aside_words({name})
            if name in facts.missing_labs and aside:
                unusable.append(f"{_in_sentence(analytes[name].label)} ({'; '.join(aside)})")
            elif name in facts.missing_labs:
                missing.append(_in_sentence(analytes[name].label))
            elif name in results:
                fact, result = results[name]
                abnormal = fact["low"] or fact["high"] or fact["critical"]
                (on_record if abnormal else normal).append(self.short_evidence(result))
            else:
                on_record.append(
                    self.texts.lab_status.measured.format(
                        test=_in_sentence(analytes[name].label), days=lookback_days
                    )
                )
        words = self.texts.lab_status
        lines = []
        if missing:
            lines.append(words.missing.format(tests=joined(missing, "or"), days=lookback_days))
        if unusable:
            lines.append(words.unusable.format(results=md("; ".join(unusable))))
        if normal:
            lines.append(words.normal.format(results=joined(normal)))
        if on_record:
            lines.append(words.on_record.format(results=joined(on_record)))
        return lines

    def _referral(
        self, red_flags: list[ConsolidatedFinding], facts: Facts, context: CardContext
    ) -> Suggestion:
        """The response's one neurology suggestion, naming every red flag. When every red flag
        is already diagnosed and under neurology care, it asks that team to review instead."""
        referral = self.texts.referral
        contact = all(f.known for f in red_flags)
        named = "; ".join(
            f"{self.texts.findings[f.code].title} ("
            + ", ".join(
                self.short_evidence(facts.evidence[ref])
                for ref in f.evidence
                if facts.evidence[ref].kind not in ("complaint", "missing")
            )
            + ")"
            for f in red_flags
        )
        resource: dict[str, Any] = {
            "resourceType": "ServiceRequest",
            "status": "draft",
            "intent": "proposal",
            "priority": "urgent"
            if any(f.indicator == "critical" for f in red_flags)
            else "routine",
            "category": [{"text": referral.category_text}],
            "code": {
                "coding": [referral.code],
                "text": f"Referral to {referral.specialty['display']}",
            },
            "performerType": {
                "coding": [referral.specialty],
                "text": referral.specialty["display"],
            },
            "subject": {"reference": f"Patient/{context.patient_id}"},
            "reasonCode": [{"text": referral.reason.format(red_flags=named)}],
        }
        return Suggestion(
            label=referral.contact_label if contact else referral.label,
            uuid=str(uuid.uuid5(context.hook_instance, "neurology-referral")),
            isRecommended=True,
            actions=[
                Action(
                    type="create",
                    resource=resource,
                    description=referral.contact_description if contact else referral.description,
                )
            ],
        )

    def _lab_order(self, analyte_name: str, context: CardContext) -> Suggestion:
        analyte = self.knowledge.labs.analytes[analyte_name]
        code = analyte.codes[0]
        order = self.texts.lab_order
        resource = {
            "resourceType": "ServiceRequest",
            "status": "draft",
            "intent": "proposal",
            "category": [{"coding": [order.category]}],
            "code": {
                "coding": [{"system": code.system_uri, "code": code.code, "display": code.display}],
                "text": analyte.label,
            },
            "subject": {"reference": f"Patient/{context.patient_id}"},
            "reasonCode": [{"text": order.reason}],
        }
        fields = {"test": analyte.label, "code": code.code}
        return Suggestion(
            label=order.label.format(**fields),
            uuid=str(uuid.uuid5(context.hook_instance, f"order:{analyte_name}")),
            actions=[
                Action(
                    type="create", description=order.description.format(**fields), resource=resource
                )
            ],
        )


def _ingredients_by_evidence(facts: Facts) -> dict[str, str]:
    """Which ingredient each drug evidence reference stands for (from the drug facts)."""
    return {
        fact["evidence"]: fact["ingredient"]
        for fact in facts.facts
        if fact["kind"] in ("drug", "draft")
    }
