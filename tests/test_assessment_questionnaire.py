"""The assessment as knowledge (issue 19 point 1): rules/assessment/questionnaire.yaml.

It is valid FHIR R4, every score is the Questionnaire's own FHIRPath (evaluated by fhirpathpy,
the same expression LHC-Forms evaluates in the browser) and agrees with the answers'
`ordinalValue`s, and a broken Questionnaire stops the service at start-up.
"""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path
from typing import Any

import fhirpathpy
import pytest
import yaml

from cds.assessment.answers import InvalidResponse, checked_response, transaction
from cds.knowledge import FHIRPATH_R4, SYSTEMS, Knowledge, load_knowledge
from tests.support.assessment import ORDINAL, answer, response

RULES = Path(__file__).resolve().parents[1] / "rules"


@pytest.fixture(scope="module")
def knowledge() -> Knowledge:
    return load_knowledge(RULES)


def options(knowledge: Knowledge, link_id: str) -> list[tuple[str, int]]:
    """(answer code, ordinalValue) of a choice question."""
    item = next(i for _, i in knowledge.assessment.items if i["linkId"] == link_id)
    return [
        (
            o["valueCoding"]["code"],
            int(next(e["valueDecimal"] for e in o["extension"] if e["url"] == ORDINAL)),
        )
        for o in item["answerOption"]
    ]


def score(knowledge: Knowledge, answers: dict[str, Any], item: str) -> int | None:
    """The score the app writes for these answers."""
    written = checked_response(knowledge.assessment, response(answers), "p1")
    found = [
        i
        for g in written["item"]
        for i in g.get("item", [])
        if i["linkId"] == item and "answer" in i
    ]
    return found[0]["answer"][0]["valueInteger"] if found else None


@pytest.mark.parametrize(
    ("total", "items"),
    [("gad-2-total", ["69725-0", "68509-9"]), ("75626-2", ["68518-0", "68519-8", "68520-6"])],
)
def test_every_score_is_the_sum_of_the_answers_ordinal_values(
    knowledge: Knowledge, total: str, items: list[str]
) -> None:
    expression = knowledge.assessment.calculated[total]
    choices = [options(knowledge, item) for item in items]
    for combination in itertools.product(*choices):
        answers = {item: answer(code) for item, (code, _) in zip(items, combination, strict=True)}
        qr = response(answers)
        computed = fhirpathpy.evaluate(qr, expression, {"resource": qr}, FHIRPATH_R4)
        assert computed == [sum(o for _, o in combination)], combination
    # What the app writes is that same score.
    highest = {item: answer(c[-1][0]) for item, c in zip(items, choices, strict=True)}
    assert score(knowledge, highest, total) == sum(c[-1][1] for c in choices)


def test_half_a_scale_is_no_score_and_a_score_sent_by_the_browser_is_replaced(
    knowledge: Knowledge,
) -> None:
    assert score(knowledge, {"69725-0": answer("LA6571-9")}, "gad-2-total") is None
    forged = {"69725-0": answer("LA6568-5"), "68509-9": answer("LA6568-5")}
    forged["gad-2-total"] = {"valueInteger": 6}
    assert score(knowledge, forged, "gad-2-total") == 0


def test_the_codes_the_rules_read_are_the_questionnaires(knowledge: Knowledge) -> None:
    topics = knowledge.assessment.topics
    loinc, snomed, local = SYSTEMS["loinc"], SYSTEMS["snomed"], SYSTEMS["twitch-cds"]
    # Scores and answers the lab rules already read (rules/labs.yaml).
    for code in ("75626-2", "93832-4", "72166-2"):
        assert (loinc, code) in topics
    # The red-flag screen, coded as the value sets of the red-flag rules.
    for code in ("26544005", "74035001", "40739000", "8011004", "267036007", "91019004"):
        assert (snomed, code) in topics
    assert topics[(local, "caffeine-drinks-per-day")] == "caffeine"
    assert topics[(local, "gad-2-total")] == "anxiety"


def test_no_observation_from_free_text_and_every_observation_derives_from_the_response(
    knowledge: Knowledge,
) -> None:
    answers = {
        "new-medicines": {"valueBoolean": True},
        "new-medicines-which": {"valueString": "Some Brand 20 mg"},
        "caffeine-drinks": {"valueInteger": 6},
    }
    bundle = transaction(knowledge.assessment, response(answers), "p1")
    assert bundle["type"] == "transaction"
    written, *observations = [e["resource"] for e in bundle["entry"]]
    assert written["resourceType"] == "QuestionnaireResponse"
    assert "Some Brand" not in str(observations)
    assert len(observations) == 2
    for obs in observations:
        assert obs["derivedFrom"] == [
            {"reference": bundle["entry"][0]["fullUrl"], "type": "QuestionnaireResponse"}
        ]
        assert obs["subject"] == {"reference": "Patient/p1"}
    caffeine = next(o for o in observations if "valueQuantity" in o)
    assert caffeine["valueQuantity"]["value"] == 6
    assert caffeine["valueQuantity"]["code"] == "{drinks}/d"


def test_an_answer_to_a_question_it_does_not_ask_is_refused(knowledge: Knowledge) -> None:
    with pytest.raises(InvalidResponse, match="does not ask"):
        checked_response(knowledge.assessment, response({"made-up": answer("x")}), "p1")


def broken_rules(tmp_path: Path, change: Any) -> Path:
    rules = tmp_path / "rules"
    shutil.copytree(RULES, rules)
    path = rules / "assessment" / "questionnaire.yaml"
    questionnaire = yaml.safe_load(path.read_text(encoding="utf-8"))
    change(questionnaire)
    path.write_text(yaml.safe_dump(questionnaire), encoding="utf-8")
    return rules


def test_invalid_fhir_stops_the_service_at_start_up(tmp_path: Path) -> None:
    rules = broken_rules(tmp_path, lambda q: q.update(item={"linkId": "not-a-list"}))
    with pytest.raises(ValueError, match="not valid FHIR"):
        load_knowledge(rules)


def test_a_score_expression_that_does_not_parse_stops_the_service(tmp_path: Path) -> None:
    def break_expression(q: dict[str, Any]) -> None:
        total = q["item"][3]["item"][2]
        total["extension"][0]["valueExpression"]["expression"] = "item.where(linkId = "

    with pytest.raises(ValueError, match="FHIRPath does not parse"):
        load_knowledge(broken_rules(tmp_path, break_expression))


def test_a_local_code_the_rules_read_must_be_asked(tmp_path: Path) -> None:
    def drop_caffeine(q: dict[str, Any]) -> None:
        q["item"][0]["item"].pop(0)

    with pytest.raises(ValueError, match="caffeine-drinks-per-day"):
        load_knowledge(broken_rules(tmp_path, drop_caffeine))
