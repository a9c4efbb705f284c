"""The loop of issue 19 in a real browser: a demo patient's card, shown in the project's EHR
page (tests/browser/page), carries the app's `smart` link; clicking it launches the app as the
CDS Hooks sandbox does (the launch registered with the demo's open FHIR server); the app is
answered in Chromium on a phone-sized screen with the keyboard alone; and the next
patient-view call names the answers as patient-reported evidence.

Runs when /usr/bin/chromium and node exist (scripts/install-test-deps.sh), as tests/test_browser.py.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from jwt.algorithms import ECAlgorithm

from cds.tools.demo import ensure_node_modules
from tests.support.cards import cards_by_code
from tests.support.demo import RunningDemo
from tests.support.fhir_server import node_available
from tests.support.jwt_tokens import TokenFactory

# The project's EHR page on its own loopback origin (tests/browser/page), as test_browser uses it.
from tests.test_browser import static_page  # noqa: F401  (a pytest fixture)

ROOT = Path(__file__).resolve().parents[1]
BROWSER_DIR = ROOT / "tests" / "browser"
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "tests" / "artifacts" / "browser"
PATIENT = "demo-benign-normal-workup"

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists() or not node_available(),
    reason="needs /usr/bin/chromium (Debian chromium) and node",
)


def patient_view(demo: RunningDemo, tokens: TokenFactory) -> dict[str, dict[str, Any]]:
    url = f"{demo.base_url}/cds-services/fasciculation-pv"
    body = {
        "hookInstance": str(uuid.uuid4()),
        "hook": "patient-view",
        "fhirServer": demo.fhir_url,
        "context": {"patientId": PATIENT, "userId": "Practitioner/1"},
    }
    answer = httpx.post(
        url, json=body, headers={"Authorization": f"Bearer {tokens.token(url)}"}, timeout=30
    )
    assert answer.status_code == 200, answer.text
    return cards_by_code(answer.json())


def test_answers_given_in_the_browser_become_the_next_calls_evidence(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    page_url = request.getfixturevalue("static_page")
    ensure_node_modules(BROWSER_DIR)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    tokens = TokenFactory(issuer="https://test-ehr.example.org")
    env = {"TWITCH_CDS_TRUSTED_ISSUERS": json.dumps(tokens.trusted_issuers())}
    with RunningDemo(tmp_path, env) as demo:
        before = patient_view(demo, tokens)
        assert set(before) == {"lifestyle-review"}
        (link,) = [link for link in before["lifestyle-review"]["links"] if link["type"] == "smart"]
        assert link["url"] == f"{demo.base_url}/app/launch"

        plan = {
            "pageUrl": page_url,
            "config": {
                "discovery": demo.discovery_url,
                "fhirServer": demo.fhir_url,
                "issuer": tokens.issuer,
                "kid": tokens.ec_kid,
                "privateJwk": ECAlgorithm.to_jwk(tokens.ec_key, as_dict=True),
                "patientId": PATIENT,
                "hook": "patient-view",
            },
            "screenshot": str(ARTIFACTS / "assessment.png"),
        }
        (tmp_path / "plan.json").write_text(json.dumps(plan))
        driven = subprocess.run(
            ["node", "assessment.mjs", str(tmp_path / "plan.json")],
            cwd=BROWSER_DIR,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert driven.returncode == 0, driven.stderr[-3000:]
        result = json.loads(driven.stdout)
        assert result["cards"] == ["lifestyle-review"]
        assert result["errors"] == []
        assert result["status"].startswith("Saved"), result
        assert result["overflow"] is False  # nothing wider than the phone's screen

        after = patient_view(demo, tokens)
        mnd = after["red-flag-motor-neuron-disease"]
        assert "muscle weakness (patient-reported, today)" in mnd["summary"]
        stimulant = after["stimulant"]["summary"].lower()
        assert "caffeine 6 drinks a day (patient-reported, today)" in stimulant
        assert "lifestyle-review" not in after  # a red flag silences it
        smart = [
            link for c in after.values() for link in c.get("links", []) if link["type"] == "smart"
        ]
        assert not smart
