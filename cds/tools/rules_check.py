"""`twitch-cds check-rules`: every authoring mistake in rules/ at once, with where it is.

The service refuses to start on an inconsistent rules/ too, but stops at the first problem
and speaks in model terms. This check reads the YAML as written and reports, file by file:

- files that are missing or not valid YAML, and entries of the wrong shape;
- codes of an unknown code system (only those of `cds.knowledge.SYSTEMS` can match);
- missing sources: a code without its reference `source`, a threshold, ingredient or card
  without a source, a source without a label or an https URL;
- thresholds without units: an analyte without its canonical `unit`, or whose unit table
  does not give that unit the factor 1; a scored observation with a unit table but no unit
  (one with neither is a score in points);
- duplicate entries: the same code twice in one value set or one analyte;
- dangling references: a rule naming a value set, analyte, flag, drug class or finding that
  does not exist, and everything `cds.knowledge` cross-checks (among them: a card whose source
  is not a guideline, textbook chapter, review or drug label, such as a consumer site);
- card texts that are not plain US English (rules/wording.yaml): a British spelling
  ("paraesthesia") or the service's own jargon ("(default limit)", "Mg/K/Ca");
- the generated product table (rxnorm-products.tsv): rows of the wrong shape, a code twice, an
  unknown term type or an ingredient that medications.yaml does not define (the table was
  built from an older medications.yaml: rebuild it); the route synonym table: a class that
  does not exist, a route kind that does not say whether it is systemic, a word of two kinds.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import ValidationError

from cds.knowledge import (
    PRODUCT_COLUMNS,
    PRODUCTS_FILE,
    SYSTEMS,
    ProductType,
    load_knowledge,
    product_rows,
)

FILES = (
    "sources.yaml",
    "valuesets.yaml",
    "labs.yaml",
    "medications.yaml",
    "findings.yaml",
    "ruleset.yaml",
    "record.yaml",
    "wording.yaml",
)
# Keys of findings.yaml whose values are identifiers (source keys, codes, claim kinds), not
# words a clinician reads.
IDENTIFIER_KEYS = frozenset(
    {
        "topic_system",
        "override_reason_system",
        "source",
        "links",
        "claims",
        "suggest",
        "labs",
        "mentions",
        "suppressed_by",
    }
)
LAB_GROUPS = ("analytes", "scored_observations", "coded_observations")
# The keys of rule patterns that name something defined in another file.
REFERENCES = {
    "concept": "value set",
    "analyte": "analyte",
    "class": "drug class",
    "finding": "finding",
}


@dataclass(frozen=True, order=True)
class Problem:
    file: str
    where: str
    message: str

    def __str__(self) -> str:
        return (
            f"{self.file}: {self.where}: {self.message}"
            if self.where
            else f"{self.file}: {self.message}"
        )


def check(rules_dir: Path) -> list[Problem]:
    """All problems found in `rules_dir`, sorted by file and place; [] when it is sound."""
    documents: dict[str, Any] = {}
    problems: list[Problem] = []
    for name in FILES:
        path = rules_dir / name
        try:
            documents[name] = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            problems.append(Problem(name, "", "file missing"))
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            line = f"line {mark.line + 1}" if mark else ""
            reason = getattr(error, "problem", None) or "syntax error"
            problems.append(Problem(name, line, f"not valid YAML ({reason})"))
    if problems:
        return sorted(problems)
    problems += _sources(documents["sources.yaml"])
    problems += _source_references(documents)
    problems += _codes(documents)
    problems += _units(documents["labs.yaml"])
    problems += _rule_references(documents)
    problems += _wording(documents)
    problems += _products(rules_dir / PRODUCTS_FILE, documents["medications.yaml"])
    problems += _routes(documents["medications.yaml"])
    problems += _model(rules_dir)
    return sorted(set(problems))


def _mapping(document: Any) -> dict[str, Any]:
    return document if isinstance(document, dict) else {}


def _sources(sources: Any) -> Iterator[Problem]:
    for key, source in _mapping(sources).items():
        if not isinstance(source, dict) or not source.get("label"):
            yield Problem("sources.yaml", key, "source without a label")
        elif not str(source.get("url", "")).startswith("https://"):
            yield Problem("sources.yaml", key, "source without an https URL")


def _source_references(documents: dict[str, Any]) -> Iterator[Problem]:
    """Cards and thresholds cite a source of sources.yaml; drug ingredients a reference."""
    known = set(_mapping(documents["sources.yaml"]))
    cited: list[tuple[str, str, Any]] = []
    for name, text in _mapping(_mapping(documents["findings.yaml"]).get("findings")).items():
        text = _mapping(text)
        cited += [("findings.yaml", f"findings.{name}.source", text.get("source"))]
        cited += [
            ("findings.yaml", f"findings.{name}.links", key) for key in text.get("links") or []
        ]
    labs = _mapping(documents["labs.yaml"])
    for group in LAB_GROUPS:
        for name, item in _mapping(labs.get(group)).items():
            for key in ("low", "critical", "high", "positive", "albumin_correction"):
                if isinstance(_mapping(item).get(key), dict):
                    cited.append(("labs.yaml", f"{group}.{name}.{key}", item[key].get("source")))
    for file, where, key in cited:
        if not key:
            yield Problem(file, where, "no source")
        elif key not in known:
            yield Problem(file, where, f"source {key!r} is not in sources.yaml")
    # An ingredient cites the reference (clinical-reference.md) its class membership is from.
    ingredients = _mapping(_mapping(documents["medications.yaml"]).get("ingredients"))
    for name, item in ingredients.items():
        if not _mapping(item).get("source"):
            yield Problem("medications.yaml", f"ingredients.{name}", "no source")


def _code_lists(documents: dict[str, Any]) -> Iterator[tuple[str, str, list[Any], bool]]:
    """(file, place, codes, needs a source) for every list of codes in rules/."""
    routes = _mapping(_mapping(documents["medications.yaml"]).get("routes"))
    for name, kind in _mapping(routes.get("kinds")).items():
        # Route codes cite the FHIR route-codes value set once, in the file's comment.
        codes = _mapping(kind).get("codes") or []
        yield "medications.yaml", f"routes.kinds.{name}", codes, False
    for name, valueset in _mapping(documents["valuesets.yaml"]).items():
        yield "valuesets.yaml", name, _mapping(valueset).get("codes") or [], True
    labs = _mapping(documents["labs.yaml"])
    for group in LAB_GROUPS:
        for name, item in _mapping(labs.get(group)).items():
            yield "labs.yaml", f"{group}.{name}", _mapping(item).get("codes") or [], True
            answers = _mapping(item).get("positive_values")
            if answers:
                # Answer codes are SNOMED unless stated (cds.decision.facts reads them that way).
                yield (
                    "labs.yaml",
                    f"{group}.{name}.positive_values",
                    [{"system": "snomed", **a} for a in answers if isinstance(a, dict)],
                    False,
                )


def _products(path: Path, medications: Any) -> Iterator[Problem]:
    """Every row of the generated product table names a product of RxNorm's product term
    types and only ingredients that medications.yaml defines."""
    ingredients = set(_mapping(_mapping(medications).get("ingredients")))
    try:
        rows = product_rows(path)
    except FileNotFoundError:
        yield Problem(PRODUCTS_FILE, "", "file missing (scripts/build-rxnorm-products.py)")
        return
    except ValueError as error:
        yield Problem(PRODUCTS_FILE, "", str(error).removeprefix(f"{PRODUCTS_FILE}: "))
        return
    seen: set[str] = set()
    for number, fields in rows:
        where = f"line {number}"
        if len(fields) != len(PRODUCT_COLUMNS):
            yield Problem(
                PRODUCTS_FILE, where, f"{len(fields)} columns, not {len(PRODUCT_COLUMNS)}"
            )
            continue
        rxcui, tty, names, name = fields
        if not rxcui.isdigit():
            yield Problem(PRODUCTS_FILE, where, f"RxCUI {rxcui!r} is not a number")
        elif rxcui in seen:
            yield Problem(PRODUCTS_FILE, where, f"RxCUI {rxcui} listed twice")
        seen.add(rxcui)
        if tty not in get_args(ProductType):
            yield Problem(PRODUCTS_FILE, where, f"term type {tty!r} is not a product type")
        for ingredient in names.split(";"):
            if ingredient not in ingredients:
                yield Problem(
                    PRODUCTS_FILE,
                    where,
                    f"unknown ingredient {ingredient!r} (not in medications.yaml: rebuild the "
                    "table with scripts/build-rxnorm-products.py)",
                )
        if not name.strip():
            yield Problem(PRODUCTS_FILE, where, f"RxCUI {rxcui} has no name")


def _routes(medications: Any) -> Iterator[Problem]:
    """The route synonym table: known classes, and each kind says whether it is systemic."""
    routes = _mapping(_mapping(medications).get("routes"))
    classes = set(_mapping(_mapping(medications).get("classes")))
    for cls in routes.get("systemic_only") or []:
        if cls not in classes:
            yield Problem("medications.yaml", "routes.systemic_only", f"unknown class {cls!r}")
    meaning: dict[str, tuple[str, Any]] = {}
    for name, kind in _mapping(routes.get("kinds")).items():
        kind = _mapping(kind)
        where = f"routes.kinds.{name}"
        if not isinstance(kind.get("systemic"), bool):
            yield Problem("medications.yaml", where, "`systemic: true|false` missing")
            continue
        for word in kind.get("words") or []:
            other, systemic = meaning.setdefault(str(word).lower(), (name, kind["systemic"]))
            if systemic != kind["systemic"]:
                yield Problem("medications.yaml", where, f"word {word!r} also names {other}")


def _codes(documents: dict[str, Any]) -> Iterator[Problem]:
    for file, place, codes, needs_source in _code_lists(documents):
        seen: Counter[tuple[str, str]] = Counter()
        for index, code in enumerate(codes):
            where = (
                f"{place}.codes[{index}]" if "positive_values" not in place else f"{place}[{index}]"
            )
            if not isinstance(code, dict) or "code" not in code:
                yield Problem(file, where, "a code entry needs at least `code`")
                continue
            system = code.get("system", "loinc")
            if system not in SYSTEMS:
                yield Problem(
                    file,
                    where,
                    f"unknown code system {system!r} (known: {', '.join(sorted(SYSTEMS))})",
                )
            if needs_source and not code.get("source"):
                yield Problem(file, where, f"code {code['code']} has no source")
            seen[(system, str(code["code"]))] += 1
        for (system, value), count in seen.items():
            if count > 1:
                yield Problem(file, place, f"{system} {value} listed {count} times")


def _units(labs: Any) -> Iterator[Problem]:
    labs = _mapping(labs)
    for name, analyte in _mapping(labs.get("analytes")).items():
        where = f"analytes.{name}"
        analyte = _mapping(analyte)
        unit, units = analyte.get("unit"), _mapping(analyte.get("units"))
        thresholds = [k for k in ("low", "critical", "high") if analyte.get(k)]
        if not unit:
            yield Problem(
                "labs.yaml",
                where,
                "no canonical `unit`: thresholds "
                f"{', '.join(thresholds) or '(none yet)'} would have no unit",
            )
        elif units.get(unit) != 1.0:
            yield Problem("labs.yaml", where, f"unit {unit!r} must be in `units` with factor 1.0")
    for name, scored in _mapping(labs.get("scored_observations")).items():
        scored = _mapping(scored)
        where = f"scored_observations.{name}"
        if scored.get("units") and not scored.get("unit"):
            yield Problem("labs.yaml", where, "`units` given but no `unit` for the threshold")


def _strings(value: Any, where: str) -> Iterator[tuple[str, str]]:
    """(place, text) for every string inside a findings.yaml entry, identifiers left out;
    dictionary keys that are codes (relationships, coding fields) are not text either."""
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, dict):
        if {"system", "code"} <= set(value):  # a Coding: only its display is text
            if isinstance(value.get("display"), str):
                yield f"{where}.display", value["display"]
            return
        for key, item in value.items():
            if key not in IDENTIFIER_KEYS:
                yield from _strings(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(item, f"{where}[{index}]")


def card_texts(documents: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    """(file, place, text) for every text of rules/ that reaches a card."""
    for where, text in _strings(_mapping(documents["findings.yaml"]), ""):
        yield "findings.yaml", where, text
    for name, valueset in _mapping(documents["valuesets.yaml"]).items():
        valueset = _mapping(valueset)
        if isinstance(valueset.get("label"), str):
            yield "valuesets.yaml", f"{name}.label", valueset["label"]
        for index, code in enumerate(valueset.get("codes") or []):
            if isinstance(_mapping(code).get("label"), str):
                yield "valuesets.yaml", f"{name}.codes[{index}].label", code["label"]
    labs = _mapping(documents["labs.yaml"])
    for group in LAB_GROUPS:
        for name, item in _mapping(labs.get(group)).items():
            if isinstance(_mapping(item).get("label"), str):
                yield "labs.yaml", f"{group}.{name}.label", item["label"]
    for name, cls in _mapping(_mapping(documents["medications.yaml"]).get("classes")).items():
        if isinstance(_mapping(cls).get("label"), str):
            yield "medications.yaml", f"classes.{name}.label", cls["label"]
    record = _mapping(documents["record.yaml"])
    for name, flag in _mapping(record.get("lab_flags")).items():
        if isinstance(_mapping(flag).get("label"), str):
            yield "record.yaml", f"lab_flags.{name}.label", flag["label"]


def _wording(documents: dict[str, Any]) -> Iterator[Problem]:
    """Card texts in US English and without the service's own jargon (rules/wording.yaml)."""
    wording = _mapping(documents["wording.yaml"])
    spellings = {str(k).lower(): str(v) for k, v in _mapping(wording.get("us_spelling")).items()}
    jargon = [str(j) for j in wording.get("jargon") or []]
    british = (
        re.compile("|".join(re.escape(k) for k in sorted(spellings, key=len, reverse=True)), re.I)
        if spellings
        else None
    )
    for file, where, text in card_texts(documents):
        for match in british.finditer(text) if british else ():
            yield Problem(
                file,
                where,
                f"British spelling {match[0]!r} in {text!r}: write "
                f"{spellings[match[0].lower()]!r} (US English)",
            )
        for term in jargon:
            if term.lower() in text.lower():
                yield Problem(file, where, f"internal jargon {term!r} in {text!r}: say it in words")


