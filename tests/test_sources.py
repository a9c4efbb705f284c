"""Sources that support the claim (issue 9 point 3).

rules/sources.yaml says which kind of claim each source supports; the service refuses to start
when a card, a threshold or a drug mechanism cites a source of the wrong kind, and every card
returned through HTTP cites a source of its claim's kind.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml
from fastapi.testclient import TestClient

from cds.knowledge import CARD_SOURCE_KINDS, Knowledge, load_knowledge
from cds.tools.rules_check import check
from tests.support.app import module_client
from tests.support.cards import patient_view_cards as cards
from tests.support.fhir import coded_observation, condition, lab, medication, twitch
from tests.test_clinical_coverage import SMOKING, busy_record

RULES = Path(__file__).resolve().parents[1] / "rules"


@pytest.fixture(scope="module")
def knowledge() -> Knowledge:
    return load_knowledge(RULES)


client = module_client()


def by_url(knowledge: Knowledge) -> dict[str, str]:
    return {source.url: key for key, source in knowledge.sources.items()}


# --- the source list itself --------------------------------------------------------------------


def test_no_search_result_pages_and_every_url_is_https(knowledge: Knowledge) -> None:
    for key, source in knowledge.sources.items():
        url = urlparse(source.url)
        assert url.scheme == "https", key
        assert "search" not in url.path.lower() and "q=" not in url.query, key
        assert source.label and source.supports, key


def test_guideline_titles_are_exact(knowledge: Knowledge) -> None:
    assert (
        "Motor neurone disease: assessment and management" in knowledge.sources["nice-ng42"].label
    )
    assert (
        "Suspected neurological conditions: recognition and referral"
        in knowledge.sources["nice-ng127"].label
    )


def test_no_referral_guideline_is_cited_for_a_drug_effect(knowledge: Knowledge) -> None:
    for code in ("corticosteroid", "estrogen", "electrolyte-depleting-drug", "cholinergic-drug"):
        text = knowledge.findings.findings[code]
        assert "drug-effect" in knowledge.sources[text.source].supports, code
        assert "referral" not in knowledge.sources[text.source].supports, code


# --- the start-up check: a claim without a source of its kind ---------------------------------


def copy_rules(tmp_path: Path) -> Path:
    target = tmp_path / "rules"
    shutil.copytree(RULES, target)
    return target


def edit(path: Path, change: Any) -> None:
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False))


def test_a_card_whose_source_does_not_support_its_claim_stops_the_service(tmp_path: Path) -> None:
    rules = copy_rules(tmp_path)
    # A PPI safety communication-like page cited for a diuretic card: a lab page is no drug
    # reference, so the card's claim (drug-effect) has no source of its kind.
    edit(
        rules / "findings.yaml",
        lambda d: d["findings"]["electrolyte-depleting-drug"].update(source="fhp-potassium"),
    )
    with pytest.raises(ValueError, match=r"electrolyte-depleting-drug.*fhp-potassium"):
        load_knowledge(rules)


def test_a_threshold_citing_a_guideline_instead_of_a_cut_off_page_stops_the_service(
    tmp_path: Path,
) -> None:
    rules = copy_rules(tmp_path)
    edit(
        rules / "labs.yaml", lambda d: d["analytes"]["potassium"]["low"].update(source="nice-ng127")
    )
    with pytest.raises(ValueError, match=r"analyte potassium low.*nice-ng127"):
        load_knowledge(rules)


def test_a_drug_mechanism_citing_a_non_drug_source_stops_the_service(tmp_path: Path) -> None:
    rules = copy_rules(tmp_path)
    edit(
        rules / "medications.yaml",
        lambda d: d["ingredients"]["furosemide"].update(mechanism_source="nice-ng42"),
    )
    with pytest.raises(ValueError, match="ingredient furosemide mechanism"):
        load_knowledge(rules)


# --- every card through HTTP -------------------------------------------------------------------


def test_every_card_cites_a_source_of_its_claim_kind(
    client: TestClient, knowledge: Knowledge
) -> None:
    keys = by_url(knowledge)
    found = cards(
        client,
        *busy_record(),
        lab("17861-6", 8.0, "mg/dL"),
        medication(text="Caffeine 200 MG Oral Tablet"),
        condition("F41.1"),
    )
    assert len(found) >= 12
    for code, card in found.items():
        text = knowledge.findings.findings[code]
        source = keys[card["source"]["url"]]
        assert text.claims[0] in knowledge.sources[source].supports, (code, source)
        # `smart` links launch the assessment app (tests/test_assessment_cards.py): no source.
        for link in (link for link in card["links"] if link["type"] == "absolute"):
            supports = knowledge.sources[keys[link["url"]]].supports
            assert set(text.claims) & set(supports), (code, link["url"])


def test_diuretic_cards_cite_their_drug_reference_not_a_ppi_communication(
    client: TestClient, knowledge: Knowledge
) -> None:
    keys = by_url(knowledge)
    thiazide = cards(client, twitch(), medication(text="Hydrochlorothiazide 25 MG Oral Tablet"))[
        "electrolyte-depleting-drug"
    ]
    loop = cards(client, twitch(), medication("4603", "furosemide 40 MG Oral Tablet"))[
        "electrolyte-depleting-drug"
    ]
    ppi = cards(client, twitch(), medication("7646", "omeprazole 20 MG"))[
        "electrolyte-depleting-drug"
    ]
    assert keys[thiazide["source"]["url"]] == "microzide-label"
    assert keys[loop["source"]["url"]] == "statpearls-furosemide"
    assert keys[ppi["source"]["url"]] == "ppi-hypomagnesemia-review"
    for card in (thiazide, loop):
        urls = [card["source"]["url"], *(link["url"] for link in card["links"])]
        assert not any("proton-pump" in url or "ppi" in url.lower() for url in urls)


def test_nicotine_card_does_not_cite_a_value_set(client: TestClient) -> None:
    card = cards(client, twitch(), coded_observation(SMOKING, "449868002"))["nicotine"]
    urls = [card["source"]["url"], *(link["url"] for link in card["links"])]
    assert not any("ValueSet" in url for url in urls)


def test_corticosteroid_and_hypokalaemia_cite_no_referral_guideline(
    client: TestClient, knowledge: Knowledge
) -> None:
    keys = by_url(knowledge)
    found = cards(
        client,
        twitch(),
        medication("312617", "predniSONE 5 MG Oral Tablet"),
        lab("2823-3", 3.1, "mmol/L"),
    )
    for code in ("corticosteroid", "hypokalemia"):
        urls = [found[code]["source"]["url"], *(link["url"] for link in found[code]["links"])]
        assert not any("referral" in knowledge.sources[keys[url]].supports for url in urls), code


def test_lab_cards_cite_a_textbook_and_link_the_page_of_the_cut_off_that_judged_them(
    client: TestClient, knowledge: Knowledge
) -> None:
    """Issue 17 point 6: a laboratory catalogue is cited for the reference interval beside
    the value (a link), never as the card's source."""
    keys = by_url(knowledge)
    low = cards(client, twitch(), lab("2823-3", 3.1, "mmol/L"))["hypokalemia"]
    critical = cards(client, twitch(), lab("2951-2", 118, "mmol/L"))["hyponatremia"]
    potassium = knowledge.labs.analytes["potassium"]
    sodium = knowledge.labs.analytes["sodium"]
    assert potassium.low is not None and sodium.critical is not None
    assert keys[low["source"]["url"]] == "statpearls-hypokalemia"
    assert keys[critical["source"]["url"]] == "statpearls-hyponatremia"
    assert potassium.low.source in {keys[link["url"]] for link in low["links"]}
    assert sodium.critical.source in {keys[link["url"]] for link in critical["links"]}
    # ... and named in the detail, beside the value it judged.
    page = knowledge.sources[potassium.low.source]
    assert f"**Usual limit as stated by:** [{page.label}]({page.url})" in low["detail"]


