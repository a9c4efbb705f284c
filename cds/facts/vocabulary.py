"""Lookup tables built once from rules/: which code means which concept, analyte or drug."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cds.facts.record import codings
from cds.knowledge import SYSTEMS, Knowledge


@dataclass(frozen=True)
class Match:
    """A coding from the record and the display rules/ gives its code (never free text)."""

    coding: dict[str, Any]
    display: str


class Vocabulary:
    """Codes -> concepts, analytes, observations and ingredients; shared and read-only."""

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

    def concepts_of(self, found_codings: Iterable[dict[str, Any]]) -> dict[str, Match]:
        """Concepts the codings belong to, each with the coding that matched."""
        found: dict[str, Match] = {}
        for coding in found_codings:
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
        for coding in codings(concept):
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
