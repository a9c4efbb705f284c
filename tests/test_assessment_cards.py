"""The rules read the patient's answers (issue 19 points 3 and 4), through the HTTP API.

The Observations are the ones the app writes (cds.assessment.answers), as the FHIR server
returns them; they arrive in the `observations` prefetch like any other.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs, urlparse

from fastapi.testclient import TestClient

from tests.support.app import module_client
from tests.support.assessment import answer, rules, written_observations
from tests.support.cards import cards_by_code, patient_view_cards
from tests.support.fhir import LOINC, days_ago, hook_request, lab, twitch

client = module_client()
SNOMED = "http://snomed.info/sct"
CALM = {
    "caffeine-drinks": {"valueInteger": 1},
    "stimulant-supplements": {"valueBoolean": False},
    "strenuous-exercise": {"valueBoolean": False},
    "sleep-hours": {"valueDecimal": 8},
    "recent-sleep-loss": {"valueBoolean": False},
    "69725-0": answer("LA6568-5"),
    "68509-9": answer("LA6569-3"),
    "68518-0": answer("LA18926-8"),
    "68519-8": answer("LA15694-5"),
    "68520-6": answer("LA6270-8"),
    "72166-2": answer("266919005", SNOMED),
    "nicotine-products": {"valueBoolean": False},
    "weakness": {"valueBoolean": False},
    "swallowing": {"valueBoolean": False},
}
COMPLETE_WORKUP = [
    lab("17861-6", 9.4, "mg/dL"),
    lab("19123-9", 2.0, "mg/dL"),
    lab("2823-3", 4.2, "mmol/L"),
    lab("62292-8", 35, "ng/mL"),
]


def answered(answers: dict[str, Any], days: int = 2) -> list[dict[str, Any]]:
    return written_observations(rules(), answers, f"{days_ago(days)}T09:30:00Z")


def smart_links(card: dict[str, Any]) -> list[dict[str, Any]]:
    return [link for link in card.get("links", []) if link["type"] == "smart"]


def test_without_an_assessment_the_lifestyle_and_workup_cards_launch_the_app(
    client: TestClient,
) -> None:
    request = hook_request(twitch())
    response = client.post("/cds-services/fasciculation-pv", json=request)
    cards = cards_by_code(response.json())
    for code in ("lifestyle-review", "workup-incomplete"):
        (link,) = smart_links(cards[code])
        url = urlparse(link["url"])
        assert url.path == "/app/launch" and not parse_qs(url.query)
        assert json.loads(link["appContext"]) == {
            "service": "fasciculation-pv",
            "hookInstance": request["hookInstance"],
        }
        assert link["label"]
    assert all(
        not smart_links(c)
        for code, c in cards.items()
        if code not in ("lifestyle-review", "workup-incomplete")
    )


def test_the_answers_name_the_causes_as_patient_reported_evidence(client: TestClient) -> None:
    answers = {
        **CALM,
        "caffeine-drinks": {"valueInteger": 6},
        "sleep-hours": {"valueDecimal": 4.5},
        "69725-0": answer("LA6571-9"),
        "68509-9": answer("LA6570-1"),
        "68518-0": answer("LA18929-2"),
        "68519-8": answer("LA18930-0"),
        "68520-6": answer("LA18891-4"),
        "72166-2": answer("449868002", SNOMED),
    }
    cards = patient_view_cards(client, twitch(), *COMPLETE_WORKUP, *answered(answers))
    summaries = {code: card["summary"] for code, card in cards.items()}
    assert (
        "caffeine 6 drinks a day (patient-reported, 2 days ago)" in summaries["stimulant"].lower()
    )
    assert (
        "sleep duration 4.5 h (patient-reported, 2 days ago)"
        in summaries["sleep-deprivation"].lower()
    )
    assert "GAD-2 score 5 points (patient-reported, 2 days ago)" in summaries["anxiety-stress"]
    assert "AUDIT-C total score 9 points (patient-reported" in summaries["alcohol"]
    assert "smokes tobacco daily (patient-reported" in summaries["nicotine"].lower()
    # The evidence line names the answer, its date, where it came from and the cut-off.
    detail = cards["anxiety-stress"]["detail"]
    assert f"patient-reported, 2 days ago, dated {days_ago(2)}" in detail
    assert "at or above 3 points" in detail and "gad-2-total" in detail
    # Cut-offs are the sources' (EFSA caffeine, GAD-2 Kroenke 2007), not the card's opinion.
    assert "6 drinks a day" in cards["stimulant"]["detail"]
    assert "at or above 4 drinks a day" in cards["stimulant"]["detail"]


def test_answers_below_the_cut_offs_raise_no_cause(client: TestClient) -> None:
    cards = patient_view_cards(client, twitch(), *COMPLETE_WORKUP, *answered(CALM))
    for code in ("stimulant", "sleep-deprivation", "anxiety-stress", "alcohol", "nicotine"):
        assert code not in cards
    assert set(cards) == {"lifestyle-review"}


def test_a_supplement_sleep_loss_or_vape_answer_raises_its_cause(client: TestClient) -> None:
    answers = {
        **CALM,
        "stimulant-supplements": {"valueBoolean": True},
        "recent-sleep-loss": {"valueBoolean": True},
        "nicotine-products": {"valueBoolean": True},
    }
    cards = patient_view_cards(client, twitch(), *COMPLETE_WORKUP, *answered(answers))
    assert (
        "pre-workout or stimulant supplement (patient-reported"
        in cards["stimulant"]["summary"].lower()
    )
    assert (
        "sleep loss in the past week (patient-reported"
        in cards["sleep-deprivation"]["summary"].lower()
    )
    assert "e-cigarettes or other nicotine products" in cards["nicotine"]["summary"].lower()


def test_a_positive_red_flag_answer_raises_the_red_flag_with_its_referral(
    client: TestClient,
) -> None:
    answers = {**CALM, "weakness": {"valueBoolean": True}, "numbness": {"valueBoolean": True}}
    cards = patient_view_cards(client, twitch(), *COMPLETE_WORKUP, *answered(answers))
    mnd = cards["red-flag-motor-neuron-disease"]
    assert mnd["indicator"] == "warning"
    assert "muscle weakness (patient-reported, 2 days ago)" in mnd["summary"]
    assert "patient-reported" in mnd["detail"]
    assert cards["red-flag-neuropathy"]["indicator"] == "warning"
    (referral,) = mnd["suggestions"]
    reason = referral["actions"][0]["resource"]["reasonCode"][0]["text"]
    assert "patient-reported" in reason
    # A red flag silences the lifestyle card, as for a coded sign.
    assert "lifestyle-review" not in cards


def test_a_swallowing_answer_is_critical_and_a_no_is_no_evidence(client: TestClient) -> None:
    cards = patient_view_cards(
        client, twitch(), *answered({**CALM, "swallowing": {"valueBoolean": True}})
    )
    assert cards["red-flag-motor-neuron-disease"]["indicator"] == "critical"
    calm = patient_view_cards(client, twitch(), *answered(CALM))
    assert "red-flag-motor-neuron-disease" not in calm


def test_muscular_dystrophy_in_the_family_as_the_patient_reports_it(client: TestClient) -> None:
    answers = {**CALM, "family-muscular-dystrophy": {"valueBoolean": True}}
    cards = patient_view_cards(client, twitch(), *COMPLETE_WORKUP, *answered(answers))
    card = cards["red-flag-muscular-dystrophy"]
    assert "muscular dystrophy in the family (patient-reported, 2 days ago)" in card["summary"]
    assert card["suggestions"]


def test_after_the_assessment_the_link_goes_and_the_lifestyle_card_asks_only_what_is_left(
    client: TestClient,
) -> None:
    cards = patient_view_cards(client, twitch(), *answered(CALM, days=3))
    lifestyle = cards["lifestyle-review"]
    assert not smart_links(lifestyle) and not smart_links(cards["workup-incomplete"])
    assert lifestyle["summary"].endswith("3 days ago: also ask about fluids")
    assert (
        f"**Answered by the patient** (3 days ago, {days_ago(3)}): "
        "caffeine, sleep, stress, exercise, nicotine and alcohol." in lifestyle["detail"]
    )


def test_a_partial_assessment_leaves_the_unanswered_triggers_asked(client: TestClient) -> None:
    cards = patient_view_cards(
        client, twitch(), *COMPLETE_WORKUP, *answered({"caffeine-drinks": {"valueInteger": 0}})
    )
    summary = cards["lifestyle-review"]["summary"]
    assert summary.endswith("also ask about sleep, stress, exercise, fluids, nicotine and alcohol")


def test_an_assessment_older_than_the_lookback_is_not_on_file(client: TestClient) -> None:
    cards = patient_view_cards(
        client, twitch(), *answered({**CALM, "caffeine-drinks": {"valueInteger": 9}}, days=400)
    )
    assert "stimulant" not in cards
    assert smart_links(cards["lifestyle-review"])


def test_a_clinicians_observation_is_not_labelled_patient_reported(client: TestClient) -> None:
    sleep = lab("93832-4", 5, "h")
    cards = patient_view_cards(client, twitch(), sleep)
    assert "patient-reported" not in cards["sleep-deprivation"]["detail"]
    assert smart_links(cards["lifestyle-review"])


def test_the_prefetch_template_asks_for_every_question_of_the_assessment(
    client: TestClient,
) -> None:
    discovery = client.get("/cds-services").json()
    template = discovery["services"][0]["prefetch"]["observations"]
    local = "https://github.com/twitch-cds/twitch-cds/CodeSystem/assessment"
    for code in (
        f"{local}|caffeine-drinks-per-day",
        f"{local}|strenuous-exercise-48h",
        f"{LOINC}|68518-0",
        f"{LOINC}|69725-0",
        f"{local}|gad-2-total",
    ):
        assert code in template


def test_a_yes_no_rule_reads_is_named_on_the_lifestyle_card(client: TestClient) -> None:
    answers = {
        **CALM,
        "strenuous-exercise": {"valueBoolean": True},
        "new-medicines": {"valueBoolean": True},
        "cramps": {"valueBoolean": True},
        "wasting": {"valueBoolean": False},
    }
    cards = patient_view_cards(client, twitch(), *COMPLETE_WORKUP, *answered(answers))
    assert set(cards) == {"lifestyle-review"}
    assert (
        "**Also reported:** strenuous exercise in the last 48 hours, new medicine or supplement "
        "in the last 3 months and muscle cramps." in cards["lifestyle-review"]["detail"]
    )


def test_only_the_red_flag_screen_answered_asks_every_trigger(client: TestClient) -> None:
    cards = patient_view_cards(
        client, twitch(), *COMPLETE_WORKUP, *answered({"cramps": {"valueBoolean": True}})
    )
    lifestyle = cards["lifestyle-review"]
    assert lifestyle["summary"].endswith(
        "also ask about caffeine, sleep, stress, exercise, fluids, nicotine and alcohol"
    )
    assert "Answered by the patient" not in lifestyle["detail"]
    assert "**Also reported:** muscle cramps." in lifestyle["detail"]
