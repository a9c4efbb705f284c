"""The clinical logic as tables a clinical reviewer can check without reading Python.

Generated from rules/ (`python -m cds.tools.clinical_logic > docs/clinical-logic.md`); a test fails
when the committed document is out of date, so the tables are always what the service does:
every threshold with its unit and source, and every rule's exact conditions.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

from cds.decision.facts.record import joined
from cds.decision.facts.vocabulary import Vocabulary
from cds.knowledge import Analyte, Knowledge, Rule, Threshold, load_knowledge
from cds.settings import Settings

WORDS = {"below": "<", "at_or_below": "≤", "above": ">", "at_or_above": "≥"}
TAG_WORDS = {
    "diagnosed": "diagnosis on record",
    "suspected": "suspected diagnosis: referral, never known",
    "known": "known: under neurology care, suggestion is to contact the team",
    "duplicate": "names a possible duplicate order",
}


def _limit(threshold: Threshold, unit: str) -> str:
    op = next(k for k in WORDS if getattr(threshold, k) is not None)
    value = getattr(threshold, op)
    if isinstance(value, dict):
        value = ", ".join(f"{sex} {limit:g}" for sex, limit in value.items())
        return f"{WORDS[op]} {value} {unit}"
    return f"{WORDS[op]} {value:g} {unit}"


def _codes(codes: list[Any], limit: int = 8) -> str:
    shown = [
        f"{c.system.upper() if c.system != 'icd10cm' else 'ICD-10-CM'} {c.code}"
        + ("*" if c.prefix else "")
        for c in codes[:limit]
    ]
    more = f" +{len(codes) - limit} more" if len(codes) > limit else ""
    return ", ".join(shown) + more


def _tests(pattern: dict[str, Any]) -> tuple[dict[str, Any], list[Any]]:
    """A fact pattern as its equality tests and its `$or` alternatives."""
    tests: dict[str, Any] = {}
    alternatives: list[Any] = []
    for item in pattern.get("$and", [pattern]):
        if "$or" in item:
            alternatives += item["$or"]
        elif "$and" in item:
            inner, more = _tests(item)
            tests.update(inner)
            alternatives += more
        else:
            tests.update(item)
    return tests, alternatives


class _Document:
    def __init__(self, knowledge: Knowledge) -> None:
        self.k = knowledge

    def source(self, key: str) -> str:
        source = self.k.sources[key]
        return f"[{source.label}]({source.url})"

    def concept(self, name: str) -> str:
        """A value set in words, with the observations that also record it (scores, answers)."""
        valueset = self.k.valuesets[name]
        text = f"{valueset.label} ({_codes(valueset.codes)})"
        labs = self.k.labs
        for scored in labs.scored_observations.values():
            if scored.concept == name:
                text += (
                    f", or {scored.label} ({Vocabulary.label_of(scored.codes[0])}) "
                    f"{_limit(scored.positive, scored.unit or 'points')}"
                )
        for coded in labs.coded_observations.values():
            if coded.concept == name:
                answers = ", ".join(v.code for v in coded.positive_values)
                text += (
                    f", or {coded.label} ({Vocabulary.label_of(coded.codes[0])}) "
                    f"answered SNOMED {answers}"
                )
        return text

    # -- one fact pattern in words ------------------------------------------------------
    def describe(self, pattern: dict[str, Any]) -> str:
        tests, alternatives = _tests(pattern)
        if alternatives:
            return " or ".join(self.describe({**tests, **alt}) for alt in alternatives)
        kind = tests.get("kind")
        if kind == "complaint":
            return "twitch complaint"
        if kind == "problem":
            return self._problem(tests)
        if kind == "family":
            return f"{self.concept(tests['concept'])} in FamilyMemberHistory"
        if kind == "lab":
            return self._lab(tests)
        if kind == "neurology-care":
            return (
                "neurology care (a neurology ServiceRequest or Encounter) within the "
                "lookback, or a referral or episode still active"
            )
        if kind == "lab-missing":
            missing = [a.label for a in self.k.labs.analytes.values() if a.workup]
            return f"no usable result in the lookback for any of: {', '.join(missing)}"
        if kind == "lab-set-aside":
            return (
                "an analyte with no usable result, one of whose results was set aside while "
                "its laboratory flag or its value is beyond the limits"
            )
        drugs = {
            "drug": "an active drug of a class in Drug classes",
            "draft": "a drug of a class in Drug classes being ordered",
            "depletes": "an active drug that lowers an electrolyte (Drug classes)",
            "draft-depletes": "a drug being ordered that lowers an electrolyte",
        }
        if kind in drugs:
            joined = isinstance(tests.get("ingredient"), dict)
            return "an active drug of the same ingredient" if joined else drugs[kind]
        return str(tests)

    def _problem(self, tests: dict[str, Any]) -> str:
        if "concept" in tests:
            text = self.concept(tests["concept"])
        else:
            flagged = [vs.label for vs in self.k.valuesets.values() if vs.diagnosis_of]
            text = f"a diagnosis of the red flag ({', '.join(flagged)})"
        if tests.get("suspected") is True:
            text += ", recorded as provisional, differential or unconfirmed"
        return text

    def _lab(self, tests: dict[str, Any]) -> str:
        which = "critical" if tests.get("critical") is True else "low"
        if not isinstance(tests.get("analyte"), str):
            labels = [
                a.label
                for a in self.k.labs.analytes.values()
                if a.finding and getattr(a, which) is not None
            ]
            of = (
                "the electrolyte the drug lowers"
                if "analyte" in tests
                else f"any of {', '.join(labels)}"
            )
            return f"latest result of {of}, at its {which} cut-off (see Thresholds)"
        analyte = self.k.labs.analytes[tests["analyte"]]
        for which in ("critical", "low", "high", *analyte.flags):
            if tests.get(which) is True:
                return f"latest {analyte.label} {self._threshold_words(analyte, which)}"
        return f"latest {analyte.label}"

    def _threshold_words(self, analyte: Analyte, which: str) -> str:
        threshold = analyte.flags.get(which) or getattr(analyte, which)
        words = f"{_limit(threshold, analyte.unit)} ({self.source(threshold.source)})"
        if which in ("low", "high") and analyte.use_reference_range:
            side = "below" if which == "low" else "above"
            words = f"{side} the result's own reference range, else {words}"
        return words

    def conditions(self, rule: Rule) -> str:
        parts = []
        for entry in rule.all:
            ((alias, pattern),) = entry.items()
            described = self.describe(pattern)
            parts.append(f"and no {described}" if alias.endswith("$not") else described)
        return " + ".join(parts).replace(" + and no ", " and no ")

    # -- tables -------------------------------------------------------------------------
    def threshold_rows(self) -> Iterator[str]:
        for analyte in self.k.labs.analytes.values():
            limits = {
                "low": analyte.low,
                "critical": analyte.critical,
                "high": analyte.high,
                **analyte.flags,
            }
            codes = ", ".join(c.code for c in analyte.codes)
            for which, threshold in limits.items():
                if threshold is None:
                    continue
                note = (
                    " (else the result's own range)"
                    if which in ("low", "high") and analyte.use_reference_range
                    else ""
                )
                yield (
                    f"| {analyte.label} | {codes} | {which}{note} | "
                    f"{_limit(threshold, analyte.unit)} | {self.source(threshold.source)} |"
                )
            if analyte.albumin_correction:
                corr = analyte.albumin_correction
                yield (
                    f"| {analyte.label} | {codes} | albumin-corrected | Ca + {corr.factor} x "
                    f"({corr.reference_albumin} - albumin g/dL), albumin within "
                    f"{self.k.labs.analytes['albumin'].correction_window_days} days | "
                    f"{self.source(corr.source)} |"
                )
        for scored in self.k.labs.scored_observations.values():
            yield (
                f"| {scored.label} | {scored.codes[0].code} | positive | "
                f"{_limit(scored.positive, scored.unit or 'points')} | "
                f"{self.source(scored.positive.source)} |"
            )

    def rule_rows(self, red_flags: bool) -> Iterator[str]:
        texts = self.k.findings.findings
        for ruleset, rules in self.k.rulesets.items():
            for name, rule in rules.items():
                then = rule.then
                finding = then.finding
                is_red = (not finding.startswith("$") and texts[finding].red_flag) or (
                    finding == "$diagnosis.diagnosis_of"
                )
                if is_red != red_flags:
                    continue
                if finding == "$diagnosis.diagnosis_of":
                    shown = "the diagnosis's red flag"
                elif finding.startswith("$lab"):
                    shown = "the analyte's card"
                elif finding.startswith("$"):
                    shown = "the drug's class card"
                else:
                    shown = f"`{finding}`"
                scope = "" if ruleset == "chart" else " (order hooks)"
                tags = "; ".join(TAG_WORDS[t] for t in then.tags)
                yield (
                    f"| {shown}{scope} | `{name}` | {self.conditions(rule)} | "
                    f"{then.indicator}{f' ({tags})' if tags else ''} |"
                )

    def drug_rows(self) -> Iterator[str]:
        meds = self.k.medications
        for cls in meds.classes.values():
            ingredients = [
                f"{n}" + (f" (lowers {', '.join(i.lowers)})" if i.lowers else "")
                for n, i in meds.ingredients.items()
                if meds.classes[i.drug_class] is cls
            ]
            sources = sorted(
                {
                    i.mechanism_source
                    for i in meds.ingredients.values()
                    if meds.classes[i.drug_class] is cls and i.mechanism_source
                }
                | {self.k.findings.findings[cls.finding].source}
            )
            products = sum(
                any(meds.classes[meds.ingredients[i].drug_class] is cls for i in p.ingredients)
                for p in meds.products.values()
            )
            # A label naming what each ingredient lowers names here what the class lowers.
            lowered = sorted(
                {
                    a
                    for i in meds.ingredients.values()
                    if meds.classes[i.drug_class] is cls
                    for a in i.lowers
                }
            )
            label = cls.label.format(lowers=joined(lowered, last="or"))
            yield (
                f"| `{cls.finding}` | {label}: {', '.join(ingredients)}; "
                f"{products} RxNorm products | {', '.join(self.source(s) for s in sources)} |"
            )

    def route_words(self) -> str:
        """The route kinds that make a systemic-only drug not count."""
        routes = self.k.medications.routes
        if routes is None:
            return ""
        kinds = [name for name, kind in routes.kinds.items() if not kind.systemic]
        return (
            f"A {' or '.join(routes.systemic_only)} drug counts only when given systemically,"
            f" not by a {', '.join(kinds)} route (their synonyms: `rules/medications.yaml`)."
        )

    def advice_rows(self) -> Iterator[str]:
        """Each card's summary and advice per hook: a drug card speaks of a drug the patient
        takes in patient-view, and of a drug being ordered in order-select and order-sign."""
        for code, text in self.k.findings.findings.items():
            taken = _advice(
                text.summary, text.summary_with_lab, text.consider, text.consider_with_lab
            )
            if text.ordering is None:
                yield f"| `{code}` | {taken} | same as patient-view |"
                continue
            order = text.ordering
            ordered = _advice(
                order.summary, order.summary_with_lab, order.consider, order.consider_with_lab
            )
            yield f"| `{code}` | {taken} | {ordered} |"

    def card_rows(self) -> Iterator[str]:
        for code, text in self.k.findings.findings.items():
            links = ", ".join(self.source(k) for k in text.links)
            yield (
                f"| `{code}` | {', '.join(text.claims)} | {self.source(text.source)} | {links} |"
            )


def _advice(summary: str, with_lab: str | None, consider: str, consider_lab: str | None) -> str:
    """One table cell: the summary and the advice, and their wording beside a low value."""
    parts = [f"**Summary:** {summary}"]
    if with_lab:
        parts.append(f"*with the low value:* {with_lab}")
    parts.append(f"**Consider:** {consider}")
    if consider_lab:
        parts.append(f"*with the low value:* {consider_lab}")
    return "<br>".join(part.replace("|", "\\|") for part in parts)


def render(knowledge: Knowledge) -> str:
    doc = _Document(knowledge)
    lines = [
        "# Clinical logic of twitch-cds",
        "",
        "Generated from `rules/` by `python -m cds.tools.clinical_logic`; do not edit by hand.",
        "",
        f"Every chart card needs a documented twitch complaint ({doc.concept('twitch')}).",
        "A Condition counts when it is active (active, recurrence, relapse) and not refuted or",
        "entered in error; one without `clinicalStatus` counts only when its onset or recorded",
        "date is within the lookback. Observations count when final, amended or corrected and",
        "within the lookback; the latest result per analyte decides. Codes marked * match",
        "every sub-code. A rule fires when all its conditions hold together.",
        "",
        "## Thresholds",
        "",
        "| analyte | LOINC | cut-off | value | source |",
        "|---|---|---|---|---|",
        *doc.threshold_rows(),
        "",
        "## Red flags",
        "",
        "Every red-flag card carries the response's one neurology suggestion (a ServiceRequest,",
        "the same uuid on every red-flag card, naming every red flag; urgent when any red flag",
        "is critical). When every red flag is already diagnosed and under neurology care, the",
        "suggestion is to contact that team. A diagnosis recorded as provisional, differential",
        "or unconfirmed is raised as suspected and is never known. Several rules of one finding",
        "make one card with the most severe indicator. The weakness value set holds muscle",
        "weakness only (generalised fatigue or asthenia is not weakness), and no cramp code",
        "completes a red flag: every cramp code is itself a twitch complaint.",
        "",
        "| finding | rule | conditions | indicator |",
        "|---|---|---|---|",
        *doc.rule_rows(red_flags=True),
        "",
        "## Other findings",
        "",
        "The lifestyle review is not shown beside any warning or critical card.",
        "",
        "| finding | rule | conditions | indicator |",
        "|---|---|---|---|",
        *doc.rule_rows(red_flags=False),
        "",
        "## Drug classes",
        "",
        "A drug is recognised by its RxNorm ingredient code, a product code (SCD, SBD, GPCK,",
        "BPCK) of the generated `rules/rxnorm-products.tsv`, its WHO ATC substance code",
        "(`atc` in `rules/medications.yaml`), or an ingredient or brand name.",
        doc.route_words(),
        "",
        "| card | ingredients | drug references |",
        "|---|---|---|",
        *doc.drug_rows(),
        "",
        "## Card advice per hook",
        "",
        "What each card says and advises, as written in `rules/findings.yaml` (`{evidence}` is",
        "the drug, result or sign the card cites, `{lab}` the low result beside a drug,",
        "`{electrolyte}` and `{lowers}` what the drug lowers). In order-select and order-sign a",
        "drug card speaks of the drug being ordered: what ordering it will do and what to do",
        "before signing; in patient-view of a drug the patient already takes. Red-flag cards",
        "resting on a diagnosis use the red-flag texts of `rules/findings.yaml` in every hook.",
        "A card that wants a test names it as not measured (and offers it) or names the result",
        "on record with its value and date.",
        "",
        "| card | patient-view | order-select, order-sign (a drug being ordered) |",
        "|---|---|---|",
        *doc.advice_rows(),
        "",
        "## Card sources",
        "",
        "Each card's source supports the card's first claim kind (`rules/sources.yaml`) and is a",
        "guideline, textbook chapter, peer-reviewed review or drug label; a lab card links the",
        "page of the cut-off that judged it, a drug card cites the drug's reference.",
        "",
        "| card | claims | source | further links |",
        "|---|---|---|---|",
        *doc.card_rows(),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    sys.stdout.write(render(load_knowledge(Settings(auth="none").rules_dir)))


if __name__ == "__main__":
    main()
