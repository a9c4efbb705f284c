"""docs/adding-a-finding.md, run as written: its worked example (low phosphate) is applied to a
copy of rules/ and the new card is asked for through the HTTP API, as an EHR would.

The YAML, the console output and the test are read from the document itself, so the document
stays true: when a snippet there changes, this runs the new one. Only rules/ is copied and
changed, which is the document's promise that a knowledge author needs no Python.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from cds.settings import PROJECT_ROOT
from tests.conftest import SERVICE_PV
from tests.support.cards import cards_by_code
from tests.support.cli import run
from tests.support.fhir import bundle, days_ago, hook_request, lab, patient, twitch

DOC = PROJECT_ROOT / "docs" / "adding-a-finding.md"
# The record of the document's `evaluate` example: 0.61 mmol/L on 2026-11-24, as of 2026-11-29.
EXAMPLE_RESULT = (0.61, "mmol/L", "2026-11-24")
EXAMPLE_AS_OF = "2026-11-29"

# "## 2. The data (`rules/labs.yaml`, under `analytes:`)": the file a step's YAML goes into,
# and the top-level mapping it is added under (none: appended at the end of the file).
STEP = re.compile(r"^## .*\(`rules/(?P<file>[\w.-]+)`(?:, under `(?P<under>\w+):`)?\)$", re.M)


@dataclass(frozen=True)
class Snippet:
    """One YAML block of the document and where in rules/ it goes."""

    file: str
    under: str | None
    text: str


def fenced(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", text, re.M | re.S)


def yaml_snippets(doc: str) -> list[Snippet]:
    """Every YAML block of the document, each placed by the step it appears in."""
    steps = list(STEP.finditer(doc))
    snippets = []
    for step, following in zip(steps, [*steps[1:], None], strict=True):
        end = doc.find("\n## ", step.end()) if following is None else following.start()
        section = doc[step.end() : end if end >= 0 else None]
        snippets += [Snippet(step["file"], step["under"], text) for text in fenced(section, "yaml")]
    return snippets


def apply(rules: Path, snippet: Snippet) -> None:
    """Add the snippet as an author would: under its mapping, or at the end of the file."""
    path = rules / snippet.file
    text = path.read_text(encoding="utf-8")
    if snippet.under is None:
        text = text.rstrip("\n") + "\n" + snippet.text
    else:
        mapping = re.search(rf"^{snippet.under}:[ \t]*\n", text, re.M)
        assert mapping, f"{snippet.file} has no top-level `{snippet.under}:`"
        text = text[: mapping.end()] + snippet.text + text[mapping.end() :]
    path.write_text(text, encoding="utf-8")


def console_output(doc: str, command: str) -> list[str]:
    """The lines the document shows under `$ COMMAND` in its console blocks."""
    for block in fenced(doc, "console"):
        lines = block.splitlines()
        if lines and lines[0] == f"$ {command}":
            return [line for line in lines[1:] if line.strip()]
    raise AssertionError(f"no `$ {command}` console block in {DOC.name}")


def assert_shows(expected: list[str], output: str) -> None:
    """Each line the document shows appears in the output, in order; "..." stands for anything."""
    lines = iter(output.splitlines())
    for line in expected:
        if line == "...":
            continue
        pattern = re.compile(".*".join(re.escape(part) for part in line.split("...")))
        assert any(pattern.fullmatch(actual) for actual in lines), (line, output)


@pytest.fixture(scope="module")
def doc() -> str:
    return DOC.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def phosphate_rules(doc: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of rules/ after steps 1 to 4 of the document."""
    rules = tmp_path_factory.mktemp("author") / "rules"
    shutil.copytree(PROJECT_ROOT / "rules", rules)
    snippets = yaml_snippets(doc)
    # Every YAML block belongs to a step that names its file: none is silently left out.
    assert len(snippets) == len(fenced(doc, "yaml")) > 0
    for snippet in snippets:
        apply(rules, snippet)
    return rules


@pytest.fixture
def author_client(
    make_client: Callable[..., TestClient], phosphate_rules: Path
) -> Iterator[TestClient]:
    yield make_client(rules_dir=phosphate_rules)


def test_the_shipped_rules_have_no_phosphate_yet(client: TestClient) -> None:
    """Otherwise the example would prove nothing: the card must come from the document's YAML."""
    request = hook_request(twitch(), lab("2777-1", 0.61, "mmol/L"))
    response = client.post(f"/cds-services/{SERVICE_PV}", json=request)
    assert "hypophosphatemia" not in cards_by_code(response.json())
    assert "2777-1" not in json.dumps(client.get("/cds-services").json())


