"""The clinical knowledge in `rules/`, loaded and checked once at start-up.

The YAML files are the reviewable source of truth (codes, thresholds, texts, sources). This
module only gives them types, so that an authoring mistake (an unknown source key, a finding
without a card text, a unit without a factor) stops the service at start-up instead of
silently producing no card at run time.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import fhirpathpy
import yaml
from antlr4 import CommonTokenStream, InputStream
from antlr4.error.ErrorListener import ErrorListener
from fhir.resources.R4B.questionnaire import Questionnaire
from fhirpathpy.models import models as fhirpath_models
from fhirpathpy.parser.generated.FHIRPathLexer import FHIRPathLexer
from fhirpathpy.parser.generated.FHIRPathParser import FHIRPathParser
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from cds.units import unit_factors, unit_key

SYSTEMS = {
    "snomed": "http://snomed.info/sct",
    "icd10cm": "http://hl7.org/fhir/sid/icd-10-cm",
    "loinc": "http://loinc.org",
    "rxnorm": "http://www.nlm.nih.gov/research/umls/rxnorm",
    # WHO ATC, by the URL HL7 Terminology gives it (CodeSystem v3-WC, OID 2.16.840.1.113883.6.73:
    # https://terminology.hl7.org/CodeSystem-v3-WC.html). European EHRs code drugs in ATC.
    "atc": "http://www.whocc.no/atc",
    # The project's own codes, for assessment answers no standard code names
    # (rules/assessment/questionnaire.yaml says which and why).
    "twitch-cds": "https://github.com/twitch-cds/twitch-cds/CodeSystem/assessment",
}
SexSpecific = float | dict[Literal["male", "female"], float]
# The kinds of claim a source can support (rules/sources.yaml explains each).
ClaimKind = Literal[
    "referral",
    "red-flag-features",
    "benign-twitching",
    "cause-of-twitching",
    "drug-effect",
    "lab-cutoff",
    "score-cutoff",
    "calculation",
    "critical-result",
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# What a reviewer weighs a source as (rules/sources.yaml explains each).
SourceKind = Literal[
    "guideline",
    "textbook",
    "review",
    "study",
    "drug-label",
    "lab-catalogue",
    "standard",
    "calculator",
    "consumer",
]
# The kinds a card may name as its `source`: a laboratory catalogue is cited beside the value
# for its reference interval, a standard or calculator for what it defines, never as the card's
# source; a consumer site is never cited.
CARD_SOURCE_KINDS: frozenset[str] = frozenset({"guideline", "textbook", "review", "drug-label"})
NEVER_CITED_KINDS: frozenset[str] = frozenset({"consumer"})


class Source(_Model):
    label: str
    url: str
    kind: SourceKind
    supports: list[ClaimKind]


class Code(_Model):
    system: str = "loinc"
    code: str
    display: str
    # The words a card uses where the code system's display is a coding artefact
    # ("Polyneuropathy, unspecified" reads as "Polyneuropathy" to a clinician).
    label: str | None = None
    status: Literal["V", "V2"] | None = None
    source: str | None = None
    prefix: bool = False
    corrected: bool = False

    @property
    def system_uri(self) -> str:
        return SYSTEMS[self.system]

    @property
    def words(self) -> str:
        return self.label or self.display


class ValueSet(_Model):
    label: str
    codes: list[Code]
    diagnosis_of: str | None = None


COMPARISONS = ("below", "at_or_below", "above", "at_or_above")


class Threshold(_Model):
    """One limit; exactly one comparison is set. Sex-specific limits are a `{male, female}` map."""

    below: SexSpecific | None = None
    at_or_below: SexSpecific | None = None
    above: SexSpecific | None = None
    at_or_above: SexSpecific | None = None
    source: str
    # The same limit as the source states it in another unit ("<= 20 ng/mL (50 nmol/L)"): a
    # result in that unit is compared with it directly, so a value exactly at the cut-off
    # stays on the side the cut-off defines (50 nmol/L converts to 20.03 ng/mL).
    equivalents: dict[str, float] = {}

    @model_validator(mode="after")
    def _one_comparison(self) -> Threshold:
        set_ = [k for k in COMPARISONS if getattr(self, k) is not None]
        if len(set_) != 1:
            raise ValueError(f"a threshold needs exactly one comparison, got {set_}")
        return self

    @cached_property
    def comparison(self) -> str:
        """The one comparison set: 'below', 'at_or_below', 'above' or 'at_or_above'."""
        return next(k for k in COMPARISONS if getattr(self, k) is not None)

    def limit(self, sex: str | None) -> tuple[str, float]:
        """The comparison and the limit for this sex (unknown sex: the less alarming limit)."""
        op = self.comparison
        value = getattr(self, op)
        if isinstance(value, dict):
            if sex in value:
                value = value[sex]
            else:
                value = (
                    min(value.values())
                    if op.startswith(("below", "at_or_below"))
                    else max(value.values())
                )
        return op, float(value)

    @cached_property
    def equivalents_by_key(self) -> dict[str, float]:
        """`equivalents` keyed by `unit_key`."""
        return {unit_key(u): limit for u, limit in self.equivalents.items()}

    def limit_in(self, unit: str | None) -> float | None:
        """The limit as stated in `unit`, if the source states it in that unit."""
        return self.equivalents_by_key.get(unit_key(unit)) if unit and self.equivalents else None

    def holds(self, value: float, sex: str | None) -> bool:
        op, limit = self.limit(sex)
        return {
            "below": value < limit,
            "at_or_below": value <= limit,
            "above": value > limit,
            "at_or_above": value >= limit,
        }[op]


class AlbuminCorrection(_Model):
    factor: float
    reference_albumin: float
    source: str


class ImpossibleValue(_Model):
    """Values no living patient can have (a negative concentration, a zero potassium)."""

    below: float | None = None
    at_or_below: float | None = None

    def holds(self, value: float) -> bool:
        return (self.below is not None and value < self.below) or (
            self.at_or_below is not None and value <= self.at_or_below
        )


class Analyte(_Model):
    label: str
    codes: list[Code]
    unit: str
    units: dict[str, float]
    finding: str | None = None
    low: Threshold | None = None
    critical: Threshold | None = None
    high: Threshold | None = None
    use_reference_range: bool = True
    albumin_correction: AlbuminCorrection | None = None
    correction_window_days: int | None = None
    workup: bool = False
    workup_counts_for: str | None = None
    impossible: ImpossibleValue = ImpossibleValue(below=0)
    # Analytes that outrank this one when measured the same day (ionized over total calcium).
    outranked_by: str | None = None
    flags: dict[str, Threshold] = {}

    @model_validator(mode="after")
    def _canonical_unit_listed(self) -> Analyte:
        if self.units.get(self.unit) != 1.0:
            raise ValueError(f"canonical unit {self.unit!r} must be listed with factor 1.0")
        return self

    @cached_property
    def unit_factors(self) -> dict[str, float]:
        """Unit lookup by spelling-folded key: 'mg/dl' from a lab system means 'mg/dL'."""
        return unit_factors(self.units)


class ScoredObservation(_Model):
    concept: str
    label: str
    codes: list[Code]
    positive: Threshold
    unit: str | None = None
    units: dict[str, float] | None = None


class CodedObservation(_Model):
    concept: str
    label: str
    codes: list[Code]
    positive_values: list[Code]


class Labs(_Model):
    lookback_note: str
    analytes: dict[str, Analyte]
    panels: list[Code] = []
    scored_observations: dict[str, ScoredObservation]
    coded_observations: dict[str, CodedObservation]


class DrugClass(_Model):
    finding: str
    label: str


class Ingredient(_Model):
    rxcui: str | None
    # WHO ATC chemical substances (level 5): only codes of the group that means the drug class
    # as the rules mean it (H02AB prednisolone is systemic; D07AA hydrocortisone is not listed).
    atc: list[Annotated[str, StringConstraints(pattern=r"^[A-Z][0-9]{2}[A-Z]{2}[0-9]{2}$")]] = []
    drug_class: str = Field(alias="class")
    lowers: list[str] = []
    names: list[str] = []
    source: str
    mechanism_source: str | None = None


class RouteKind(_Model):
    """One way a drug is given, whether it reaches the whole body, and the codes and words
    (in a route, a dose form or a product name) that name it."""

    systemic: bool
    codes: list[Code] = []
    words: list[str] = []


class Routes(_Model):
    systemic_only: list[str]
    kinds: dict[str, RouteKind]

    @model_validator(mode="after")
    def _one_meaning_per_word(self) -> Routes:
        meaning: dict[str, bool] = {}
        for kind in self.kinds.values():
            for word in kind.words:
                if meaning.setdefault(word.lower(), kind.systemic) != kind.systemic:
                    raise ValueError(f"route word {word!r} is listed as systemic and as not")
        return self


ProductType = Literal["SCD", "SBD", "GPCK", "BPCK"]
PRODUCTS_FILE = "rxnorm-products.tsv"
PRODUCT_COLUMNS = ("rxcui", "tty", "ingredients", "name")


class Product(_Model):
    """An RxNorm product (rules/rxnorm-products.tsv, generated): its name and ingredients."""

    display: str
    ingredients: list[str]
    tty: ProductType


class Medications(_Model):
    classes: dict[str, DrugClass]
    ingredients: dict[str, Ingredient]
    products: dict[str, Product] = {}
    synonyms: dict[str, list[str]] = {}
    routes: Routes | None = None

    @model_validator(mode="after")
    def _one_ingredient_per_atc_code(self) -> Medications:
        codes = [code for ingredient in self.ingredients.values() for code in ingredient.atc]
        twice = sorted({code for code in codes if codes.count(code) > 1})
        if twice:
            raise ValueError(f"ATC codes listed under more than one ingredient: {twice}")
        return self


class LabFlag(_Model):
    label: str
    direction: Literal["low", "high", "normal"] | None = None
    critical: bool = False


class RecordReading(_Model):
    """rules/record.yaml: how codes, absent findings and lab flags arrive in real records."""

    system_aliases: dict[str, list[str]]
    icd10_who_systems: list[str]
    icd10_who_same_as_icd10cm: list[str]
    absent_values: list[Code]
    absent_words: list[str]
    negative_interpretations: list[str]
    interpretation_systems: list[str]
    lab_flags: dict[str, LabFlag]
    reference_range_sex: dict[Literal["male", "female"], list[str]]

    @model_validator(mode="after")
    def _known_systems(self) -> RecordReading:
        unknown = set(self.system_aliases) - set(SYSTEMS)
        if unknown:
            raise ValueError(f"aliases for unknown code systems {sorted(unknown)}")
        return self


class OrderingText(_Model):
    """A drug card's wording when the drug is being ordered now (order-select, order-sign)."""

    summary: str
    summary_with_lab: str | None = None
    consider: str
    consider_with_lab: str | None = None


