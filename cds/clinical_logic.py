"""The clinical logic as a table a clinical reviewer can check without reading Python.

Generated from rules/ (`python -m cds.clinical_logic > docs/clinical-logic.md`); a test fails
when the committed document is out of date, so the table is always what the service does.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

from cds.knowledge import Analyte, Knowledge, Rule, Threshold, load_knowledge
from cds.settings import Settings

HEADER = ("| finding | data used | threshold / condition | indicator | source |\n"
          "|---|---|---|---|---|")
WORDS = {"below": "<", "at_or_below": "≤", "above": ">", "at_or_above": "≥"}


def _limit(threshold: Threshold, unit: str) -> str:
    op = next(k for k in WORDS if getattr(threshold, k) is not None)
    value = getattr(threshold, op)
    if isinstance(value, dict):
        value = ", ".join(f"{sex} {limit:g}" for sex, limit in value.items())
        return f"{WORDS[op]} {value} {unit}"
    return f"{WORDS[op]} {value:g} {unit}"


def _codes(codes: list[Any], limit: int = 6) -> str:
    shown = [f"{c.system.upper() if c.system != 'icd10cm' else 'ICD-10-CM'} {c.code}"
             + ("*" if c.prefix else "") for c in codes[:limit]]
    more = f" +{len(codes) - limit} more" if len(codes) > limit else ""
    return ", ".join(shown) + more


class _Table:
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
                text += (f", or {scored.label} (LOINC {scored.codes[0].code}) "
                         f"{_limit(scored.positive, scored.unit or 'points')}")
        for coded in labs.coded_observations.values():
            if coded.concept == name:
                answers = ", ".join(v.code for v in coded.positive_values)
                text += (f", or {coded.label} (LOINC {coded.codes[0].code}) answered "
                         f"SNOMED {answers}")
        return text

    def _concepts_in(self, pattern: Any) -> list[str]:
        """Concept names a fact pattern tests for, however deeply `$and`/`$or` nest them."""
        if isinstance(pattern, dict):
            found = [pattern["concept"]] if isinstance(pattern.get("concept"), str) else []
            for value in pattern.values():
                found += self._concepts_in(value)
            return found
        if isinstance(pattern, list):
            return [c for item in pattern for c in self._concepts_in(item)]
        return []

    def _describe(self, pattern: Any) -> str:
        text = str(pattern)
        concepts = self._concepts_in(pattern)
        parts = [self.concept(c) for c in dict.fromkeys(concepts)]
        if "'analyte': 'creatine-kinase'" in text:
            parts.append(self._lab_words("creatine-kinase", "high"))
        if "'analyte': 'tsh'" in text:
            parts.append(self._lab_words("tsh", "high"))
        if "'kind': 'neurology-care'" in text:
            parts.append("a neurology referral or encounter on record")
        if "'kind': 'lab-missing'" in text:
            missing = [a.label for a in self.k.labs.analytes.values() if a.workup]
            parts.append(f"no result in the lookback for any of: {', '.join(missing)}")
        described = " or ".join(parts)
        if "'kind': 'family'" in text:
            described += ", as own diagnosis or in FamilyMemberHistory"
        return described

    def _lab_words(self, name: str, which: str) -> str:
        analyte = self.k.labs.analytes[name]
        threshold = getattr(analyte, which)
        return f"{analyte.label} {_limit(threshold, analyte.unit)}"

    def rows(self) -> Iterator[str]:
        for ruleset, rules in self.k.rulesets.items():
            for name, rule in rules.items():
                yield from self._rule_rows(ruleset, name, rule)

    def _rule_rows(self, ruleset: str, name: str, rule: Rule) -> Iterator[str]:
        then = rule.then
        patterns = {alias: p for entry in rule.all for alias, p in entry.items()}
        gate = "twitch complaint + " if "complaint" in patterns else ""
        scope = "" if ruleset == "chart" else " (order hooks: the drug being ordered)"
        if name in ("low-lab-value", "critical-lab-value"):
            which = "low" if name == "low-lab-value" else "critical"
            for analyte_name, analyte in self.k.labs.analytes.items():
                threshold = getattr(analyte, which)
                if analyte.finding and threshold is not None:
                    yield self._lab_row(analyte_name, analyte, threshold, which, then.indicator)
            return
        if name.startswith("known"):
            yield (f"| any red flag (`{name}`) | {gate}diagnosis of that red flag + "
                   f"{self._describe(patterns['care'])} | no new referral suggested; the card "
                   f"says it is known | unchanged | {self.source('nice-ng127')} |")
            return
        if then.finding.startswith("$"):
            yield from self._drug_rows(patterns, gate, scope, then.indicator)
            return
        data = " + ".join(self._describe(p) for alias, p in patterns.items()
                          if alias != "complaint")
        text = self.k.findings.findings[then.finding]
        condition = ("no red flag found" if not data else
                     "one card listing every missing test" if "lab-missing" in str(patterns)
                     else "active Condition, or final Observation in the lookback")
        yield (f"| `{then.finding}` | {gate.rstrip(' +')}{' + ' + data if data else ''} | "
               f"{condition} (rule `{name}`) | {then.indicator} | {self.source(text.source)} |")

    def _drug_rows(self, patterns: dict[str, Any], gate: str, scope: str,
                   indicator: str) -> Iterator[str]:
        """One row per drug class; for the join rules only the drugs that lower Mg/K/Ca."""
        joins_lab = "lab" in patterns
        meds = self.k.medications
        for class_name, cls in meds.classes.items():
            ingredients = [n for n, i in meds.ingredients.items()
                           if i.drug_class == class_name and (i.lowers or not joins_lab)]
            if not ingredients:
                continue
            condition = ("being ordered" if scope else "active") + (
                "; the Mg/K/Ca it lowers is low" if joins_lab else "")
            yield (f"| `{cls.finding}`{scope} | {gate}{cls.label}: {', '.join(ingredients)} "
                   f"(RxNorm ingredient, SCD/SBD product or name) | {condition} | "
                   f"{indicator} | {self.source(self.k.findings.findings[cls.finding].source)} |")

    def _lab_row(self, name: str, analyte: Analyte, threshold: Threshold, which: str,
                 indicator: str) -> str:
        codes = ", ".join(f"LOINC {c.code}" for c in analyte.codes)
        basis = _limit(threshold, analyte.unit)
        if which == "low" and analyte.use_reference_range:
            basis = f"below the result's own reference range, else {basis}"
        if analyte.albumin_correction:
            corr = analyte.albumin_correction
            basis += (f"; corrected Ca = Ca + {corr.factor} x ({corr.reference_albumin} - "
                      "albumin g/dL) when albumin is known")
        return (f"| `{analyte.finding}` | twitch complaint + latest {analyte.label} in the "
                f"lookback ({codes}) | {basis} | {indicator} | {self.source(threshold.source)} |")


def render(knowledge: Knowledge) -> str:
    table = _Table(knowledge)
    lines = [
        "# Clinical logic of twitch-cds",
        "",
        "Generated from `rules/` by `python -m cds.clinical_logic`; do not edit by hand.",
        "Every chart card needs a documented twitch complaint "
        f"({table.concept('twitch')}). One card per finding; the most severe rule wins.",
        "Lab results count when final/amended/corrected and within the lookback; the latest",
        "result per analyte decides. Codes marked * match every sub-code.",
        "",
        HEADER,
        *table.rows(),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    sys.stdout.write(render(load_knowledge(Settings(auth="none").rules_dir)))


if __name__ == "__main__":
    main()
