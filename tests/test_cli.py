"""`twitch-cds` for knowledge authors and testers: evaluate, rules, check-rules, discovery,
feedback-report. Each answers what the service itself would (compared through the HTTP API)."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from sqlalchemy import select

from cds.knowledge import load_knowledge
from cds.settings import PROJECT_ROOT
from cds.store.storage import card_issued, make_engine
from cds.tools.clinical_logic import render
from tests.conftest import SERVICE_PV
from tests.support.cli import run
from tests.support.fhir import days_ago, lab, medication, patient, twitch
from tests.support.paths import SYNTHEA
from tests.support.waiting import wait_for

COMMANDS = ["serve", "migrate", "evaluate", "rules", "check-rules", "discovery", "feedback-report"]


def write_bundle(path: Path, *resources: dict[str, Any]) -> Path:
    path.write_text(
        json.dumps(
            {
                "resourceType": "Bundle",
                "type": "collection",
                "entry": [{"resource": r} for r in resources],
            }
        )
    )
    return path


def topics(response_json: dict[str, Any]) -> list[str]:
    return [card["source"]["topic"]["code"] for card in response_json["cards"]]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str) -> None:
    status, out, err = run(command, "--help")
    assert status == 0, err
    assert out.startswith(f"usage: twitch-cds {command}")


# --- evaluate -------------------------------------------------------------------------------


def test_evaluate_bundle_ndjson_and_request_give_the_services_cards(
    tmp_path: Path, client: TestClient
) -> None:
    record = [patient(), twitch(), lab("19123-9", 1.4, "mg/dL", when=days_ago(3))]
    bundle = write_bundle(tmp_path / "record.json", *record)
    ndjson = tmp_path / "export.ndjson"
    ndjson.write_text("\n".join(json.dumps(r) for r in record) + "\n")

    status, out, _ = run("evaluate", str(bundle), "--json")
    assert status == 0
    from_bundle = json.loads(out)
    status, out, _ = run("evaluate", str(ndjson), "--json")
    assert status == 0 and topics(json.loads(out)) == topics(from_bundle)

    request = {
        "hookInstance": "0b0e7a1e-4b8d-4c1c-9d1e-4f5a6b7c8d9e",
        "hook": "patient-view",
        "context": {"patientId": "p1"},
        "prefetch": {
            "patient": record[0],
            "conditions": {
                "resourceType": "Bundle",
                "type": "searchset",
                "entry": [{"resource": record[1]}],
            },
            "observations": {
                "resourceType": "Bundle",
                "type": "searchset",
                "entry": [{"resource": record[2]}],
            },
            "medicationRequests": {"resourceType": "Bundle", "type": "searchset"},
        },
    }
    (tmp_path / "request.json").write_text(json.dumps(request))
    # The cards' `smart` link names the app on the base URL clients use: the test client's.
    status, out, _ = run(
        "evaluate",
        str(tmp_path / "request.json"),
        "--json",
        env={"TWITCH_CDS_PUBLIC_BASE_URL": "http://testserver"},
    )
    over_http = client.post(f"/cds-services/{SERVICE_PV}", json=request).json()
    assert status == 0 and json.loads(out) == over_http
    assert topics(from_bundle) == topics(over_http)
    assert "hypomagnesemia" in topics(over_http)


def test_evaluate_prints_a_readable_table(tmp_path: Path) -> None:
    bundle = write_bundle(
        tmp_path / "r.json", patient(), twitch(), lab("2601-3", 0.58, "mmol/L", when=days_ago(2))
    )
    status, out, _ = run("evaluate", str(bundle))
    assert status == 0
    assert out.startswith(f"{SERVICE_PV} (patient-view), as of ")
    assert "[WARNING] Low magnesium (0.58 mmol/L" in out
    assert "evidence: Magnesium 0.58 mmol/L (= 1.4 mg/dL)" in out
    assert "**" not in out


def test_evaluate_as_of_makes_an_old_export_current(tmp_path: Path) -> None:
    bundle = write_bundle(
        tmp_path / "r.json", patient(), twitch(), lab("19123-9", 1.4, "mg/dL", when="2019-03-01")
    )
    _, today, _ = run("evaluate", str(bundle), "--json")
    _, then, _ = run("evaluate", str(bundle), "--json", "--as-of", "2019-03-10")
    assert "hypomagnesemia" not in topics(json.loads(today))  # stale today
    assert "hypomagnesemia" in topics(json.loads(then))


def test_evaluate_order_sign_reads_draft_orders(tmp_path: Path) -> None:
    bundle = write_bundle(
        tmp_path / "r.json",
        patient(),
        twitch(),
        medication("312615", "predniSONE 20 MG Oral Tablet", status="draft"),
    )
    status, out, _ = run("evaluate", str(bundle), "--hook", "order-sign", "--json")
    assert status == 0 and topics(json.loads(out)) == ["corticosteroid"]


def test_evaluate_a_synthea_patient() -> None:
    (path,) = SYNTHEA.glob("Lupe_Little_*.json")
    status, out, _ = run("evaluate", str(path))
    assert status == 0 and "0 card(s)" in out  # no twitch complaint: no cards


def test_evaluate_a_demo_patient_resolves_its_relative_dates() -> None:
    """The demo files write dates as `{{today - N days}}`: evaluated as the demo shows them."""
    demo = yaml.safe_load((PROJECT_ROOT / "demo" / "patients.yaml").read_text())["patients"][0]
    status, out, _ = run(
        "evaluate", str(PROJECT_ROOT / "demo" / "patients" / demo["file"]), "--json"
    )
    assert status == 0
    assert set(demo["cards"]["patient-view"]) <= set(topics(json.loads(out)))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[1, 2]", "expected a JSON object"),
        ('{"resourceType": "Bundle", "entry": []}', "expected exactly one Patient"),
        ('{"resourceType": "Patient", "id": "p1"}\nnot json\n', "line 2: not JSON"),
    ],
)
def test_evaluate_bad_files_exit_2_with_a_reason(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    status, out, err = run("evaluate", str(path))
    assert status == 2 and out == "" and message in err


# --- rules, check-rules, discovery -----------------------------------------------------------


def test_rules_prints_the_clinical_logic_table() -> None:
    status, out, _ = run("rules")
    assert status == 0
    assert out == render(load_knowledge(PROJECT_ROOT / "rules"))
    assert "Magnesium" in out and "mg/dL" in out  # thresholds with their units


def test_check_rules_passes_on_the_shipped_rules() -> None:
    status, out, _ = run("check-rules")
    assert status == 0 and out.strip().endswith(": OK")


def broken_rules(tmp_path: Path, edits: dict[str, list[tuple[str, str]]]) -> Path:
    rules = tmp_path / "rules"
    shutil.copytree(PROJECT_ROOT / "rules", rules)
    for name, replacements in edits.items():
        text = (rules / name).read_text()
        for old, new in replacements:
            assert old in text, (name, old)
            text = text.replace(old, new, 1)
        (rules / name).write_text(text)
    return rules


def test_check_rules_lists_every_problem_with_its_place(tmp_path: Path) -> None:
    rules = broken_rules(
        tmp_path,
        {
            "valuesets.yaml": [
                (
                    '    - {system: snomed, code: "82470000", display: Fasciculation, status: V2, '
                    "source: HPO}\n",
                    '    - {system: snomed, code: "82470000", display: Fasciculation, status: V2, '
                    "source: HPO}\n"
                    '    - {system: snomed, code: "82470000", display: Fasciculation again}\n'
                    '    - {system: snowmed, code: "1234", display: Typo, source: HPO}\n',
                )
            ],
            "labs.yaml": [
                (
                    "    unit: mg/dL\n    units: {mg/dL: 1.0, mmol/L: 2.4305",
                    "    units: {mg/dL: 1.0, mmol/L: 2.4305",
                )
            ],
            "ruleset.yaml": [("{concept: fluid-loss}", "{concept: fluid-lost}")],
            "findings.yaml": [("    source: statpearls-hypomagnesemia\n", "    source: nowhere\n")],
        },
    )
    status, out, _ = run("check-rules", "--rules-dir", str(rules))
    assert status == 1
    for expected in [
        "valuesets.yaml: twitch.codes[2]: unknown code system 'snowmed'",
        "valuesets.yaml: twitch.codes[1]: code 82470000 has no source",
        "valuesets.yaml: twitch: snomed 82470000 listed 2 times",
        "labs.yaml: analytes.magnesium: no canonical `unit`: thresholds low, critical would "
        "have no unit",
        "ruleset.yaml: rulesets.chart.fluid-loss: unknown value set 'fluid-lost'",
        "findings.yaml: findings.hypomagnesemia.source: source 'nowhere' is not in sources.yaml",
    ]:
        assert expected in out, out


def test_check_rules_reports_invalid_yaml_with_its_line(tmp_path: Path) -> None:
    rules = broken_rules(tmp_path, {"sources.yaml": [("nice-ng127:\n", "nice-ng127: [\n")]})
    status, out, _ = run("check-rules", "--rules-dir", str(rules))
    assert status == 1 and "sources.yaml: line " in out and "not valid YAML" in out


def test_discovery_prints_what_the_service_publishes(client: TestClient) -> None:
    status, out, _ = run("discovery")
    assert status == 0 and json.loads(out) == client.get("/cds-services").json()


# --- feedback-report ----------------------------------------------------------------------


def test_feedback_report_per_topic_with_both_denominators_and_reasons(
    tmp_path: Path, make_client: Callable[..., TestClient]
) -> None:
    database = f"sqlite:///{tmp_path / 'feedback.sqlite3'}"
    client = make_client(database_url=database)
    cards: dict[str, list[str]] = {}
    offered: list[dict[str, Any]] = []
    for _ in range(5):
        request = {
            "hookInstance": str(uuid.uuid4()),
            "hook": "patient-view",
            "context": {"patientId": "p1"},
            "prefetch": {
                "patient": patient(),
                "conditions": _searchset(twitch()),
                "observations": _searchset(lab("19123-9", 1.4, "mg/dL")),
                "medicationRequests": _searchset(),
            },
        }
        for card in client.post(f"/cds-services/{SERVICE_PV}", json=request).json()["cards"]:
            cards.setdefault(card["source"]["topic"]["code"], []).append(card["uuid"])
            offered += card["overrideReasons"]
    magnesium, workup = cards["hypomagnesemia"], cards["workup-incomplete"]
    # Override reasons have their own code system (not the topic's), each with a display.
    systems = {coding["system"] for coding in offered}
    assert systems == {"https://github.com/twitch-cds/twitch-cds/CodeSystem/override-reason"}
    assert all(coding["display"] for coding in offered)
    chosen = next(c for c in offered if c["code"] == "already-addressed")
    # As the sandbox sends it: system and code, no display.
    reason = {"reason": {"system": chosen["system"], "code": chosen["code"]}}
    entries = [
        {"card": magnesium[0], "outcome": "overridden", "overrideReason": reason},
        {
            "card": magnesium[1],
            "outcome": "overridden",
            "overrideReason": {**reason, "userComment": "patient told me she is on supplements"},
        },
        {"card": magnesium[2], "outcome": "accepted", "acceptedSuggestions": [{"id": "s1"}]},
        {"card": workup[0], "outcome": "accepted", "acceptedSuggestions": [{"id": "s2"}]},
    ]
    for entry in entries:
        entry["outcomeTimestamp"] = "2026-11-29T10:00:00Z"
    # The issued cards reach the database once a second (cds/store/issued_cards.py); feedback
    # that arrives before its card's row counts as topic "unknown" in the metric.
    issued = {card for uuids in cards.values() for card in uuids}
    wait_for(lambda: issued <= recorded_cards(database), "the issued cards in the database")
    response = client.post(f"/cds-services/{SERVICE_PV}/feedback", json={"feedback": entries})
    assert response.json()["stored"] == 4
    metrics = client.get("/metrics").text
    assert (
        'twitch_cds_feedback_entries_total{outcome="overridden",service="fasciculation-pv",'
        'topic="hypomagnesemia"}'
    ) in metrics

    status, out, _ = run("feedback-report", "--database-url", database, "--json")
    assert status == 0
    report = {entry["topic"]: entry for entry in json.loads(out)}
    assert report["hypomagnesemia"] | {"reasons": None} == {
        "topic": "hypomagnesemia",
        "title": "Low magnesium",
        "issued": 5,
        "answered": 3,
        "accepted": 1,
        "overridden": 2,
        "comments": 1,
        "reasons": None,
        "overridden_of_issued": 2 / 5,
        "overridden_of_answered": 2 / 3,
    }
    assert report["hypomagnesemia"]["reasons"] == {"Already addressed": 2}
    workup_report = report["workup-incomplete"]
    assert workup_report["overridden_of_issued"] == workup_report["overridden_of_answered"] == 0
    assert next(iter(report)) == "hypomagnesemia"  # noisiest first

    status, out, _ = run("feedback-report", "--database-url", database)
    header = out.splitlines()[0].split()
    assert header[1:7] == [
        "issued",
        "answered",
        "accepted",
        "overridden",
        "overridden/issued",
        "overridden/answered",
    ]
    line = next(line for line in out.splitlines() if line.startswith("hypomagnesemia"))
    # Both denominators side by side: 2 of 5 issued, 2 of 3 answered.
    assert line.split()[1:9] == ["5", "3", "1", "2", "2/5", "(40%)", "2/3", "(67%)"]
    assert "Already addressed (2); 1 with a comment" in line
    assert "supplements" not in out  # free text is never printed


def recorded_cards(database_url: str) -> set[str]:
    """The uuids of the issued cards the service has written to the database so far."""
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            return set(connection.execute(select(card_issued.c.card_uuid)).scalars())
    finally:
        engine.dispose()


def _searchset(*resources: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": r} for r in resources],
    }