def _patterns(value: Any) -> Iterator[dict[str, Any]]:
    """Every mapping inside a rule's `all:` (patterns nest under $and, $or, $not...)."""
    if isinstance(value, dict):
        yield value
        for item in value.values():
            yield from _patterns(item)
    elif isinstance(value, list):
        for item in value:
            yield from _patterns(item)


def _rule_references(documents: dict[str, Any]) -> Iterator[Problem]:
    labs = _mapping(documents["labs.yaml"])
    analytes = _mapping(labs.get("analytes"))
    defined = {
        "concept": set(_mapping(documents["valuesets.yaml"])),
        "analyte": set(analytes),
        "class": set(_mapping(_mapping(documents["medications.yaml"]).get("classes"))),
        "finding": set(_mapping(_mapping(documents["findings.yaml"]).get("findings"))),
    }
    flags = {flag for a in analytes.values() for flag in _mapping(_mapping(a).get("flags"))}
    rulesets = _mapping(_mapping(documents["ruleset.yaml"]).get("rulesets"))
    for ruleset_name, rules in rulesets.items():
        for rule_name, rule in _mapping(rules).items():
            where = f"rulesets.{ruleset_name}.{rule_name}"
            for pattern in _patterns(_mapping(rule).get("all")):
                for key, kind in REFERENCES.items():
                    value = pattern.get(key)
                    if isinstance(value, str) and value not in defined[key]:
                        yield Problem("ruleset.yaml", where, f"unknown {kind} {value!r}")
                if pattern.get("kind") == "lab":
                    for test in _patterns(pattern):
                        for flag in set(test) - {
                            "kind",
                            "analyte",
                            "low",
                            "critical",
                            "high",
                            "finding",
                            "$and",
                            "$or",
                            "$ex",
                            "$not",
                        }:
                            if (
                                not flag.startswith("$")
                                and test.get(flag) is True
                                and flag not in flags
                            ):
                                yield Problem("ruleset.yaml", where, f"unknown lab flag {flag!r}")
            finding = _mapping(_mapping(rule).get("then")).get("finding")
            if (
                isinstance(finding, str)
                and not finding.startswith("$")
                and finding not in defined["finding"]
            ):
                yield Problem("ruleset.yaml", where, f"no card text for finding {finding!r}")


def _model(rules_dir: Path) -> Iterator[Problem]:
    """What the service itself checks at start-up, as problems instead of one exception."""
    files = {
        "sources": "sources.yaml",
        "valuesets": "valuesets.yaml",
        "labs": "labs.yaml",
        "medications": "medications.yaml",
        "findings": "findings.yaml",
        "rulesets": "ruleset.yaml",
    }
    try:
        load_knowledge(rules_dir)
    except ValidationError as error:
        for detail in error.errors():
            location = [str(part) for part in detail["loc"]]
            message = detail["msg"].removeprefix("Value error, ")
            if location[:2] == ["medications", "products"]:
                yield Problem(PRODUCTS_FILE, f"RxCUI {'.'.join(location[2:])}", message)
            elif location:
                yield Problem(files.get(location[0], location[0]), ".".join(location[1:]), message)
            else:
                for line in message.splitlines()[1:] or [message]:
                    yield Problem("rules/", "", f"dangling reference: {line.strip()}")
    except (OSError, ValueError) as error:
        # A product table that cannot be read at all: `_products` says where.
        yield Problem("rules/", "", f"the service would not start: {error}")
