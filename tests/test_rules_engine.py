"""Focused unit tests of the rules wrapper, the knowledge loader and the fact helpers."""

from __future__ import annotations

import shutil
import threading
from datetime import date
from pathlib import Path

import psutil
import pytest

from cds.decision import engine as engine_module
from cds.decision.engine import RulesEngine
from cds.decision.facts import parse_date
from cds.knowledge import load_knowledge
from cds.settings import PROJECT_ROOT
from cds.units import convert

RULES = PROJECT_ROOT / "rules"


@pytest.fixture(scope="module")
def engine() -> RulesEngine:
    return RulesEngine(load_knowledge(RULES))


def low_mg(ref: str = "e1") -> dict:
    return {
        "kind": "lab",
        "analyte": "magnesium",
        "finding": "hypomagnesemia",
        "low": True,
        "critical": False,
        "high": False,
        "evidence": ref,
    }


COMPLAINT = {"kind": "complaint", "evidence": "e0"}


def test_rule_fires_only_with_the_complaint(engine: RulesEngine) -> None:
    assert engine.evaluate("chart", [low_mg()]) == []
    codes = {f.code for f in engine.evaluate("chart", [low_mg(), COMPLAINT])}
    assert codes == {"hypomagnesemia", "lifestyle-review"}


def test_unknown_fact_kinds_are_handled_by_the_catch_all(engine: RulesEngine) -> None:
    facts = [{"kind": "something-new", "evidence": "e9"}, low_mg(), COMPLAINT]
    assert "hypomagnesemia" in {f.code for f in engine.evaluate("chart", facts)}
    assert engine.evaluate("orders", [low_mg(), COMPLAINT]) == []


def test_the_catch_all_handles_every_fact_without_running_an_action(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its action would be one Python call per fact (most of the rules step's cost)."""
    ran: list[object] = []
    monkeypatch.setattr(engine_module, "_never_runs", lambda c: ran.append(c))
    fresh = RulesEngine(load_knowledge(RULES))
    facts = [{"kind": "something-new", "evidence": "e9"}, low_mg(), COMPLAINT]
    assert {f.code for f in fresh.evaluate("chart", facts)} == {
        "hypomagnesemia",
        "lifestyle-review",
    }
    assert ran == []


def test_join_of_drug_and_low_electrolyte_cites_both(engine: RulesEngine) -> None:
    drug = {
        "kind": "depletes",
        "analyte": "magnesium",
        "finding": "electrolyte-depleting-drug",
        "ingredient": "omeprazole",
        "evidence": "e2",
    }
    other_drug = {**drug, "analyte": "potassium", "evidence": "e3"}
    findings = engine.evaluate("chart", [low_mg(), drug, other_drug, COMPLAINT])
    warnings = [f for f in findings if f.code == "electrolyte-depleting-drug"]
    assert [(f.indicator, f.evidence) for f in warnings] == [("warning", ("e2", "e1"))]


def test_no_session_state_is_left_behind(engine: RulesEngine) -> None:
    """durable-rules has 1,024 session slots: 3,000 evaluations must all still work."""
    process = psutil.Process()
    for _ in range(500):
        engine.evaluate("chart", [low_mg(), COMPLAINT])
    before = process.memory_info().rss
    for _ in range(3000):
        assert len(engine.evaluate("chart", [low_mg(), COMPLAINT])) == 2
    assert process.memory_info().rss - before < 20 * 1024 * 1024
    assert engine._collected == {}


def test_concurrent_evaluations_get_exactly_their_own_findings(engine: RulesEngine) -> None:
    errors: list[str] = []

    def work(index: int) -> None:
        facts = [low_mg(f"lab{index}"), {**COMPLAINT, "evidence": f"c{index}"}]
        for _ in range(300):
            findings = engine.evaluate("chart", facts)
            refs = {ref for f in findings for ref in f.evidence}
            if refs != {f"lab{index}", f"c{index}"}:
                errors.append(f"thread {index}: {refs}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_knowledge_loader_rejects_a_dangling_reference(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(RULES, rules)
    text = (
        (rules / "findings.yaml").read_text().replace("source: statpearls-b12", "source: nowhere")
    )
    (rules / "findings.yaml").write_text(text)
    with pytest.raises(ValueError, match="unknown source nowhere"):
        load_knowledge(rules)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2026", date(2026, 1, 1)),
        ("2026-03", date(2026, 3, 1)),
        ("2026-03-04", date(2026, 3, 4)),
        ("2026-03-04T23:30:00+05:00", date(2026, 3, 4)),
        ("2026-03-04T10:00:00Z", date(2026, 3, 4)),
        ("2026-13-01", None),
        ("yesterday", None),
        (None, None),
        (20260304, None),
    ],
)
def test_fhir_dates_of_every_precision(raw: object, expected: date | None) -> None:
    assert parse_date(raw) == expected


def test_unit_conversion_is_case_insensitive_and_never_assumes() -> None:
    factors = {"mg/dl": 1.0, "mmol/l": 2.4305}
    assert convert(0.5, ["mmol/L"], factors) == (pytest.approx(1.21525), "mmol/L")
    assert convert(1.5, ["MG/DL"], factors) == (1.5, "MG/DL")
    assert convert(1.5, [None], factors) is None
    assert convert(1.5, ["mEq/L"], factors) is None


def test_clinical_logic_document_is_generated_from_rules() -> None:
    """docs/clinical-logic.md must be what `python -m cds.tools.clinical_logic` prints today."""
    from cds.tools.clinical_logic import render

    document = (PROJECT_ROOT / "docs" / "clinical-logic.md").read_text(encoding="utf-8")
    assert document == render(load_knowledge(RULES))
    for code in ("hypocalcemia", "red-flag-neuromyotonia", "workup-incomplete", "stimulant"):
        assert f"`{code}`" in document
