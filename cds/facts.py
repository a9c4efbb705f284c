"""From a patient's FHIR resources to the few aggregated facts the rules reason over.

Selection happens on plain dicts first (resource type, status, code membership, recency),
because validating every resource of a large record with fhir.resources costs more than
everything else together. Only the resources that can become a fact are validated with the
R4B models, one at a time, so one invalid resource is skipped (and counted) while the rest
still count. Facts are aggregated - one per analyte, concept or ingredient - because each
asserted fact costs the rules engine time.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any, Literal

from fhir.resources.R4B.condition import Condition
from fhir.resources.R4B.familymemberhistory import FamilyMemberHistory
from fhir.resources.R4B.medicationrequest import MedicationRequest
from fhir.resources.R4B.medicationstatement import MedicationStatement
from fhir.resources.R4B.observation import Observation
from pydantic import ValidationError

from cds.knowledge import SYSTEMS, Analyte, Knowledge, Threshold
from cds.units import quantity_unit, to_canonical

Resource = dict[str, Any]
EvidenceKind = Literal["complaint", "problem", "family", "lab", "missing", "medication", "order"]

FINAL_OBSERVATION = {"final", "amended", "corrected"}
ACTIVE_CONDITION = {"active", "recurrence", "relapse"}
EXCLUDED_VERIFICATION = {"refuted", "entered-in-error"}
ACTIVE_REQUEST = {"active"}
ACTIVE_STATEMENT = {"active", "intended"}
MODELS = {
    "Condition": Condition,
    "Observation": Observation,
    "MedicationRequest": MedicationRequest,
    "MedicationStatement": MedicationStatement,
    "FamilyMemberHistory": FamilyMemberHistory,
}
# Where a neurology referral or encounter is recorded, and which statuses do not count.
CARE_SOURCES = (
    ("ServiceRequest", ("performerType", "code"), {"revoked", "entered-in-error", "draft"}),
    ("Encounter", ("serviceType", "type"), {"cancelled", "entered-in-error"}),
)
DEFAULT = " (default limit)"
ProblemCandidate = tuple[Resource, "dict[str, Evidence]"]
_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?")


@dataclass(frozen=True)
class Evidence:
    """What a card shows as the reason for its finding."""

    kind: EvidenceKind
    label: str
    when: date | None = None
    value: float | None = None
    unit: str | None = None
    reported: str | None = None
    status: str | None = None
    judged: str | None = None
    code: str | None = None
    lowers: tuple[str, ...] = ()
    analyte: str | None = None


@dataclass
class Facts:
    """The input of the rules engine plus what the cards step needs to explain it."""

    facts: list[dict[str, Any]] = field(default_factory=list)
    evidence: dict[str, Evidence] = field(default_factory=dict)
    missing_labs: set[str] = field(default_factory=set)
    invalid_resources: int = 0
    unjudged_results: int = 0

    def cite(self, evidence: Evidence) -> str:
        """Register evidence once; facts refer to it by this reference."""
        ref = f"e{len(self.evidence) + 1}"
        self.evidence[ref] = evidence
        return ref

    def add(self, fact: dict[str, Any], evidence: Evidence | str) -> None:
        ref = evidence if isinstance(evidence, str) else self.cite(evidence)
        self.facts.append({**fact, "evidence": ref})

    def kinds(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for fact in self.facts:
            counts[fact["kind"]] = counts.get(fact["kind"], 0) + 1
        return counts


def parse_date(value: Any) -> date | None:
    """The start of a FHIR date/dateTime/instant of any precision ('2026', '2026-03', ...).

    The start of the period is used so that an imprecise date is never taken as more recent
    than it may be: stale data must not pass for current.
    """
    if not isinstance(value, str):
        return None
    match = _DATE.match(value)
    if not match:
        return None
    year, month, day = int(match[1]), int(match[2] or 1), int(match[3] or 1)
    try:
        return date(year, month, day)
    except ValueError:
        return None


def _codings(concept: Any) -> list[dict[str, Any]]:
    if not isinstance(concept, dict) or not isinstance(concept.get("coding"), list):
        return []
    return [c for c in concept["coding"] if isinstance(c, dict)]


def _status_code(concept: Any) -> str | None:
    codes = [c.get("code") for c in _codings(concept)]
    return next((c for c in codes if isinstance(c, str)), None)


def _code_label(coding: dict[str, Any]) -> str:
    system = {uri: name for name, uri in SYSTEMS.items()}.get(coding.get("system", ""), "code")
    names = {"snomed": "SNOMED CT", "icd10cm": "ICD-10-CM", "loinc": "LOINC", "rxnorm": "RxNorm"}
    return f"{names.get(system, system)} {coding.get('code')}"


@dataclass(frozen=True)
class Match:
    """A coding from the record and the display rules/ gives its code (never free text)."""

    coding: dict[str, Any]
    display: str


class Vocabulary:
    """Lookup tables built once from rules/: which code means which concept, analyte or drug."""

    def __init__(self, knowledge: Knowledge) -> None:
        self.knowledge = knowledge
        self.concepts: dict[tuple[str, str], dict[str, str]] = {}
        self.prefixes: list[tuple[str, str, str, str]] = []
        for name, valueset in knowledge.valuesets.items():
            for code in valueset.codes:
                if code.prefix:
                    self.prefixes.append((code.system_uri, code.code, name, code.display))
                else:
                    self.concepts.setdefault((code.system_uri, code.code), {})[name] = \
                        code.display
        labs = knowledge.labs
        self.analytes = {c.code: (name, c) for name, a in labs.analytes.items() for c in a.codes}
        self.scored = {c.code: name for name, o in labs.scored_observations.items()
                       for c in o.codes}
        self.coded = {c.code: name for name, o in labs.coded_observations.items()
                      for c in o.codes}
        meds = knowledge.medications
        self.by_rxcui = {i.rxcui: name for name, i in meds.ingredients.items() if i.rxcui}
        self.products = {pid: p.ingredients for pid, p in meds.products.items()}
        self.name_patterns = [
            (re.compile(rf"\b{re.escape(n)}\b", re.IGNORECASE), name)
            for name, i in meds.ingredients.items() for n in (i.names or [name])
        ]

    def concepts_of(self, codings: Iterable[dict[str, Any]]) -> dict[str, Match]:
        """Concepts the codings belong to, each with the coding that matched."""
        found: dict[str, Match] = {}
        for coding in codings:
            system, code = coding.get("system"), coding.get("code")
            if not isinstance(system, str) or not isinstance(code, str):
                continue
            for name, display in self.concepts.get((system, code), {}).items():
                found.setdefault(name, Match(coding, display))
            for p_system, prefix, name, display in self.prefixes:
                if system == p_system and code.startswith(prefix):
                    found.setdefault(name, Match(coding, display))
        return found

    def ingredients_of(self, concept: Any) -> set[str]:
        """Ingredients of a medication CodeableConcept: RxNorm IN, then SCD/SBD, then names."""
        found: set[str] = set()
        texts: list[str] = []
        for coding in _codings(concept):
            code = coding.get("code")
            if coding.get("system") == SYSTEMS["rxnorm"] and isinstance(code, str):
                if code in self.by_rxcui:
                    found.add(self.by_rxcui[code])
                found.update(self.products.get(code, ()))
            if isinstance(coding.get("display"), str):
                texts.append(coding["display"])
        if isinstance(concept, dict) and isinstance(concept.get("text"), str):
            texts.append(concept["text"])
        if not found:
            for pattern, name in self.name_patterns:
                if any(pattern.search(text) for text in texts):
                    found.add(name)
        return found


def _text(value: Any) -> str | None:
    """`value` if it is a string, else None: JSON from the EHR may hold a list or object where
    FHIR has a code, status or id, and those must not reach a set or dict look-up."""
    return value if isinstance(value, str) else None


def _valid(resource: Resource, facts: Facts) -> bool:
    """Validate one selected resource with its R4B model; an invalid one is counted, skipped."""
    model = MODELS[resource["resourceType"]]
    try:
        model.model_validate(resource)
    except (ValidationError, ValueError, TypeError, RecursionError):
        facts.invalid_resources += 1
        return False
    return True


def _observation_date(obs: Resource) -> date | None:
    period = obs.get("effectivePeriod") if isinstance(obs.get("effectivePeriod"), dict) else {}
    return (parse_date(obs.get("effectiveDateTime")) or parse_date(obs.get("effectiveInstant"))
            or parse_date(period.get("start")) or parse_date(obs.get("issued")))


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # a JSON integer of hundreds of digits
        return None
    return number if math.isfinite(number) else None


def _fmt(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


@dataclass(frozen=True)
class LabResult:
    analyte: str
    when: date
    value: float
    reported: str
    ref_low: float | None
    ref_high: float | None
    code: str
    corrected: bool


def _reference_limits(obs: Resource, analyte: Analyte) -> tuple[float | None, float | None]:
    """The result's own reference range, converted; None where absent or not convertible."""
    ranges = obs.get("referenceRange")
    if not isinstance(ranges, list) or not ranges or not isinstance(ranges[0], dict):
        return None, None
    limits: list[float | None] = []
    for end in ("low", "high"):
        quantity = ranges[0].get(end)
        number = _number(quantity.get("value")) if isinstance(quantity, dict) else None
        limits.append(None if number is None else
                      to_canonical(number, quantity_unit(quantity), analyte.unit_factors))
    return limits[0], limits[1]