# --- issue 17 point 6: sources a reviewer accepts ----------------------------------------------


def test_every_source_records_its_kind(knowledge: Knowledge) -> None:
    kinds = {key: source.kind for key, source in knowledge.sources.items()}
    assert kinds["nice-ng127"] == "guideline"
    assert kinds["statpearls-hypokalemia"] == "textbook"
    assert kinds["fhp-potassium"] == "lab-catalogue"
    assert "consumer" not in kinds.values()  # none is kept once no card cites it


def test_every_card_cites_a_guideline_textbook_review_or_label_never_a_consumer_site(
    client: TestClient, knowledge: Knowledge
) -> None:
    keys = by_url(knowledge)
    found = cards(
        client,
        *busy_record(),
        lab("17861-6", 8.0, "mg/dL"),
        medication(text="Caffeine 200 MG Oral Tablet"),
        condition("F41.1"),
        coded_observation(SMOKING, "449868002"),
    )
    assert {"stimulant", "nicotine", "anxiety-stress", "hypocalcemia"} <= set(found)
    for code, card in found.items():
        source = knowledge.sources[keys[card["source"]["url"]]]
        assert source.kind in CARD_SOURCE_KINDS, (code, source.label)
        # `smart` links launch the assessment app: not a source.
        for link in (link for link in card["links"] if link["type"] == "absolute"):
            assert knowledge.sources[keys[link["url"]]].kind != "consumer", (code, link)
    everything = json.dumps(found).lower()
    assert "verywell" not in everything


def test_check_rules_fails_on_a_consumer_site_as_a_card_source(tmp_path: Path) -> None:
    rules = copy_rules(tmp_path)

    def add_consumer_site(data: dict[str, Any]) -> None:
        data["health-blog"] = {
            "label": "A health blog: causes of twitching",
            "url": "https://blog.example.org/twitching",
            "kind": "consumer",
            "supports": ["cause-of-twitching"],
        }

    edit(rules / "sources.yaml", add_consumer_site)
    edit(rules / "findings.yaml", lambda d: d["findings"]["stimulant"].update(source="health-blog"))
    problems = [str(p) for p in check(rules)]
    assert any("finding stimulant" in p and "health-blog is a consumer" in p for p in problems), (
        problems
    )


def test_check_rules_fails_on_a_laboratory_catalogue_as_a_card_source(tmp_path: Path) -> None:
    rules = copy_rules(tmp_path)
    edit(
        rules / "findings.yaml",
        lambda d: d["findings"]["hypokalemia"].update(
            source="fhp-potassium", claims=["lab-cutoff", "cause-of-twitching"]
        ),
    )
    problems = [str(p) for p in check(rules)]
    assert any("fhp-potassium is a lab-catalogue" in p for p in problems), problems