def test_check_rules_accepts_the_changed_rules(doc: str, phosphate_rules: Path) -> None:
    status, out, err = run("check-rules", env={"TWITCH_CDS_RULES_DIR": str(phosphate_rules)})
    assert status == 0, out + err
    assert out.strip() == f"{phosphate_rules}: OK"
    assert_shows(console_output(doc, "twitch-cds check-rules"), out)


def test_evaluate_prints_the_card_the_document_shows(
    doc: str, phosphate_rules: Path, tmp_path: Path
) -> None:
    value, unit, when = EXAMPLE_RESULT
    record = tmp_path / "record.json"
    record.write_text(
        json.dumps(bundle(patient(), twitch(), lab("2777-1", value, unit, when=when)))
    )
    status, out, err = run(
        "evaluate",
        str(record),
        "--as-of",
        EXAMPLE_AS_OF,
        env={"TWITCH_CDS_RULES_DIR": str(phosphate_rules)},
    )
    assert status == 0, err
    assert_shows(console_output(doc, "twitch-cds evaluate record.json"), out)


def test_the_clinical_logic_table_lists_the_new_threshold(phosphate_rules: Path) -> None:
    status, out, err = run("rules", env={"TWITCH_CDS_RULES_DIR": str(phosphate_rules)})
    assert status == 0, err
    [row] = [line for line in out.splitlines() if line.startswith("| Phosphate |")]
    assert "2777-1" in row and "< 2.5 mg/dL" in row and "renal.testcatalog.org/show/PHOS" in row


def test_the_service_asks_for_phosphate_and_answers_the_new_card(
    author_client: TestClient,
) -> None:
    """What step 2 says the service does on its own: prefetch, unit conversion, evidence, source."""
    discovery = author_client.get("/cds-services").json()
    for service in discovery["services"]:
        assert "http://loinc.org|2777-1" in service["prefetch"]["observations"], service["id"]

    when = days_ago(5)
    request = hook_request(twitch(), lab("2777-1", 0.61, "mmol/L", when=when))
    response = author_client.post(f"/cds-services/{SERVICE_PV}", json=request)
    assert response.status_code == 200, response.text
    card = cards_by_code(response.json())["hypophosphatemia"]
    assert card["indicator"] == "warning"
    assert card["summary"] == f"Low phosphate (0.61 mmol/L on {when})"
    # The card cites the textbook chapter; the laboratory page of the cut-off is linked.
    assert card["source"]["url"] == "https://www.ncbi.nlm.nih.gov/books/NBK493172/"
    assert card["source"]["label"] == "StatPearls: Hypophosphatemia"
    assert "https://renal.testcatalog.org/show/PHOS" in [link["url"] for link in card["links"]]
    assert "0.61 mmol/L (= 1.9 mg/dL)" in card["detail"]
    assert "below 0.81 mmol/L" in card["detail"]  # the limit in the unit of the value
    assert "LOINC 2777-1" in card["detail"]


@pytest.mark.parametrize(
    ("result", "low"),
    [
        (lab("2777-1", 2.6, "mg/dL", low=3.0, high=4.5, range_unit="mg/dL"), True),  # own range
        (lab("2777-1", 2.4, "g/L"), False),  # a unit not in `units`: not judged
        (lab("2777-1", 2.4, "mg/dL", when=days_ago(400)), False),  # older than the lookback
    ],
)
def test_reference_range_unknown_unit_and_stale_result(
    author_client: TestClient, result: dict[str, Any], low: bool
) -> None:
    response = author_client.post(
        f"/cds-services/{SERVICE_PV}", json=hook_request(twitch(), result)
    )
    assert ("hypophosphatemia" in cards_by_code(response.json())) is low


def test_the_documents_own_test_passes(doc: str, author_client: TestClient) -> None:
    """Step 6's test, run as the document writes it, with the client on the changed rules."""
    [source] = fenced(doc, "python")
    names: dict[str, Any] = {
        "pytest": pytest,
        "SERVICE_PV": SERVICE_PV,
        "cards_by_code": cards_by_code,
        "days_ago": days_ago,
        "hook_request": hook_request,
        "lab": lab,
        "twitch": twitch,
    }
    exec(compile(source, f"{DOC}:step-6", "exec"), names)  # the document's code, on purpose
    [test] = [value for name, value in names.items() if name.startswith("test_")]
    [parametrize] = [mark for mark in test.pytestmark if mark.name == "parametrize"]
    arguments, cases = parametrize.args
    if isinstance(arguments, str):
        arguments = [name.strip() for name in arguments.split(",")]
    assert cases
    for case in cases:
        test(client=author_client, **dict(zip(arguments, case, strict=True)))