class CardText(_Model):
    title: str
    claims: list[ClaimKind]
    summary: str
    summary_critical: str | None = None
    summary_with_lab: str | None = None
    why: str
    consider: str
    consider_critical: str | None = None
    consider_with_lab: str | None = None
    source: str
    links: list[str] = []
    suggest: Literal["referral", "missing-labs", "monitoring-labs"] | None = None
    labs: list[str] = []
    suppressed_by: Literal["serious"] | None = None
    red_flag: bool = False
    mentions: list[str] = []
    ordering: OrderingText | None = None


class OverrideReason(_Model):
    code: str
    display: str


class Referral(_Model):
    label: str
    description: str
    contact_label: str
    contact_description: str
    code: dict[str, str]
    specialty: dict[str, str]
    category_text: str
    reason: str


class RedFlagTexts(_Model):
    diagnosed_summary: str
    diagnosed_consider: str
    suspected_summary: str
    suspected_consider: str
    diagnosed_critical_summary: str
    known_summary: str
    known_critical_summary: str
    known_consider: str
    critical_consider: str


class DuplicateTexts(_Model):
    summary: str
    consider: str


class LabStatusTexts(_Model):
    missing: str
    unusable: str
    normal: str
    on_record: str
    measured: str


class LabOrder(_Model):
    label: str
    description: str
    category: dict[str, str]
    reason: str