def _lab_result(obs: Resource, name: str, analyte: Analyte, code: str,
                corrected: bool, when: date) -> LabResult | None:
    quantity = obs.get("valueQuantity")
    if not isinstance(quantity, dict):
        return None
    number = _number(quantity.get("value"))
    unit = quantity_unit(quantity)
    value = None if number is None else to_canonical(number, unit, analyte.unit_factors)
    if value is None:
        return None
    low, high = _reference_limits(obs, analyte)
    return LabResult(name, when, value, f"{_fmt(number)} {unit}", low, high, code, corrected)


class FactBuilder:
    """Builds the facts of one request. Stateless apart from the shared `Vocabulary`."""

    def __init__(self, vocabulary: Vocabulary, lookback_days: int) -> None:
        self.vocabulary = vocabulary
        self.knowledge = vocabulary.knowledge
        self.lookback_days = lookback_days

    def build(self, resources: dict[str, list[Resource]], today: date,
              draft_orders: list[Resource] | None = None) -> Facts:
        facts = Facts()
        since = today - timedelta(days=self.lookback_days)
        sex = self._sex(resources.get("Patient", []))
        complaint = self._problems(resources, since, sex, facts)
        self._labs(resources.get("Observation", []), since, sex, facts)
        self._medications(resources, facts)
        self._family(resources.get("FamilyMemberHistory", []), facts)
        self._neurology_care(resources, facts)
        if draft_orders:
            self._drafts(draft_orders, facts)
        if complaint is not None:
            # The gate goes last: every rule joins on it, so rules see the whole record.
            facts.add({"kind": "complaint"}, complaint)
        return facts

    @staticmethod
    def _sex(patients: list[Resource]) -> str | None:
        gender = patients[0].get("gender") if patients else None
        return gender if gender in ("male", "female") else None

    # -- conditions and coded observations -> problem facts ------------------------------
    def _problems(self, resources: dict[str, list[Resource]], since: date, sex: str | None,
                  facts: Facts) -> Evidence | None:
        """Adds one `problem` fact per concept; returns the twitch complaint's evidence."""
        seen: dict[str, Evidence] = {}
        for resource, found in self._problem_candidates(resources, since, sex):
            if not _valid(resource, facts):
                continue
            for concept, evidence in found.items():
                previous = seen.get(concept)
                if previous is None or (evidence.when or date.min) > (previous.when or date.min):
                    seen[concept] = evidence
        for concept, evidence in seen.items():
            fact = {"kind": "problem", "concept": concept}
            diagnosis_of = self.knowledge.valuesets[concept].diagnosis_of
            if diagnosis_of:
                fact["diagnosis_of"] = diagnosis_of
            facts.add(fact, evidence)
        complaint = seen.get("twitch")
        return None if complaint is None else Evidence(
            "complaint", self.knowledge.valuesets["twitch"].label, complaint.when,
            status=complaint.status,
            code=complaint.code)

    def _problem_candidates(self, resources: dict[str, list[Resource]], since: date,
                            sex: str | None) -> Iterator[ProblemCandidate]:
        """Resources that record a concept, each with the evidence it gives per concept."""
        for condition in resources.get("Condition", []):
            if _status_code(condition.get("verificationStatus")) in EXCLUDED_VERIFICATION:
                continue
            clinical = _status_code(condition.get("clinicalStatus"))
            if clinical not in ACTIVE_CONDITION and not (
                    clinical is None and "abatementDateTime" not in condition):
                continue
            when = parse_date(condition.get("onsetDateTime")) or parse_date(
                condition.get("recordedDate"))
            found = self._coded(_codings(condition.get("code")), when, clinical or "active")
            if found:
                yield condition, found
        latest: dict[str, tuple[date, Resource]] = {}
        for obs in resources.get("Observation", []):
            if _text(obs.get("status")) not in FINAL_OBSERVATION:
                continue
            when = _observation_date(obs)
            if when is None or when < since:
                continue
            found = self._coded(_codings(obs.get("code")) + _codings(
                obs.get("valueCodeableConcept")), when, obs["status"])
            if found:
                yield obs, found
            spec = self._recorded_answer_spec(obs)
            if spec is not None and (spec not in latest or when >= latest[spec][0]):
                latest[spec] = (when, obs)
        # A smoking status, AUDIT-C or sleep duration: the latest answer alone decides, so a
        # newer "former smoker" or a newer normal score outweighs an older positive one.
        for spec, (when, obs) in latest.items():
            found = self._answer(spec, obs, when, sex)
            if found:
                yield obs, found

    def _coded(self, codings: list[dict[str, Any]], when: date | None,
               status: str) -> dict[str, Evidence]:
        return {concept: Evidence("problem", match.display, when, status=status,
                                  code=_code_label(match.coding))
                for concept, match in self.vocabulary.concepts_of(codings).items()}

    def _recorded_answer_spec(self, obs: Resource) -> str | None:
        """The coded or scored observation of rules/labs.yaml this Observation is, if any."""
        for coding in _codings(obs.get("code")):
            code = _text(coding.get("code"))
            if code in self.vocabulary.coded:
                return self.vocabulary.coded[code]
            if code in self.vocabulary.scored:
                return self.vocabulary.scored[code]
        return None

    def _answer(self, spec_name: str, obs: Resource, when: date,
                sex: str | None) -> dict[str, Evidence]:
        """The concept a positive answer or score records, with the answer as evidence."""
        labs = self.knowledge.labs
        if spec_name in labs.coded_observations:
            coded = labs.coded_observations[spec_name]
            answers = {_text(c.get("code")) for c in _codings(obs.get("valueCodeableConcept"))}
            positive = [v for v in coded.positive_values if v.code in answers]
            if not positive:
                return {}
            return {coded.concept: Evidence(
                "problem", f"{coded.label}: {positive[0].display}", when, status=obs["status"],
                code=f"LOINC {coded.codes[0].code}")}
        scored = labs.scored_observations[spec_name]
        value = _score(obs, scored.units)
        if value is None or not scored.positive.holds(value, sex):
            return {}
        return {scored.concept: Evidence(
            "problem", scored.label, when, value=value, unit=scored.unit or "points",
            status=obs["status"], judged="positive: " + _threshold_words(
                scored.positive, sex, scored.unit or "points"),
            code=f"LOINC {scored.codes[0].code}")}

    # -- laboratory results -> lab / lab-missing facts ----------------------------------
    def _labs(self, observations: list[Resource], since: date, sex: str | None,
              facts: Facts) -> None:
        candidates: dict[str, list[tuple[date, Resource, str, bool]]] = {}
        for obs in observations:
            if _text(obs.get("status")) not in FINAL_OBSERVATION:
                continue
            when = _observation_date(obs)
            if when is None or when < since:
                continue
            for coding in _codings(obs.get("code")):
                if coding.get("system") == SYSTEMS["loinc"] and _text(coding.get("code")) in \
                        self.vocabulary.analytes:
                    name, code = self.vocabulary.analytes[coding["code"]]
                    candidates.setdefault(name, []).append((when, obs, code.code,
                                                            code.corrected))
                    break
        latest = {name: self._latest(name, found, facts) for name, found in candidates.items()}
        results = {name: r for name, r in latest.items() if r is not None}
        for name, result in results.items():
            analyte = self.knowledge.labs.analytes[name]
            if analyte.finding or analyte.high:
                self._add_lab(result, analyte, results.get("albumin"), sex, facts)
        self._missing(set(results), set(candidates) - set(results), facts)

    def _latest(self, name: str, found: list[tuple[date, Resource, str, bool]],
                facts: Facts) -> LabResult | None:
        """The most recent valid, convertible result: it alone decides."""
        analyte = self.knowledge.labs.analytes[name]
        for when, obs, code, corrected in sorted(found, key=lambda c: c[0], reverse=True):
            if not _valid(obs, facts):
                continue
            result = _lab_result(obs, name, analyte, code, corrected, when)
            if result is not None:
                return result
            facts.unjudged_results += 1
        return None

    def _add_lab(self, result: LabResult, analyte: Analyte, albumin: LabResult | None,
                 sex: str | None, facts: Facts) -> None:
        value, notes = result.value, []
        correction = analyte.albumin_correction
        window = self.knowledge.labs.analytes["albumin"].correction_window_days or 0
        if correction and not result.corrected and albumin is not None and \
                abs((albumin.when - result.when).days) <= window:
            value = result.value + correction.factor * (
                correction.reference_albumin - albumin.value)
            notes.append(f"corrected for albumin {_fmt(albumin.value)} g/dL "
                         f"({albumin.when.isoformat()}) to {_fmt(value)} {analyte.unit}")
        low, critical, high, basis = judge(analyte, value, result, sex)
        if low or critical or high:
            notes.append(basis)
        reported = result.reported
        canonical = f"{_fmt(result.value)} {analyte.unit}"
        evidence = Evidence(
            "lab", analyte.label, result.when, value=value, unit=analyte.unit,
            reported=reported if reported.lower() != canonical.lower() else None,
            judged="; ".join(notes) or None, code=f"LOINC {result.code}", status="final",
            analyte=result.analyte)
        fact = {"kind": "lab", "analyte": result.analyte, "low": low, "critical": critical,
                "high": high}
        if analyte.finding:
            fact["finding"] = analyte.finding
        facts.add(fact, evidence)

    def _missing(self, present: set[str], unjudged: set[str], facts: Facts) -> None:
        """Work-up analytes with no usable result; `unjudged` ones had results that could not
        be judged (no or an unknown unit), which the card says rather than "no result"."""
        analytes = self.knowledge.labs.analytes
        covered = present | {analytes[p].workup_counts_for for p in present
                             if analytes[p].workup_counts_for}
        facts.missing_labs = {name for name in analytes if name not in covered}
        for name, analyte in analytes.items():
            if analyte.workup and name not in covered:
                note = "results without a convertible unit, not judged" if name in unjudged \
                    else None
                facts.add({"kind": "lab-missing", "analyte": name},
                          Evidence("missing", analyte.label, analyte=name, judged=note))

    # -- medications -> drug / depletes facts -------------------------------------------
    def _medications(self, resources: dict[str, list[Resource]], facts: Facts) -> None:
        medications = {m["id"]: m for m in resources.get("Medication", [])
                       if isinstance(m.get("id"), str)}
        seen: set[str] = set()
        for kind, statuses in (("MedicationRequest", ACTIVE_REQUEST),
                               ("MedicationStatement", ACTIVE_STATEMENT)):
            for resource in resources.get(kind, []):
                if _text(resource.get("status")) not in statuses:
                    continue
                concept = self._medication_concept(resource, medications)
                ingredients = self.vocabulary.ingredients_of(concept) - seen
                if not ingredients or not _valid(resource, facts):
                    continue
                seen |= ingredients
                label = _medication_label(concept)
                for ingredient in sorted(ingredients):
                    self._add_drug("drug", "depletes", ingredient, label,
                                   resource["status"], facts)

    @staticmethod
    def _medication_concept(resource: Resource, medications: dict[Any, Resource]) -> Any:
        """The drug's CodeableConcept, following a `medicationReference` when it resolves."""
        if "medicationCodeableConcept" in resource:
            return resource["medicationCodeableConcept"]
        reference = resource.get("medicationReference")
        if isinstance(reference, dict) and isinstance(reference.get("reference"), str):
            ref = reference["reference"]
            inline = resource.get("contained")
            contained = {f"#{c.get('id')}": c for c in inline
                         if isinstance(c, dict)} if isinstance(inline, list) else {}
            target = contained.get(ref) or medications.get(ref.rsplit("/", 1)[-1])
            if target:
                return target.get("code")
        return None

    def _add_drug(self, kind: str, depletes_kind: str, ingredient: str, label: str,
                  status: str, facts: Facts) -> None:
        meds = self.knowledge.medications
        spec = meds.ingredients[ingredient]
        finding = meds.classes[spec.drug_class].finding
        evidence = facts.cite(Evidence(
            "medication" if kind == "drug" else "order", label or ingredient, status=status,
            judged=f"contains {ingredient} ({meds.classes[spec.drug_class].label})",
            lowers=tuple(spec.lowers)))
        facts.add({"kind": kind, "class": spec.drug_class, "finding": finding,
                   "ingredient": ingredient}, evidence)
        for analyte in spec.lowers:
            facts.add({"kind": depletes_kind, "analyte": analyte, "finding": finding,
                       "ingredient": ingredient}, evidence)

    def _drafts(self, orders: list[Resource], facts: Facts) -> None:
        """Drugs being ordered. Read leniently: the sandbox's drafts are not valid FHIR."""
        for order in orders:
            concept = order.get("medicationCodeableConcept")
            for ingredient in sorted(self.vocabulary.ingredients_of(concept)):
                self._add_drug("draft", "draft-depletes", ingredient,
                               _medication_label(concept), str(order.get("status", "draft")),
                               facts)

    # -- family history -> family facts ---------------------------------------------------
    def _family(self, histories: list[Resource], facts: Facts) -> None:
        seen: set[str] = set()
        for history in histories:
            if history.get("status") == "entered-in-error":
                continue
            conditions = history.get("condition")
            codings = [c for cond in conditions if isinstance(cond, dict)
                       for c in _codings(cond.get("code"))] if isinstance(conditions, list) else []
            concepts = {k: v for k, v in self.vocabulary.concepts_of(codings).items()
                        if k not in seen}
            if not concepts or not _valid(history, facts):
                continue
            relation = _codings(history.get("relationship"))
            who = relation[0].get("display") or relation[0].get("code") if relation else None
            for concept, match in concepts.items():
                seen.add(concept)
                facts.add({"kind": "family", "concept": concept},
                          Evidence("family", f"{match.display} in the family",
                                   parse_date(history.get("date")), status=who,
                                   code=_code_label(match.coding)))


    # -- care already in place -> neurology-care fact ---------------------------------------
    def _neurology_care(self, resources: dict[str, list[Resource]], facts: Facts) -> None:
        """A neurology referral or encounter on record (whichever key it arrived under)."""
        latest: Evidence | None = None
        for kind, fields, excluded in CARE_SOURCES:
            for resource in resources.get(kind, []):
                if resource.get("status") in excluded:
                    continue
                codings = [c for name in fields for c in _codings_of(resource.get(name))]
                if "neurology-care" not in self.vocabulary.concepts_of(codings):
                    continue
                when = parse_date(resource.get("authoredOn")) or parse_date(
                    (resource.get("period") or {}).get("start")
                    if isinstance(resource.get("period"), dict) else None)
                what = "Neurology referral" if kind == "ServiceRequest" else "Neurology encounter"
                evidence = Evidence("problem", what, when, status=resource.get("status"))
                if latest is None or (when or date.min) > (latest.when or date.min):
                    latest = evidence
        if latest is not None:
            facts.add({"kind": "neurology-care"}, latest)


