"""Lookup tables built once from rules/: which code means which concept, analyte or drug.

Codings are compared in one canonical form, because real records spell the same code in
several ways: code systems as URIs, C-CDA OIDs or HL7 v2 mnemonics, ICD-10 codes with or
without their dot, WHO ICD-10 where ICD-10-CM is expected (rules/record.yaml).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cds.decision.facts.record import codings, codings_of
from cds.knowledge import SYSTEMS, Code, Knowledge, Product

ICD = ("icd10cm", "icd10")
SYSTEM_LABELS = {
    "snomed": "SNOMED CT",
    "icd10cm": "ICD-10-CM",
    "icd10": "ICD-10",
    "loinc": "LOINC",
    "rxnorm": "RxNorm",
    "atc": "ATC",
    "twitch-cds": "twitch-cds assessment",
}
CodeKey = tuple[str, str]


@dataclass(frozen=True)
class Match:
    """A coding from the record and the display rules/ gives its code (never free text)."""

    coding: dict[str, Any]
    display: str
    code_label: str


def _icd_key(code: str) -> str:
    """R25.3 and R253 are one ICD-10 code (the dot is formatting; case and spaces are not)."""
    return code.replace(".", "")


def _word_pattern(words: Iterable[str]) -> re.Pattern[str] | None:
    alternatives = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
    return re.compile(rf"\b(?:{alternatives})\b", re.IGNORECASE) if alternatives else None


class Vocabulary:
    """Codes -> concepts, analytes, observations and ingredients; shared and read-only."""

    def __init__(self, knowledge: Knowledge) -> None:
        self.knowledge = knowledge
        record = knowledge.record
        self.systems = {uri: name for name, uri in SYSTEMS.items()}
        self.systems.update(
            {alias: name for name, aliases in record.system_aliases.items() for alias in aliases}
        )
        self.systems.update(dict.fromkeys(record.icd10_who_systems, "icd10"))
        self.who_as_cm = {_icd_key(c) for c in record.icd10_who_same_as_icd10cm}
        self.concepts: dict[CodeKey, dict[str, str]] = {}
        self.prefixes: dict[str, list[tuple[str, str, str]]] = {}
        for name, valueset in knowledge.valuesets.items():
            for code in valueset.codes:
                if code.prefix:
                    system, prefix = self.code_key(code)
                    self.prefixes.setdefault(system, []).append((prefix, name, code.words))
                else:
                    self.concepts.setdefault(self.code_key(code), {})[name] = code.words
        labs = knowledge.labs
        self.analytes = {
            c.code: (name, c, rank)
            for name, a in labs.analytes.items()
            for rank, c in enumerate(a.codes)
        }
        self.scored = {
            c.code: name for name, o in labs.scored_observations.items() for c in o.codes
        }
        self.coded = {c.code: name for name, o in labs.coded_observations.items() for c in o.codes}
        # The assessment's questions by canonical code -> topic (rules/assessment/).
        self.assessment_topics = {
            key: topic
            for (system, code), topic in knowledge.assessment.topics.items()
            if (key := self.key_of({"system": system, "code": code})) is not None
        }
        # Questions whose "yes" no rule reads: not in a value set, not a score or coded answer.
        self.assessment_unread = {
            key: display
            for (system, code), display in knowledge.assessment.displays.items()
            if (key := self.key_of({"system": system, "code": code})) is not None
            and key not in self.concepts
            and code not in self.scored
            and code not in self.coded
        }
        self.absent = {self.code_key(c) for c in record.absent_values}
        self.absent_words = {w.lower() for w in record.absent_words}
        self.negative_interpretations = set(record.negative_interpretations)
        self.interpretation_systems = set(record.interpretation_systems)
        self.lab_flags = record.lab_flags
        self.range_sexes = {sex: set(codes) for sex, codes in record.reference_range_sex.items()}
        meds = knowledge.medications
        # An ingredient's own codes: its RxNorm ingredient code and its ATC substance codes.
        self.ingredient_codes: dict[CodeKey, str] = {
            key: name
            for name, i in meds.ingredients.items()
            for key in [*([("rxnorm", i.rxcui)] if i.rxcui else []), *(("atc", c) for c in i.atc)]
        }
        self.products = meds.products
        # Ingredient names and brand names, matched in one pass (longest name first, so
        # "ethinyl estradiol" is not also read as "estradiol").
        self.by_name: dict[str, list[str]] = {}
        for name, ingredient in meds.ingredients.items():
            for spelling in ingredient.names or [name]:
                self.by_name.setdefault(spelling.lower(), []).append(name)
        for brand, ingredients in meds.synonyms.items():
            self.by_name.setdefault(brand.lower(), []).extend(ingredients)
        self.name_pattern = _word_pattern(self.by_name)
        kinds = meds.routes.kinds.values() if meds.routes else []
        self.systemic_only = set(meds.routes.systemic_only) if meds.routes else set()
        self.route_codes = {self.code_key(c): k.systemic for k in kinds for c in k.codes}
        self.not_systemic_words = _word_pattern(w for k in kinds if not k.systemic for w in k.words)
        self.systemic_words = _word_pattern(w for k in kinds if k.systemic for w in k.words)

    @staticmethod
    def code_key(code: Code) -> CodeKey:
        return code.system, _icd_key(code.code) if code.system in ICD else code.code

    def key_of(self, coding: dict[str, Any]) -> CodeKey | None:
        """The canonical (system name, code) of a record's coding; None if either is missing."""
        system, code = coding.get("system"), coding.get("code")
        if not isinstance(system, str) or not isinstance(code, str):
            return None
        name = self.systems.get(system)
        if name is None:
            return None
        if name in ICD:
            code = _icd_key(code)
            if name == "icd10" and code in self.who_as_cm:
                name = "icd10cm"
        return name, code

    @staticmethod
    def label_of(code: Code) -> str:
        """'LOINC 75626-2': a code of rules/ as a card names it."""
        return f"{SYSTEM_LABELS[code.system]} {code.code}"

    def code_label(self, coding: dict[str, Any]) -> str:
        key = self.key_of(coding)
        system = SYSTEM_LABELS[key[0]] if key else "code"
        return f"{system} {coding.get('code')}"

    def is_system(self, coding: dict[str, Any], name: str) -> bool:
        system = coding.get("system")
        return isinstance(system, str) and self.systems.get(system) == name

    def concepts_of(self, found_codings: Iterable[dict[str, Any]]) -> dict[str, Match]:
        """Concepts the codings belong to, each with the coding that matched."""
        found: dict[str, Match] = {}
        for coding in found_codings:
            key = self.key_of(coding)
            if key is None:
                continue
            for name, display in self.concepts.get(key, {}).items():
                found.setdefault(name, Match(coding, display, self.code_label(coding)))
            for prefix, name, display in self.prefixes.get(key[0], ()):
                if key[1].startswith(prefix):
                    found.setdefault(name, Match(coding, display, self.code_label(coding)))
        return found

    def is_absent_answer(self, concept: Any) -> bool:
        """Whether a coded answer says "absent", "no" or "negative" (rules/record.yaml)."""
        return any(self.key_of(c) in self.absent for c in codings(concept)) or (
            isinstance(concept, dict)
            and isinstance(concept.get("text"), str)
            and not codings(concept)
            and concept["text"].strip().lower() in self.absent_words
        )

    def products_of(self, concept: Any) -> list[Product]:
        """The RxNorm products (rules/rxnorm-products.tsv) a medication CodeableConcept codes."""
        keys = (self.key_of(coding) for coding in codings(concept))
        return [
            self.products[key[1]]
            for key in keys
            if key is not None and key[0] == "rxnorm" and key[1] in self.products
        ]

    def ingredients_of(self, concept: Any) -> set[str]:
        """Ingredients of a medication CodeableConcept: RxNorm IN, product codes (SCD, SBD,
        GPCK, BPCK) and ATC substance codes, then names and brand names."""
        found: set[str] = set()
        texts: list[str] = []
        for product in self.products_of(concept):
            found.update(product.ingredients)
        for coding in codings(concept):
            key = self.key_of(coding)
            if key in self.ingredient_codes:
                found.add(self.ingredient_codes[key])
            if isinstance(coding.get("display"), str):
                texts.append(coding["display"])
        if isinstance(concept, dict) and isinstance(concept.get("text"), str):
            texts.append(concept["text"])
        if not found and self.name_pattern:
            for text in texts:
                for match in self.name_pattern.finditer(text):
                    found.update(self.by_name[match[0].lower()])
        return found

    def systemic(self, *signs: Any) -> bool | None:
        """How a drug is given, from route / form / product-name CodeableConcepts in order of
        authority: True systemic, False not systemic, None when none of them says."""
        for sign in signs:
            verdicts = {self.route_codes.get(self.key_of(c) or ("", "")) for c in codings_of(sign)}
            if False in verdicts:
                return False
            texts = [c["display"] for c in codings_of(sign) if isinstance(c.get("display"), str)]
            concepts = sign if isinstance(sign, list) else [sign]
            texts += [
                c["text"]
                for c in concepts
                if isinstance(c, dict) and isinstance(c.get("text"), str)
            ]
            if self.not_systemic_words and any(self.not_systemic_words.search(t) for t in texts):
                return False
            if True in verdicts or (
                self.systemic_words and any(self.systemic_words.search(t) for t in texts)
            ):
                return True
        return None