class Trigger(_Model):
    """A trigger the lifestyle-review card asks about, and the Questionnaire group (topic) that
    asks the patient about it; none when the assessment does not ask."""

    words: str
    asked_by: str | None = None


class AssessmentTexts(_Model):
    """What the cards say about the patient's assessment (rules/findings.yaml `assessment`)."""

    link_label: str
    link_on: list[str]
    lifestyle_finding: str
    triggers: list[Trigger]
    lifestyle_summary: str
    lifestyle_all_answered: str
    answered_line: str
    # A "yes" no rule reads (strenuous exercise, a new medicine, cramps): named on the
    # lifestyle card, so that the answer is seen without a card of its own.
    reported_line: str
    patient_reported: str


class Findings(_Model):
    topic_system: str
    override_reason_system: str
    override_reasons: list[OverrideReason]
    referral: Referral
    red_flag_texts: RedFlagTexts
    duplicate: DuplicateTexts
    relationships: dict[str, str]
    limit_source: str
    lab_status: LabStatusTexts
    lab_order: LabOrder
    assessment: AssessmentTexts
    findings: dict[str, CardText]


Tag = Literal["diagnosed", "suspected", "known", "duplicate"]


class RuleOutcome(_Model):
    finding: str
    indicator: Literal["info", "warning", "critical"]
    cite: list[str]
    tags: list[Tag] = []
    diagnosis: str | None = None