def _codings_of(value: Any) -> list[dict[str, Any]]:
    """Codings of a CodeableConcept or of a list of them."""
    concepts = value if isinstance(value, list) else [value]
    return [c for concept in concepts for c in _codings(concept)]


def judge(analyte: Analyte, value: float, result: LabResult, sex: str | None
          ) -> tuple[bool, bool, bool, str]:
    """Low / critical / high for one result, and the limit that decided, in words.

    The result's own reference range decides "low" and "high" where it is given in a
    convertible unit (labs differ); else the default threshold from rules/. Critical limits
    always come from rules/ (they are clinical action limits, not population ranges).
    """
    use_range = analyte.use_reference_range
    basis = ""
    low = high = False
    if use_range and result.ref_low is not None:
        low = value < result.ref_low
        basis = f"below the lab's lower limit {_fmt(result.ref_low)} {analyte.unit}"
    elif analyte.low is not None:
        low = analyte.low.holds(value, sex)
        basis = _threshold_words(analyte.low, sex, analyte.unit) + DEFAULT
    if use_range and result.ref_high is not None:
        high = value > result.ref_high
        if high:
            basis = f"above the lab's upper limit {_fmt(result.ref_high)} {analyte.unit}"
    elif analyte.high is not None:
        high = analyte.high.holds(value, sex)
        if high:
            basis = _threshold_words(analyte.high, sex, analyte.unit) + DEFAULT
    critical = analyte.critical is not None and analyte.critical.holds(value, sex)
    if critical and analyte.critical is not None:
        basis = "critical: " + _threshold_words(analyte.critical, sex, analyte.unit) + DEFAULT
    return low or critical, critical, high, basis


def _score(obs: Resource, units: dict[str, float] | None) -> float | None:
    """A score or duration in the spec's unit; None when missing or not convertible."""
    quantity = obs.get("valueQuantity")
    number = _number(quantity.get("value")) if isinstance(quantity, dict) else _number(
        obs.get("valueInteger"))
    if number is None or not units or not isinstance(quantity, dict):
        return number
    return to_canonical(number, quantity_unit(quantity), {u.lower(): f for u, f in units.items()})


def _threshold_words(threshold: Threshold, sex: str | None, unit: str) -> str:
    op, limit = threshold.limit(sex)
    words = {"below": "below", "at_or_below": "at or below", "above": "above",
             "at_or_above": "at or above"}[op]
    return f"{words} {_fmt(limit)} {unit}"


def _medication_label(concept: Any) -> str:
    for coding in _codings(concept):
        if isinstance(coding.get("display"), str):
            return coding["display"]
    if isinstance(concept, dict) and isinstance(concept.get("text"), str):
        return concept["text"]
    return ""
