"""In a real browser: Debian's Chromium, driven by playwright-core through the project's own
static EHR page (tests/browser/page), against `twitch-cds demo` (service with JWT
verification, FHIR server, demo patients).

The page does what an EHR front end does: discovery, prefetch read from the FHIR server (a
different origin: real CORS), hook calls with a JWT it signs in the browser, the cards
rendered, a suggestion clicked and a card dismissed with a reason. Expected cards come from
`demo/patients.yaml` by `source.topic` code, so card wording may change freely. A screenshot
per patient and hook is saved under tests/artifacts/browser/.

Runs when /usr/bin/chromium exists (scripts/install-test-deps.sh installs it) and node does.
"""

from __future__ import annotations

import functools
import json
import subprocess
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from jwt.algorithms import ECAlgorithm
from sqlalchemy import create_engine, text

from cds.tools.demo import DemoPatient, ensure_node_modules, load_patients
from tests.support.demo import RunningDemo
from tests.support.fhir_server import node_available
from tests.support.jwt_tokens import TokenFactory

CHROMIUM = Path("/usr/bin/chromium")
BROWSER_DIR = Path(__file__).resolve().parent / "browser"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts" / "browser"
PATIENTS = load_patients()
ACCEPT_ON = "demo-mnd-dysphagia"  # its red-flag card's referral suggestion is clicked
DISMISS_ON = "demo-low-mg-ppi"  # a card is dismissed with an override reason

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists() or not node_available(),
    reason="needs /usr/bin/chromium (Debian chromium) and node",
)


def case_name(patient: DemoPatient, hook: str) -> str:
    return f"{patient.patient_id}.{hook}"


CASES = [(patient, hook) for patient in PATIENTS for hook in patient.hooks]


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output quiet."""


@pytest.fixture(scope="module")
def static_page() -> Iterator[str]:
    """tests/browser/page served on its own loopback origin."""
    handler = functools.partial(_QuietHandler, directory=str(BROWSER_DIR / "page"))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/index.html"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser_run(
    static_page: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[dict[str, Any], RunningDemo]]:
    """Every demo patient and hook through the page in Chromium, once for the module."""
    ensure_node_modules(BROWSER_DIR)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    tokens = TokenFactory(issuer="https://test-ehr.example.org")
    workdir = tmp_path_factory.mktemp("browser")
    env = {"TWITCH_CDS_TRUSTED_ISSUERS": json.dumps(tokens.trusted_issuers())}
    with RunningDemo(workdir, env) as demo:
        page_config = {
            "discovery": demo.discovery_url,
            "fhirServer": demo.fhir_url,
            "issuer": tokens.issuer,
            "kid": tokens.ec_kid,
            "privateJwk": ECAlgorithm.to_jwk(tokens.ec_key, as_dict=True),
        }
        plan = {
            "pageUrl": static_page,
            "screenshotDir": str(ARTIFACTS),
            "cases": [
                {
                    "name": case_name(patient, hook),
                    "config": {
                        **page_config,
                        "patientId": patient.patient_id,
                        "hook": hook,
                        "draftOrder": patient.draft_order,
                    },
                    "accept": patient.patient_id == ACCEPT_ON and hook == "patient-view",
                    "dismiss": patient.patient_id == DISMISS_ON and hook == "patient-view",
                }
                for patient, hook in CASES
            ],
        }
        plan_path = workdir / "plan.json"
        plan_path.write_text(json.dumps(plan))
        driven = subprocess.run(
            ["node", "drive.mjs", str(plan_path)],
            cwd=BROWSER_DIR,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert driven.returncode == 0, driven.stderr
        results = {result["name"]: result for result in json.loads(driven.stdout)["results"]}
        yield results, demo


@pytest.mark.parametrize(
    ("patient", "hook"), CASES, ids=[case_name(patient, hook) for patient, hook in CASES]
)
def test_each_demo_patient_shows_its_cards(
    browser_run: tuple[dict[str, Any], RunningDemo], patient: DemoPatient, hook: str
) -> None:
    result = browser_run[0][case_name(patient, hook)]
    assert result["errors"] == []
    shown = [card["topic"] for card in result["cards"]]
    expected = patient.cards[hook]
    if patient.exact:
        assert sorted(shown) == sorted(expected), result["status"]
    else:
        assert set(expected) <= set(shown), f"expected {expected}, shown {shown}"
    assert not set(patient.absent) & set(shown)
    assert (ARTIFACTS / f"{case_name(patient, hook)}.png").stat().st_size > 0
    for card in result["cards"]:
        # What a clinician sees: indicator, summary, the evidence rendered from markdown,
        # the source, links, and a way to dismiss with a reason.
        assert card["indicator"] in ("critical", "warning", "info") and card["summary"]
        assert "<strong>Evidence</strong>" in card["detailHtml"] and "<li>" in card["detailHtml"]
        assert "**" not in card["detailHtml"] and card["source"].startswith("Source: ")


def test_links_and_override_reasons_are_rendered(
    browser_run: tuple[dict[str, Any], RunningDemo],
) -> None:
    cards = [card for result in browser_run[0].values() for card in result["cards"]]
    assert any(card["links"] for card in cards)
    assert all(card["overrideReasons"] for card in cards)


def test_red_flags_offer_a_referral_in_the_page(
    browser_run: tuple[dict[str, Any], RunningDemo],
) -> None:
    result = browser_run[0][
        case_name(next(p for p in PATIENTS if p.patient_id == ACCEPT_ON), "patient-view")
    ]
    red_flags = [card for card in result["cards"] if card["topic"].startswith("red-flag-")]
    assert red_flags and all(card["suggestions"] for card in red_flags)
    assert red_flags[0]["indicator"] == "critical"


def _feedback_rows(database_url: str) -> list[dict[str, Any]]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            rows = (
                connection.execute(
                    text(
                        "SELECT card_uuid, outcome, accepted_suggestions, override_reason_code "
                        "FROM feedback"
                    )
                )
                .mappings()
                .all()
            )
        return [dict(row) for row in rows]
    finally:
        engine.dispose()


def test_suggestion_click_and_dismissal_are_stored_as_feedback(
    browser_run: tuple[dict[str, Any], RunningDemo],
) -> None:
    results, demo = browser_run
    accepted = results[f"{ACCEPT_ON}.patient-view"]["accepted"]
    overridden = results[f"{DISMISS_ON}.patient-view"]["overridden"]
    assert accepted and overridden
    stored = _feedback_rows(demo.database_url)
    assert len(stored) == 2
    rows = {row["outcome"]: row for row in stored}
    assert rows["accepted"]["card_uuid"] == accepted["card"]
    assert json.loads(rows["accepted"]["accepted_suggestions"]) == [accepted["suggestion"]]
    assert rows["overridden"]["card_uuid"] == overridden["card"]
    assert rows["overridden"]["override_reason_code"] == overridden["reason"]


def test_no_console_error_in_any_page(browser_run: tuple[dict[str, Any], RunningDemo]) -> None:
    errors = {name: result["errors"] for name, result in browser_run[0].items() if result["errors"]}
    assert errors == {}