class Rule(_Model):
    all: list[dict[str, Any]]
    then: RuleOutcome


# fhirpathpy's R4 model: `answer.value` finds `valueCoding` only with the model's choice types.
FHIRPATH_R4 = fhirpath_models["r4"]
CALCULATED_EXPRESSION = (
    "http://hl7.org/fhir/uv/sdc/StructureDefinition/sdc-questionnaire-calculatedExpression"
)


def _items(
    items: list[dict[str, Any]], topic: str | None = None
) -> list[tuple[str, dict[str, Any]]]:
    """Every item of a Questionnaire with its topic: the linkId of its top-level group."""
    found: list[tuple[str, dict[str, Any]]] = []
    for item in items:
        here = topic or item["linkId"]
        found.append((here, item))
        found += _items(item.get("item", []), here)
    return found


class _RaisingListener(ErrorListener):  # type: ignore[misc]  # antlr4 has no types
    def syntaxError(self, *args: Any) -> None:
        raise ValueError(f"syntax error at line {args[2]}:{args[3]}: {args[4]}")


def _check_fhirpath(expression: str) -> None:
    """Parse with fhirpathpy's grammar, failing on a syntax error (fhirpathpy's own parser
    recovers silently), then evaluate once on an empty response (unknown functions, arity)."""
    parser = FHIRPathParser(CommonTokenStream(FHIRPathLexer(InputStream(expression))))
    parser.removeErrorListeners()
    parser.addErrorListener(_RaisingListener())
    parser.expression()
    empty = {"resourceType": "QuestionnaireResponse", "status": "in-progress"}
    fhirpathpy.evaluate(empty, expression, {"resource": empty}, FHIRPATH_R4)


class Assessment(_Model):
    """rules/assessment/: the patient's Questionnaire, valid FHIR R4, its scores compiled."""

    questionnaire: dict[str, Any]

    @model_validator(mode="after")
    def _valid_fhir(self) -> Assessment:
        """Invalid FHIR or an expression that does not parse stops the service at start-up."""
        try:
            Questionnaire.model_validate(self.questionnaire)
        except ValidationError as error:
            raise ValueError(f"the assessment Questionnaire is not valid FHIR: {error}") from None
        for link_id, expression in self.calculated.items():
            try:
                _check_fhirpath(expression)
            except Exception as error:  # fhirpathpy raises bare Exceptions
                raise ValueError(f"item {link_id}: FHIRPath does not parse: {error}") from None
        return self

    @cached_property
    def items(self) -> list[tuple[str, dict[str, Any]]]:
        return _items(self.questionnaire["item"])

    @cached_property
    def calculated(self) -> dict[str, str]:
        """The FHIRPath `calculatedExpression` of each scored item, by linkId."""
        return {
            item["linkId"]: ext["valueExpression"]["expression"]
            for _, item in self.items
            for ext in item.get("extension", [])
            if ext["url"] == CALCULATED_EXPRESSION
        }

    @cached_property
    def displays(self) -> dict[tuple[str, str], str]:
        """(system URI, code) of every coded question -> its display, as cards name it."""
        return {
            (code["system"], code["code"]): code.get("display") or item["text"]
            for _, item in self.items
            if item["type"] != "group"
            for code in item.get("code", [])
        }

    @cached_property
    def topics(self) -> dict[tuple[str, str], str]:
        """(system URI, code) of every coded question -> its topic."""
        return {
            (code["system"], code["code"]): topic
            for topic, item in self.items
            if item["type"] != "group"
            for code in item.get("code", [])
        }


