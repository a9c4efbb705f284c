"""From rule firings to the findings a clinician sees: one per finding code.

Several rules may conclude the same finding (a drug card from "drug in class" and from "drug
lowers a low electrolyte"); the card keeps the most severe indicator and all cited evidence,
the most severe rule's evidence first. Suppression is declared in rules/findings.yaml.
"""

from __future__ import annotations

from dataclasses import dataclass

from cds.engine import Finding
from cds.knowledge import Knowledge

SEVERITY = {"critical": 2, "warning": 1, "info": 0}


@dataclass(frozen=True)
class ConsolidatedFinding:
    code: str
    indicator: str
    evidence: tuple[str, ...]
    rules: tuple[str, ...]
    known: bool = False


def consolidate(findings: list[Finding], knowledge: Knowledge) -> list[ConsolidatedFinding]:
    """One finding per code, most severe first, then red flags, then the order of rules/."""
    texts = knowledge.findings.findings
    merged: dict[str, ConsolidatedFinding] = {}
    for finding in sorted(findings, key=lambda f: -SEVERITY[f.indicator]):
        current = merged.get(finding.code)
        if current is None:
            merged[finding.code] = ConsolidatedFinding(
                finding.code, finding.indicator, finding.evidence, (finding.rule,),
                finding.known)
        else:
            evidence = current.evidence + tuple(
                e for e in finding.evidence if e not in current.evidence)
            merged[finding.code] = ConsolidatedFinding(
                current.code, current.indicator, evidence, (*current.rules, finding.rule),
                current.known or finding.known)
    red_flag = any(texts[code].red_flag for code in merged)
    kept = [f for f in merged.values()
            if not (texts[f.code].suppressed_by == "red-flag" and red_flag)]
    order = list(texts)
    return sorted(kept, key=lambda f: (-SEVERITY[f.indicator], not texts[f.code].red_flag,
                                       order.index(f.code)))
