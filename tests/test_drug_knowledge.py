"""Issue 16 point 5: drugs as EHRs code them, through HTTP with the JSON an EHR sends.

- RxNorm product codes (SCD, SBD, GPCK, BPCK) sent without a display resolve to their
  ingredients through rules/rxnorm-products.tsv, and the product's RxNorm name (its dose form)
  says whether a corticosteroid is systemic;
- routes as Epic writes them (a local code and the text "Both Eyes", "Nebulization") go
  through the route synonym table of rules/medications.yaml;
- a draft order's `medicationReference` to a Medication sent beside it in `draftOrders`, or
  contained in it, is followed.

Plus the generated table against its generator and source format, and `check-rules` on
authoring mistakes in the new tables.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from cds.decision.facts import Vocabulary
from cds.knowledge import load_knowledge
from cds.settings import PROJECT_ROOT
from tests.conftest import SERVICE_OS, SERVICE_PV, SERVICE_SIGN
from tests.support.app import module_client
from tests.support.cards import cards_by_code
from tests.support.cli import run
from tests.support.fhir import RXNORM, hook_request, lab, medication, transaction, twitch
from tests.support.fhir_server import FhirTestServer, node_available
from tests.test_cli import broken_rules

POTASSIUM = "2823-3"
MAGNESIUM = "19123-9"
# Epic sends its own route list: a code of a local system and the route's text.
EPIC_ROUTES = "urn:oid:1.2.840.114350.1.13.0.1.7.4.798268.7025"
TABLE = PROJECT_ROOT / "rules" / "rxnorm-products.tsv"
SCRIPT = PROJECT_ROOT / "scripts" / "build-rxnorm-products.py"
SAMPLE = PROJECT_ROOT / "tests" / "fixtures" / "rxnorm-extract"
VALUE_SETS = PROJECT_ROOT / "tests" / "fixtures" / "rxnorm-valueset"
SUPPLEMENT = VALUE_SETS / "amphetamines-class-medications.json"
ANTIBIOTICS = VALUE_SETS / "antibiotic-medications-for-uri.json"

VOCABULARY = Vocabulary(load_knowledge(PROJECT_ROOT / "rules"))

client = module_client()


def coded(code: str, **extra: Any) -> dict[str, Any]:
    """A MedicationRequest naming its drug by an RxNorm code alone: no display, no text."""
    resource = medication(code)
    assert resource["medicationCodeableConcept"] == {"coding": [{"system": RXNORM, "code": code}]}
    return {**resource, **extra}


def cards(client: TestClient, request: dict[str, Any], service: str) -> dict[str, dict[str, Any]]:
    response = client.post(f"/cds-services/{service}", json=request)
    assert response.status_code == 200, response.text
    return cards_by_code(response.json())


def chart(client: TestClient, *resources: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return cards(client, hook_request(*resources), SERVICE_PV)


# --- product codes without a display -----------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "finding", "named"),
    [
        ("748856", "estrogen", "Yaz 28 Day"),  # BPCK: a branded contraceptive pack
        ("749785", "estrogen", "Ortho Tri-Cyclen 28 Day"),  # BPCK
        ("748798", "estrogen", "drospirenone 3 mg / ethinyl estradiol 0.02 mg"),  # GPCK
        ("1536586", "estrogen", "Xulane"),  # SBD: the contraceptive patch
        ("762675", "corticosteroid", "methylprednisolone 4 mg oral tablet"),  # GPCK: a dose pack
        ("259966", "corticosteroid", "methylprednisolone 4 mg oral tablet"),  # SCD
        ("198029", "nicotine", "nicotine 0.583"),  # SCD: a 24-hour patch
        # Amphetamine products, from the supplement (the extract lacks amphetamine's record):
        ("1600698", "stimulant", "Evekeo"),  # SBD
        ("1739809", "stimulant", "Adzenys"),  # SBD: an extended-release tablet
        ("884655", "stimulant", "amphetamine sulfate 5 mg oral tablet"),  # SCD
    ],
)
def test_a_product_code_alone_gives_its_class_card_naming_the_product(
    client: TestClient, code: str, finding: str, named: str
) -> None:
    card = chart(client, twitch(), coded(code))[finding]
    # The record gave no name: the card names the product by its RxNorm name.
    assert named.lower() in card["detail"].lower(), card["detail"]


@pytest.mark.parametrize(
    ("code", "named", "low"),
    [
        ("313988", "furosemide 40 mg oral tablet", (POTASSIUM, 3.1, "mmol/L")),
        ("310798", "hydrochlorothiazide 25 mg oral tablet", (POTASSIUM, 3.1, "mmol/L")),
        # From the antibiotic supplement (the extract lacks amikacin's record):
        ("1723156", "2 ml amikacin 250 mg/ml injection", (MAGNESIUM, 1.4, "mg/dL")),
    ],
)
def test_electrolyte_depleting_products_by_code_alone_warn_when_what_they_lower_is_low(
    client: TestClient, code: str, named: str, low: tuple[str, float, str]
) -> None:
    analyte, value, unit = low
    card = chart(client, twitch(), coded(code), lab(analyte, value, unit))[
        "electrolyte-depleting-drug"
    ]
    assert card["indicator"] == "warning"
    assert named in card["summary"].lower() and f"{value} {unit}" in card["summary"]
    # Ordered by code alone, without a twitch complaint: it lowers what is already low.
    order = {**coded(code), "id": "draft-1", "status": "draft"}
    request = order_request(SERVICE_SIGN, [{"resource": order}], lab(analyte, value, unit))
    card = cards(client, request, SERVICE_SIGN)["electrolyte-depleting-drug"]
    assert card["indicator"] == "warning" and named in card["summary"].lower()


@pytest.mark.parametrize(
    ("code", "ingredient"),
    [
        ("106258", "hydrocortisone"),  # hydrocortisone 10 MG/ML Topical Cream
        ("252559", "budesonide"),  # budesonide 0.5 MG/ML Inhalation Suspension
        ("1596779", "budesonide"),  # budesonide 2 MG/ACTUAT Rectal Foam
        ("1545172", "hydrocortisone"),  # hydrocortisone acetate 100 MG/ML Rectal Foam
    ],
)
def test_a_local_corticosteroid_by_code_alone_is_not_systemic(
    client: TestClient, code: str, ingredient: str
) -> None:
    # The code is recognised (so the missing card is the route's doing, not an unknown code)...
    assert VOCABULARY.ingredients_of(coded(code)["medicationCodeableConcept"]) == {ingredient}
    # ...and the table's name carries the dose form: no steroid card, the low K still shows.
    found = chart(client, twitch(), coded(code), lab(POTASSIUM, 3.1, "mmol/L"))
    assert "corticosteroid" not in found and found["hypokalemia"]["indicator"] == "warning"


def test_an_unknown_product_code_alone_gives_no_drug_card(client: TestClient) -> None:
    found = chart(client, twitch(), coded("860975"), lab(POTASSIUM, 3.1, "mmol/L"))  # metformin
    assert not {"corticosteroid", "estrogen", "electrolyte-depleting-drug"} & set(found)


# --- routes as Epic writes them -----------------------------------------------------------------


def epic_route(code: str, text: str | None) -> dict[str, Any]:
    coding: dict[str, Any] = {"system": EPIC_ROUTES, "code": code}
    if text:
        coding["display"] = text
    return {"coding": [coding], **({"text": text} if text else {})}


def dexamethasone(route: dict[str, Any]) -> dict[str, Any]:
    """Dexamethasone by its ingredient code: only the route says how it is given."""
    return coded("3264", dosageInstruction=[{"text": "1 drop twice daily", "route": route}])


@pytest.mark.parametrize(
    ("code", "text"),
    [
        ("11", "Both Eyes"),
        ("12", "Left Eye"),
        ("18", "Nebulization"),
        ("19", "Inhalation"),
        ("21", "Each Nostril"),
        ("24", "Right Ear"),
        ("30", "Rectal"),
        ("33", "Topical"),
    ],
)
def test_epic_routes_that_are_not_systemic_give_no_steroid_card(
    client: TestClient, code: str, text: str
) -> None:
    found = chart(
        client, twitch(), dexamethasone(epic_route(code, text)), lab(POTASSIUM, 3.1, "mmol/L")
    )
    assert "corticosteroid" not in found and found["hypokalemia"]["indicator"] == "warning"
    # The same text without the display (only `route.text`) says the same.
    route = {"coding": [{"system": EPIC_ROUTES, "code": code}], "text": text}
    assert "corticosteroid" not in chart(client, twitch(), dexamethasone(route))


@pytest.mark.parametrize(("code", "text"), [("15", "Oral"), ("7", "Intravenous"), ("9", None)])
def test_epic_routes_that_are_systemic_or_silent_give_the_steroid_card(
    client: TestClient, code: str, text: str | None
) -> None:
    # A local code without text says nothing: the drug counts (never hide a systemic steroid).
    found = chart(
        client, twitch(), dexamethasone(epic_route(code, text)), lab(POTASSIUM, 3.1, "mmol/L")
    )
    assert found["corticosteroid"]["indicator"] == "warning"


def test_the_route_decides_before_the_product_name(client: TestClient) -> None:
    # An oral-tablet product given "Both Eyes" cannot be; the route is the most specific sign
    # (rules/medications.yaml: route, then form, then product name).
    tablet = coded("197579", dosageInstruction=[{"route": epic_route("11", "Both Eyes")}])
    assert "corticosteroid" not in chart(client, twitch(), tablet)
    tablet = coded("197579", dosageInstruction=[{"route": epic_route("15", "Oral")}])
    assert "corticosteroid" in chart(client, twitch(), tablet)


# --- draft orders: sibling and contained Medications --------------------------------------------


def draft_order(reference: str, order_id: str = "draft-1", **extra: Any) -> dict[str, Any]:
    resource = medication(None, status="draft")
    del resource["medicationCodeableConcept"]
    return {**resource, "id": order_id, "medicationReference": {"reference": reference}, **extra}


def drug(medication_id: str | None, code: str) -> dict[str, Any]:
    """A Medication that codes its drug by an RxNorm product code alone."""
    resource: dict[str, Any] = {
        "resourceType": "Medication",
        "code": {"coding": [{"system": RXNORM, "code": code}]},
    }
    return {**resource, "id": medication_id} if medication_id else resource


def order_request(
    service: str, entries: list[dict[str, Any]], *record: dict[str, Any]
) -> dict[str, Any]:
    orders = [e["resource"] for e in entries if e["resource"]["resourceType"] != "Medication"]
    context: dict[str, Any] = {
        "draftOrders": {"resourceType": "Bundle", "type": "collection", "entry": entries}
    }
    if service == SERVICE_OS:
        context["selections"] = [f"MedicationRequest/{o['id']}" for o in orders]
    hook = "order-select" if service == SERVICE_OS else "order-sign"
    return hook_request(*record, hook=hook, **context)


BOTH_HOOKS = pytest.mark.parametrize("service", [SERVICE_OS, SERVICE_SIGN])


@BOTH_HOOKS
def test_a_draft_referring_to_a_sibling_medication_by_id(client: TestClient, service: str) -> None:
    entries = [
        {"resource": drug("med-yaz", "748856")},
        {"resource": draft_order("Medication/med-yaz")},
    ]
    found = cards(client, order_request(service, entries, twitch()), service)
    assert list(found) == ["estrogen"] and "yaz" in found["estrogen"]["detail"].lower()


@BOTH_HOOKS
def test_a_draft_referring_to_a_sibling_medication_by_full_url(
    client: TestClient, service: str
) -> None:
    url = "urn:uuid:5d0c2a3e-8f1b-4c7d-9e6a-2b3c4d5e6f70"
    entries = [
        {"fullUrl": url, "resource": drug(None, "313988")},
        {"fullUrl": "urn:uuid:0f1e2d3c-4b5a-4697-8877-665544332211", "resource": draft_order(url)},
    ]
    request = order_request(service, entries, lab(POTASSIUM, 3.0, "mmol/L"))
    card = cards(client, request, service)["electrolyte-depleting-drug"]
    assert card["indicator"] == "warning" and "furosemide 40 mg" in card["summary"].lower()


@BOTH_HOOKS
def test_a_draft_referring_to_a_contained_medication(client: TestClient, service: str) -> None:
    order = draft_order("#hctz", contained=[drug("hctz", "310798")])
    request = order_request(service, [{"resource": order}], lab(POTASSIUM, 3.0, "mmol/L"))
    card = cards(client, request, service)["electrolyte-depleting-drug"]
    assert card["indicator"] == "warning" and "hydrochlorothiazide" in card["summary"].lower()


@BOTH_HOOKS
def test_a_draft_referring_to_a_medication_nobody_sent_gives_no_drug_card(
    client: TestClient, service: str
) -> None:
    entries = [
        {"resource": drug("med-yaz", "748856")},
        {"resource": draft_order("Medication/other")},
    ]
    assert cards(client, order_request(service, entries, twitch()), service) == {}


@pytest.mark.skipif(not node_available(), reason="node/npm not installed")
@BOTH_HOOKS
def test_a_draft_referring_to_a_medication_on_the_fhir_server_fetches_it(
    client: TestClient, fhir: FhirTestServer, service: str
) -> None:
    fhir.load(transaction(drug("medFuro40", "313988")))
    entries = [{"resource": draft_order("Medication/medFuro40")}]
    request = order_request(service, entries, lab(POTASSIUM, 3.0, "mmol/L"))
    assert cards(client, request, service) == {}  # no FHIR server named: only the reference
    request["fhirServer"] = fhir.base_url
    card = cards(client, request, service)["electrolyte-depleting-drug"]
    assert card["indicator"] == "warning" and "furosemide 40 mg" in card["summary"].lower()


def test_order_select_reads_only_the_selected_draft_but_follows_its_sibling(
    client: TestClient,
) -> None:
    entries = [
        {"resource": drug("med-yaz", "748856")},
        {"resource": drug("med-pred", "762675")},
        {"resource": draft_order("Medication/med-yaz", order_id="yaz")},
        {"resource": draft_order("Medication/med-pred", order_id="pred")},
    ]
    request = order_request(SERVICE_OS, entries, twitch())
    request["context"]["selections"] = ["MedicationRequest/pred"]
    assert list(cards(client, request, SERVICE_OS)) == ["corticosteroid"]


# --- ATC codes, as European records send them ---------------------------------------------------

WHO_ATC = "http://www.whocc.no/atc"
BFARM_ATC = "http://fhir.de/CodeSystem/bfarm/atc"  # the German edition, as the MII data codes


def atc_coded(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    """A MedicationStatement naming its drug by an ATC code (a German display, or none)."""
    coding = {"system": system, "code": code, **({"display": display} if display else {})}
    resource = medication(kind="MedicationStatement")
    return {**resource, "medicationCodeableConcept": {"coding": [coding]}}


def test_a_german_furosemide_by_atc_warns_when_potassium_is_low(client: TestClient) -> None:
    """German "Furosemid" matches no English name: the ATC code alone makes it furosemide."""
    furosemid = atc_coded(BFARM_ATC, "C03CA01", "Furosemid")
    assert "electrolyte-depleting-drug" in chart(client, twitch(), furosemid)
    card = chart(client, twitch(), furosemid, lab(POTASSIUM, 3.1, "mmol/L"))[
        "electrolyte-depleting-drug"
    ]
    assert card["indicator"] == "warning"
    assert "Furosemid" in card["summary"] and "3.1 mmol/L" in card["summary"]


@pytest.mark.parametrize(
    ("system", "code", "display", "finding", "named"),
    [
        # No display at all: the card names the ingredient the code means.
        (WHO_ATC, "H02AB06", None, "corticosteroid", "Prednisolone"),
        (BFARM_ATC, "H02AB06", "Prednisolon", "corticosteroid", "Prednisolon"),
        (
            "urn:oid:2.16.840.1.113883.6.73",
            "N06BA04",
            "Methylphenidat",
            "stimulant",
            "Methylphenidat",
        ),
        (BFARM_ATC, "G03CA01", "Ethinylestradiol", "estrogen", "Ethinylestradiol"),
        (BFARM_ATC, "N07AA02", "Pyridostigminbromid", "cholinergic-drug", "Pyridostigminbromid"),
    ],
)
def test_an_atc_substance_code_gives_its_class_card(
    client: TestClient, system: str, code: str, display: str | None, finding: str, named: str
) -> None:
    found = chart(client, twitch(), atc_coded(system, code, display))
    assert finding in found
    assert f"**{named}**" in found[finding]["detail"]


@pytest.mark.parametrize(
    ("code", "display"),
    [
        ("D07AA02", "Hydrocortison"),  # corticosteroids, dermatological
        ("S01BA01", "Dexamethason"),  # corticosteroids, ophthalmological
        ("R03BA02", "Budesonid"),  # inhaled budesonide
    ],
)
def test_an_atc_code_of_a_local_corticosteroid_gives_no_steroid_card(
    client: TestClient, code: str, display: str
) -> None:
    assert "corticosteroid" not in chart(client, twitch(), atc_coded(BFARM_ATC, code, display))


def test_a_medication_resource_coded_in_atc_is_followed(client: TestClient) -> None:
    """As the MII data sends it: the statement refers to a Medication coded in ATC only."""
    drug = {
        "resourceType": "Medication",
        "id": "med-atc",
        "code": {
            "coding": [{"system": BFARM_ATC, "code": "C03AA03", "display": "Hydrochlorothiazid"}]
        },
    }
    statement = medication(kind="MedicationStatement")
    del statement["medicationCodeableConcept"]
    statement["medicationReference"] = {"reference": "#med-atc"}
    statement["contained"] = [drug]
    card = chart(client, twitch(), statement, lab(POTASSIUM, 3.1, "mmol/L"))[
        "electrolyte-depleting-drug"
    ]
    assert "Hydrochlorothiazid" in card["summary"] and card["indicator"] == "warning"


def test_every_atc_code_of_the_rules_is_the_clinical_references() -> None:
    """rules/medications.yaml takes its ATC codes from docs/clinical-reference.md §3, where
    each was checked against the WHO ATC/DDD index; one code names one ingredient."""
    reference = (PROJECT_ROOT / "docs" / "clinical-reference.md").read_text(encoding="utf-8")
    rows = {
        cells[1].split("/")[0].strip(): cells[3]
        for line in reference.split("## 3. Medications")[1].split("## 4.")[0].splitlines()
        if line.startswith("| ") and len(cells := line.split("|")) > 4
    }
    ingredients = VOCABULARY.knowledge.medications.ingredients
    listed = {name: i.atc for name, i in ingredients.items() if i.atc}
    assert len(listed) >= 40
    for name, codes in listed.items():
        assert all(code in rows[name] for code in codes), (name, codes, rows.get(name))
    every = [code for codes in listed.values() for code in codes]
    atc_keys = [key for key in VOCABULARY.ingredient_codes if key[0] == "atc"]
    assert len(every) == len(set(every)) == len(atc_keys)


# --- the generated table ------------------------------------------------------------------------


def table_rows(path: Path) -> dict[str, str]:
    """RxCUI -> row of a generated table (provenance comments and column names left out)."""
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line]
    rows = [line for line in lines if not line.startswith("#")][1:]
    return {row.split("\t")[0]: row for row in rows}


def build(
    source: Path, out: Path, rules: Path | None = None, value_sets: tuple[Path, ...] = ()
) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, str(SCRIPT), str(source), "--out", str(out)]
    argv += [arg for path in value_sets for arg in ("--value-set", str(path))]
    return subprocess.run(
        argv + (["--rules", str(rules)] if rules else []),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_committed_table_is_what_the_script_makes_of_its_source(tmp_path: Path) -> None:
    """The sample is a trimmed copy of the source files: built with today's rules it gives
    exactly the committed rows for its products, so the table, the script and the source
    format agree (and the rules' ingredient codes still name the same RxNorm ingredients)."""
    result = build(SAMPLE, tmp_path / "sample.tsv")
    assert result.returncode == 0, result.stderr
    sample, committed = table_rows(tmp_path / "sample.tsv"), table_rows(TABLE)
    assert len(sample) > 50
    assert {rxcui: committed.get(rxcui) for rxcui in sample} == sample
    # Products of ingredients the rules do not name (fluoxetine) are left out; a combination
    # lists only the rules' ingredients (drospirenone is none of them).
    assert "310385" not in sample  # fluoxetine 20 MG Oral Capsule
    assert sample["748856"].split("\t")[1:3] == ["BPCK", "ethinyl estradiol"]


def test_the_committed_amphetamine_rows_are_what_the_supplement_gives(tmp_path: Path) -> None:
    """Amphetamine, whose record the extract lacks, comes from the CDC ValueSet by name: its
    own products gain rows, and a combination the extract lists under dextroamphetamine
    (Adderall) gains amphetamine; "dextroamphetamine" alone never counts as amphetamine."""
    result = build(SAMPLE, tmp_path / "with.tsv", value_sets=(SUPPLEMENT,))
    assert result.returncode == 0, result.stderr
    built, committed = table_rows(tmp_path / "with.tsv"), table_rows(TABLE)
    amphetamine = {rxcui: row for rxcui, row in built.items() if "amphetamine" in columns(row)[2]}
    assert len(amphetamine) > 60
    assert {rxcui: committed.get(rxcui) for rxcui in amphetamine} == amphetamine
    assert columns(built["1600698"])[1:3] == ["SBD", "amphetamine"]  # Evekeo
    assert columns(committed["541365"])[1:3] == ["SBD", "amphetamine;dextroamphetamine"]
    word = re.compile(r"\bamphetamine\b", re.IGNORECASE)
    rows = [columns(row) for row in committed.values()]
    dextro_only = [name for _, _, found, name in rows if found == "dextroamphetamine"]
    assert dextro_only and [name for name in dextro_only if word.search(name)] == []
    # Built without it, amphetamine is among the ingredients found by name only.
    build(SAMPLE, tmp_path / "without.tsv")
    header = (tmp_path / "without.tsv").read_text().split("rxcui\t")[0]
    assert "amphetamine," in header.split("Not covered")[1]


def test_the_committed_amikacin_rows_are_what_the_antibiotic_supplement_gives(
    tmp_path: Path,
) -> None:
    """Amikacin, whose record the extract lacks, comes from the VSAC antibiotic ValueSet by
    name. The ValueSet fills only ingredients the source does not cover: the trimmed sample
    also lacks gentamicin and tobramycin, so built from it those are filled too, by name; the
    full extract covers them, and the committed table takes only amikacin from it."""
    build(SAMPLE, tmp_path / "without.tsv", value_sets=(SUPPLEMENT,))
    result = build(SAMPLE, tmp_path / "with.tsv", value_sets=(SUPPLEMENT, ANTIBIOTICS))
    assert result.returncode == 0, result.stderr
    without, built = table_rows(tmp_path / "without.tsv"), table_rows(tmp_path / "with.tsv")
    line = (tmp_path / "without.tsv").read_text().split("Not covered")[1].split("\n")[1]
    uncovered = line.removeprefix("# ").removesuffix(".").split(", ")
    added = {rxcui: columns(row) for rxcui, row in built.items() if without.get(rxcui) != row}
    assert {"1723156", "1723160"} <= set(added)
    for _, _, ingredients, name in added.values():
        for ingredient in ingredients.split(";"):
            assert ingredient in uncovered
            assert re.search(rf"\b{ingredient}\b", name, re.IGNORECASE), (ingredient, name)
    committed = table_rows(TABLE)
    amikacin = {rxcui for rxcui, row in committed.items() if "amikacin" in columns(row)[2]}
    assert amikacin == {"1723156", "1723160"}
    assert {rxcui: committed[rxcui] for rxcui in amikacin} == {r: built[r] for r in amikacin}
    assert "amikacin" not in committed_header().split("Not covered")[1]


def test_a_supplement_without_recorded_provenance_stops_the_build(tmp_path: Path) -> None:
    value_set = json.loads(ANTIBIOTICS.read_text())
    value_set["url"] = "http://example.org/ValueSet/unrecorded"
    unrecorded = tmp_path / "unrecorded.json"
    unrecorded.write_text(json.dumps(value_set))
    result = build(SAMPLE, tmp_path / "out.tsv", value_sets=(unrecorded,))
    assert result.returncode != 0 and "SUPPLEMENTS" in result.stderr
    assert not (tmp_path / "out.tsv").exists()


def committed_header() -> str:
    return TABLE.read_text(encoding="utf-8").split("rxcui\t")[0]


def columns(row: str) -> list[str]:
    """rxcui, tty, ingredients, name."""
    return row.split("\t")


def test_a_term_type_read_from_the_name_agrees_with_every_row_the_extract_typed() -> None:
    """The supplement's rows get their term type from RxNorm's naming; that reading must give
    the extract's own term type for each of its rows."""
    spec = importlib.util.spec_from_file_location("build_rxnorm_products", SCRIPT)
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    rows = [columns(row) for row in table_rows(TABLE).values()]
    typed = [(tty, script.term_type(name)) for _, tty, ingredients, name in rows]
    assert len(typed) > 1800 and {read for _, read in typed} == {"SCD", "SBD", "GPCK", "BPCK"}
    assert [pair for pair in typed if pair[0] != pair[1]] == []


def test_the_committed_table_states_its_provenance() -> None:
    header = [line for line in TABLE.read_text(encoding="utf-8").splitlines()[:16]]
    text = "\n".join(header)
    assert "GENERATED" in text and "scripts/build-rxnorm-products.py" in text
    assert "# Origin: " in text and "# Licence: " in text and "2025-10-06" in text
    assert "# Supplement: github.com/HL7/cdc-opioid-cpg @ 77f4fdc" in text
    assert "# Supplement: github.com/cqframework/ecqm-content-cms-2025 @ d80fd0a" in text


def test_a_rules_code_that_names_another_ingredient_stops_the_build(tmp_path: Path) -> None:
    medications = yaml.safe_load((PROJECT_ROOT / "rules" / "medications.yaml").read_text())
    medications["ingredients"]["furosemide"]["rxcui"] = "5487"  # hydrochlorothiazide's code
    del medications["ingredients"]["hydrochlorothiazide"]
    rules = tmp_path / "medications.yaml"
    rules.write_text(yaml.safe_dump(medications))
    result = build(SAMPLE, tmp_path / "out.tsv", rules)
    assert result.returncode != 0 and not (tmp_path / "out.tsv").exists()
    assert "'furosemide' has rxcui 5487" in result.stderr and "hydrochlorothiazide" in result.stderr


# --- check-rules on the new tables ----------------------------------------------------------------


def test_check_rules_reports_mistakes_in_the_product_and_route_tables(tmp_path: Path) -> None:
    rules = broken_rules(
        tmp_path,
        {
            "rxnorm-products.tsv": [
                ("313988\tSCD\tfurosemide\t", "313988\tSCD\tfurosemid\t"),
                ("310798\tSCD\t", "310798\tSCDF\t"),
                ("748856\tBPCK\tethinyl estradiol\t", "748856\tBPCK\tethinyl estradiol\n"),
            ],
            "medications.yaml": [
                ("systemic_only: [corticosteroid]", "systemic_only: [corticosteroids]"),
                ("words: [otic, auricular,", "words: [otic, oral, auricular,"),
            ],
        },
    )
    status, out, _ = run("check-rules", "--rules-dir", str(rules))
    assert status == 1
    for expected in [
        "unknown ingredient 'furosemid'",
        "term type 'SCDF' is not a product type",
        "3 columns, not 4",
        "medications.yaml: routes.systemic_only: unknown class 'corticosteroids'",
        "word 'oral' also names ear",
    ]:
        assert expected in out, out


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        # bumetanide given furosemide's code
        (("atc: [C03CA02]", "atc: [C03CA01]"), "more than one ingredient: ['C03CA01']"),
        # prednisone's, a digit short
        (("atc: [H02AB07]", "atc: [H02AB7]"), "ingredients.prednisone.atc.0: String should match"),
    ],
)
def test_check_rules_reports_atc_codes_that_are_malformed_or_listed_twice(
    tmp_path: Path, edit: tuple[str, str], expected: str
) -> None:
    rules = broken_rules(tmp_path, {"medications.yaml": [edit]})
    status, out, _ = run("check-rules", "--rules-dir", str(rules))
    assert status == 1 and expected in out, out


def test_check_rules_refuses_products_written_into_medications_yaml(tmp_path: Path) -> None:
    # The table is the one place for products: a hand-written entry would be silently ignored.
    rules = broken_rules(
        tmp_path,
        {
            "medications.yaml": [
                (
                    "\nsynonyms:\n",
                    '\nproducts:\n  "313988": {display: furosemide, ingredients: [furosemide]}\n'
                    "\nsynonyms:\n",
                )
            ]
        },
    )
    status, out, _ = run("check-rules", "--rules-dir", str(rules))
    assert status == 1 and "`products` come from rxnorm-products.tsv only" in out, out