class Knowledge(_Model):
    """Everything in `rules/`, cross-checked."""

    sources: dict[str, Source]
    valuesets: dict[str, ValueSet]
    labs: Labs
    medications: Medications
    record: RecordReading
    findings: Findings
    rulesets: dict[str, dict[str, Rule]]
    assessment: Assessment

    @model_validator(mode="after")
    def _references_resolve(self) -> Knowledge:
        """Every key one file uses must exist in the file that defines it."""
        problems = self._claims_have_sources()
        for code, text in self.findings.findings.items():
            problems += [
                f"finding {code}: unknown analyte {a}"
                for a in text.labs
                if a not in self.labs.analytes
            ]
        for name, analyte in self.labs.analytes.items():
            if analyte.finding and analyte.finding not in self.findings.findings:
                problems.append(f"analyte {name}: no card text for {analyte.finding}")
        for name, ingredient in self.medications.ingredients.items():
            if ingredient.drug_class not in self.medications.classes:
                problems.append(f"ingredient {name}: unknown class {ingredient.drug_class}")
            problems += [
                f"ingredient {name}: unknown analyte {a}"
                for a in ingredient.lowers
                if a not in self.labs.analytes
            ]
        for name, ingredients in self.medications.synonyms.items():
            problems += [
                f"synonym {name}: unknown ingredient {i}"
                for i in ingredients
                if i not in self.medications.ingredients
            ]
        for name, analyte in self.labs.analytes.items():
            if analyte.outranked_by and analyte.outranked_by not in self.labs.analytes:
                problems.append(f"analyte {name}: unknown outranking analyte")
        for pid, product in self.medications.products.items():
            problems += [
                f"product {pid}: unknown ingredient {i}"
                for i in product.ingredients
                if i not in self.medications.ingredients
            ]
        if self.medications.routes:
            problems += [
                f"routes: unknown class {c}"
                for c in self.medications.routes.systemic_only
                if c not in self.medications.classes
            ]
        for cls in self.medications.classes.values():
            if cls.finding not in self.findings.findings:
                problems.append(f"class {cls.label}: no card text for {cls.finding}")
        for ruleset in self.rulesets.values():
            for rule_name, rule in ruleset.items():
                finding = rule.then.finding
                if not finding.startswith("$") and finding not in self.findings.findings:
                    problems.append(f"rule {rule_name}: no card text for {finding}")
        problems += [
            f"value set {name}: no card text for {vs.diagnosis_of}"
            for name, vs in self.valuesets.items()
            if vs.diagnosis_of and vs.diagnosis_of not in self.findings.findings
        ]
        observation_concepts = [o.concept for o in self.labs.scored_observations.values()] + [
            o.concept for o in self.labs.coded_observations.values()
        ]
        problems += [
            f"observation concept {c} has no value set"
            for c in observation_concepts
            if c not in self.valuesets
        ]
        problems += self._assessment_problems()
        if problems:
            raise ValueError("rules/ is inconsistent:\n  " + "\n  ".join(problems))
        return self

    def _assessment_problems(self) -> list[str]:
        """The project's own codes the rules read are asked by the Questionnaire, and every
        trigger and card the assessment texts name exists."""
        labs = self.labs
        read = [c for vs in self.valuesets.values() for c in vs.codes] + [
            c
            for group in (labs.scored_observations, labs.coded_observations)
            for o in group.values()
            for c in o.codes
        ]
        asked = self.assessment.topics
        problems = [
            f"code {c.code}: the rules read it but the Questionnaire does not ask it"
            for c in read
            if c.system == "twitch-cds" and (c.system_uri, c.code) not in asked
        ]
        texts = self.findings.assessment
        topics = set(asked.values())
        problems += [
            f"assessment trigger {t.words}: no Questionnaire group {t.asked_by}"
            for t in texts.triggers
            if t.asked_by and t.asked_by not in topics
        ]
        problems += [
            f"assessment: no card text for {code}"
            for code in [*texts.link_on, texts.lifestyle_finding]
            if code not in self.findings.findings
        ]
        return problems

    def _unsupported(self, where: str, key: str, kinds: list[ClaimKind]) -> list[str]:
        """Problems when source `key` is unknown or supports none of `kinds`."""
        source = self.sources.get(key)
        if source is None:
            return [f"{where}: unknown source {key}"]
        if not set(kinds) & set(source.supports):
            return [f"{where}: source {key} supports {source.supports}, not {kinds}"]
        return []

    def _claims_have_sources(self) -> list[str]:
        """Every cited source supports the kind of claim it is cited for: a card's source its
        first claim, its links one of its claims, a cut-off `lab-cutoff` (or `score-cutoff`),
        a drug mechanism `drug-effect`, the albumin formula `calculation`."""
        problems: list[str] = []
        texts = self.findings.findings
        for code, text in texts.items():
            problems += self._unsupported(f"finding {code}", text.source, text.claims[:1])
            for key in text.links:
                problems += self._unsupported(f"finding {code} link", key, text.claims)
        for name, analyte in self.labs.analytes.items():
            thresholds = {
                "low": analyte.low,
                "critical": analyte.critical,
                "high": analyte.high,
                **analyte.flags,
            }
            for which, threshold in thresholds.items():
                if threshold is not None:
                    problems += self._unsupported(
                        f"analyte {name} {which}", threshold.source, ["lab-cutoff"]
                    )
            if analyte.albumin_correction:
                problems += self._unsupported(
                    f"analyte {name} albumin correction",
                    analyte.albumin_correction.source,
                    ["calculation"],
                )
        for name, scored in self.labs.scored_observations.items():
            problems += self._unsupported(
                f"observation {name}", scored.positive.source, ["score-cutoff"]
            )
        for name, ingredient in self.medications.ingredients.items():
            if ingredient.mechanism_source:
                problems += self._unsupported(
                    f"ingredient {name} mechanism", ingredient.mechanism_source, ["drug-effect"]
                )
        return problems + self._card_source_kinds()

    def card_sources(self) -> list[tuple[str, str]]:
        """(where, source key) for every source a card can name as its `source`: the card
        text's, and the drug reference a drug card cites for the drug it names."""
        cited = [(f"finding {code}", text.source) for code, text in self.findings.findings.items()]
        cited += [
            (f"ingredient {name} mechanism", ingredient.mechanism_source)
            for name, ingredient in self.medications.ingredients.items()
            if ingredient.mechanism_source
        ]
        return cited

    def _card_source_kinds(self) -> list[str]:
        """A card's source is a guideline, textbook chapter, peer-reviewed review or drug label;
        no card cites a consumer site, not even as a link."""
        problems = [
            f"{where}: source {key} is a {self.sources[key].kind}, not a card source "
            f"({', '.join(sorted(CARD_SOURCE_KINDS))})"
            for where, key in self.card_sources()
            if key in self.sources and self.sources[key].kind not in CARD_SOURCE_KINDS
        ]
        problems += [
            f"finding {code} link: source {key} is a {self.sources[key].kind} site"
            for code, text in self.findings.findings.items()
            for key in text.links
            if key in self.sources and self.sources[key].kind in NEVER_CITED_KINDS
        ]
        return problems


