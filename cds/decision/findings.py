"""From rule firings to the findings a clinician sees: one per finding code.

Several rules may conclude the same finding (a drug card from "drug in class" and from "drug
lowers a low electrolyte"); the card keeps the most severe indicator and all cited evidence,
the most severe rule's evidence first, and the union of the rules' tags. A diagnosis that is
only suspected is never known or diagnosed: `suspected` removes those tags. Suppression is
declared in rules/findings.yaml (`suppressed_by: serious`: not beside a warning or critical).
"""

from __future__ import annotations

from dataclasses import dataclass

from cds.decision.engine import Finding
from cds.knowledge import Knowledge

SEVERITY = {"critical": 2, "warning": 1, "info": 0}
OVERRULED_BY_SUSPECTED = frozenset({"known", "diagnosed"})


@dataclass(frozen=True)
class ConsolidatedFinding:
    code: str
    indicator: str
    evidence: tuple[str, ...]
    rules: tuple[str, ...]
    tags: frozenset[str] = frozenset()
    diagnoses: tuple[str, ...] = ()

    @property
    def known(self) -> bool:
        """Diagnosed and under neurology care."""
        return "known" in self.tags


def _merge(current: ConsolidatedFinding | None, finding: Finding) -> ConsolidatedFinding:
    diagnoses = (finding.diagnosis,) if finding.diagnosis else ()
    if current is None:
        return ConsolidatedFinding(
            finding.code,
            finding.indicator,
            finding.evidence,
            (finding.rule,),
            finding.tags,
            diagnoses,
        )
    return ConsolidatedFinding(
        current.code,
        current.indicator,
        current.evidence + tuple(e for e in finding.evidence if e not in current.evidence),
        (*current.rules, finding.rule),
        current.tags | finding.tags,
        current.diagnoses + tuple(d for d in diagnoses if d not in current.diagnoses),
    )


def consolidate(findings: list[Finding], knowledge: Knowledge) -> list[ConsolidatedFinding]:
    """One finding per code, most severe first, then red flags, then the order of rules/."""
    texts = knowledge.findings.findings
    merged: dict[str, ConsolidatedFinding] = {}
    for finding in sorted(findings, key=lambda f: -SEVERITY[f.indicator]):
        merged[finding.code] = _merge(merged.get(finding.code), finding)
    merged = {
        code: f
        if "suspected" not in f.tags
        else ConsolidatedFinding(
            f.code, f.indicator, f.evidence, f.rules, f.tags - OVERRULED_BY_SUSPECTED, f.diagnoses
        )
        for code, f in merged.items()
    }
    serious = any(SEVERITY[f.indicator] > 0 for f in merged.values())
    kept = [
        f for f in merged.values() if not (texts[f.code].suppressed_by == "serious" and serious)
    ]
    order = list(texts)
    return sorted(
        kept,
        key=lambda f: (-SEVERITY[f.indicator], not texts[f.code].red_flag, order.index(f.code)),
    )