def _read(path: Path) -> Any:
    with path.open(encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def product_rows(path: Path) -> list[tuple[int, list[str]]]:
    """The rows of the generated product table with their line numbers: `#` lines are its
    provenance, the first other line names the columns."""
    with path.open(encoding="utf-8") as handle:
        lines = (
            (number, line.rstrip("\n"))
            for number, line in enumerate(handle, 1)
            if line.strip() and not line.startswith("#")
        )
        _, columns = next(lines, (0, ""))
        if tuple(columns.split("\t")) != PRODUCT_COLUMNS:
            raise ValueError(f"{path.name}: the columns must be {', '.join(PRODUCT_COLUMNS)}")
        return [(number, line.split("\t")) for number, line in lines]


def read_products(path: Path) -> dict[str, dict[str, Any]]:
    """RxCUI -> product, from rules/rxnorm-products.tsv."""
    products: dict[str, dict[str, Any]] = {}
    for number, fields in product_rows(path):
        if len(fields) != len(PRODUCT_COLUMNS):
            raise ValueError(f"{path.name} line {number}: {len(fields)} columns")
        rxcui, tty, ingredients, name = fields
        products[rxcui] = {"display": name, "ingredients": ingredients.split(";"), "tty": tty}
    return products


def _medications(rules_dir: Path) -> dict[str, Any]:
    """medications.yaml with its products from the generated table. Products written into the
    YAML would be silently outranked by the table: they are refused instead."""
    medications = _read(rules_dir / "medications.yaml")
    if isinstance(medications, dict) and "products" in medications:
        raise ValueError(
            f"medications.yaml: `products` come from {PRODUCTS_FILE} only (generated by "
            "scripts/build-rxnorm-products.py): add the ingredient's rxcui and rebuild it"
        )
    return {**medications, "products": read_products(rules_dir / PRODUCTS_FILE)}


def load_knowledge(rules_dir: Path) -> Knowledge:
    """Read and cross-check every file of `rules/`."""
    return Knowledge(
        sources=_read(rules_dir / "sources.yaml"),
        valuesets=_read(rules_dir / "valuesets.yaml"),
        labs=_read(rules_dir / "labs.yaml"),
        medications=_medications(rules_dir),
        record=_read(rules_dir / "record.yaml"),
        findings=_read(rules_dir / "findings.yaml"),
        rulesets=_read(rules_dir / "ruleset.yaml")["rulesets"],
        assessment={"questionnaire": _read(rules_dir / "assessment" / "questionnaire.yaml")},
    )
