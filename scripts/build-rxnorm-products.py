#!/usr/bin/env python3
"""Build rules/rxnorm-products.tsv: RxNorm products (SCD, SBD, GPCK, BPCK) -> the ingredients
of rules/medications.yaml they contain.

Why a generated table: EHRs order products, not ingredients ("furosemide 40 MG Oral Tablet",
RxCUI 313988), and often send the code without a display. The service cannot ask RxNorm at run
time (CI and many hospital networks reach no terminology server), so the mapping ships as data,
generated here from a public RxNorm extract and committed with its provenance.

Input: the per-letter JSON files (`web/data/<letter>.json`) written by the RxNorm ingredients
extractor of github.com/davidanderson3/rxnorm-ingredients from NLM's "RxNorm Current
Prescribable Content" (RXNCONSO/RXNREL, non-suppressed RXNORM concepts). Each file is a list of
ingredient records (IN, PIN, MIN) -> SCDCs -> SCDs -> SBDs / GPCKs / BPCKs. A product listed
under several ingredients (a combination) gets all of the rules' ingredients among them. The
extractor links a pack to the SCDs it contains: a branded pack that contains only branded drugs
is not in its output, and so not in the table (its display or brand name still matches).

An ingredient of the rules is found by its `rxcui`; the record's name must then be one of the
ingredient's spellings (its key or `names`), else the build stops: a wrong code in the rules
would otherwise silently map another drug's products.

To regenerate (needs the network once, not at test time):

    git clone https://github.com/davidanderson3/rxnorm-ingredients /tmp/rxi
    git -C /tmp/rxi checkout a8fcf13a679fa37073e8fa83e11d5e0d8cc07276
    python scripts/build-rxnorm-products.py /tmp/rxi/web/data

The output is sorted and has no time stamp, so the same input gives the same file. The
committed table was built without `A.json`: the public snapshot of the extract lacks it (its
blob is absent), so the rules' ingredients whose record it holds have no record here.

Supplements (`--value-set`, repeatable): FHIR ValueSets whose expansion lists RxNorm products,
for the ingredients the extract does not cover. Such an expansion names no ingredients, so a
product counts for an uncovered ingredient of the rules when its RxNorm name carries one of the
ingredient's spellings as a word ("amphetamine sulfate 10 MG Oral Tablet [Evekeo]", and not
"dextroamphetamine"); its term type is read from RxNorm's naming ("{...} Pack" a pack, "[Brand]"
branded). An ingredient the extract covers is never taken from a supplement. A supplement's
origin and licence are recorded in `SUPPLEMENTS` below, by the ValueSet's canonical URL: one
not recorded there stops the build. The committed table uses two, copied unchanged from their
origins (see `SUPPLEMENTS` and tests/fixtures/README.md) into the repository:

    python scripts/build-rxnorm-products.py /tmp/rxi/web/data \
        --value-set tests/fixtures/rxnorm-valueset/amphetamines-class-medications.json \
        --value-set tests/fixtures/rxnorm-valueset/antibiotic-medications-for-uri.json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
PRODUCT_TYPES = ("SCD", "SBD", "GPCK", "BPCK")
# Under an SCD, the extractor lists its branded drugs and the packs that contain it.
CHILDREN = {"SBDs": "SBD", "GPCKs": "GPCK", "BPCKs": "BPCK"}
COLUMNS = ("rxcui", "tty", "ingredients", "name")
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
DEFAULT_ORIGIN = (
    "github.com/davidanderson3/rxnorm-ingredients @ a8fcf13a679fa37073e8fa83e11d5e0d8cc07276, "
    "web/data/*.json (extract of NLM RxNorm Current Prescribable Content, release 2025-10-06)"
)
_RXNORM_NAMES = (
    "its content is RxNorm codes and names, which NLM publishes without licence restrictions "
    "(RxNorm's own names, source RXNORM)."
)
# ValueSet canonical URL -> (origin, licence) of each supplement the table may be built with.
SUPPLEMENTS = {
    "http://fhir.org/guides/cdc/opioid-cds/ValueSet/amphetamines-class-medications": (
        "github.com/HL7/cdc-opioid-cpg @ 77f4fdcc59192eff20395db6654695f4919eeb74, "
        "input/vocabulary/amphetamines-class-medications.json (CDC Opioid Prescribing Support "
        "Implementation Guide: ValueSet amphetamines-class-medications, expansion 2025-02-24)",
        "a ValueSet of the U.S. Centers for Disease Control and Prevention (a work of the U.S. "
        f"government) in an HL7 implementation guide; {_RXNORM_NAMES}",
    ),
    "http://cts.nlm.nih.gov/fhir/ValueSet/2.16.840.1.113883.3.464.1003.1190": (
        "github.com/cqframework/ecqm-content-cms-2025 @ d80fd0ae5cae13780a0132c10192e2613cebb559, "
        "input/vocabulary/valueset/external/valueset-2.16.840.1.113883.3.464.1003.1190.json "
        "(VSAC eCQM value set Antibiotic Medications for Upper Respiratory Infection, version "
        "20240210, RxNorm 2024-01)",
        f"the repository is published under CC0 1.0 Universal; {_RXNORM_NAMES}",
    ),
}
DEFAULT_LICENCE = (
    "RxNorm Current Prescribable Content is published by the U.S. National Library of Medicine "
    "for use without a UMLS licence (https://www.nlm.nih.gov/research/umls/rxnorm/docs/"
    "prescribe.html); the extract repository states no licence of its own and adds no content "
    "beyond RxNorm's codes, names and relationships."
)


def spellings(medications: dict[str, Any]) -> dict[str, tuple[str, set[str]]]:
    """RxCUI -> (rules ingredient, the lower-case names it may carry in RxNorm)."""
    found: dict[str, tuple[str, set[str]]] = {}
    for name, ingredient in medications["ingredients"].items():
        rxcui = ingredient.get("rxcui")
        if rxcui:
            names = {n.lower() for n in ingredient.get("names") or []} | {name.lower()}
            found[str(rxcui)] = (name, names)
    return found


def records(source: Path) -> Iterator[dict[str, Any]]:
    """Every ingredient record of the extract's JSON files, in file-name order."""
    for path in sorted(source.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, list):
            raise SystemExit(f"{path}: expected a list of ingredient records")
        yield from data


def products_of(record: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    """(rxcui, tty, name) of every product under one ingredient record."""
    for component in record.get("SCDCs") or []:
        for scd in component.get("SCDs") or []:
            yield scd["RXCUI"], scd["TTY"], scd["Name"]
            for key, tty in CHILDREN.items():
                for child in scd.get(key) or []:
                    yield child["RXCUI"], tty, child["Name"]


def build(
    source_records: Iterable[dict[str, Any]],
    medications: dict[str, Any],
    supplements: Iterable[dict[str, Any]] = (),
) -> tuple[list[str], list[str]]:
    """The table's rows (tab-separated, without header) sorted by RxCUI, and the rules'
    ingredients that neither the source nor a supplement covers."""
    known = spellings(medications)
    covered: set[str] = set()
    names: dict[str, tuple[str, str]] = {}
    ingredients: dict[str, set[str]] = {}
    for record in source_records:
        if record.get("TTY") != "IN" or record.get("RXCUI") not in known:
            continue
        ingredient, allowed = known[record["RXCUI"]]
        if record["Name"].lower() not in allowed:
            raise SystemExit(
                f"rules ingredient {ingredient!r} has rxcui {record['RXCUI']}, which RxNorm "
                f"names {record['Name']!r}: fix the rxcui or add the name to `names`"
            )
        covered.add(ingredient)
        for rxcui, tty, name in products_of(record):
            if tty not in PRODUCT_TYPES:
                raise SystemExit(f"product {rxcui}: unexpected term type {tty}")
            names[rxcui] = (tty, name)
            ingredients.setdefault(rxcui, set()).add(ingredient)
    uncovered = {
        ingredient: re.compile(rf"\b(?:{'|'.join(map(re.escape, sorted(allowed)))})\b", re.I)
        for ingredient, allowed in known.values()
        if ingredient not in covered
    }
    for rxcui, name in (p for supplement in supplements for p in expanded_products(supplement)):
        found = {ingredient for ingredient, words in uncovered.items() if words.search(name)}
        if found:
            names.setdefault(rxcui, (term_type(name), name))
            ingredients.setdefault(rxcui, set()).update(found)
            covered |= found
    rows = [
        "\t".join((rxcui, names[rxcui][0], ";".join(sorted(ingredients[rxcui])), names[rxcui][1]))
        for rxcui in sorted(names, key=int)
    ]
    return rows, sorted(set(medications["ingredients"]) - covered)


def expanded_products(value_set: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(rxcui, name) of the RxNorm codes a ValueSet's expansion lists."""
    contains = (value_set.get("expansion") or {}).get("contains")
    if value_set.get("resourceType") != "ValueSet" or not isinstance(contains, list):
        raise SystemExit("a supplement must be a FHIR ValueSet with an expansion")
    for entry in contains:
        if entry.get("system") == RXNORM and entry.get("code") and entry.get("display"):
            yield str(entry["code"]), str(entry["display"])


def term_type(name: str) -> str:
    """A product's RxNorm term type from its normalised name: packs are written "{...} Pack",
    branded products end in "[Brand]"."""
    branded = name.rstrip().endswith("]")
    if name.startswith("{"):
        return "BPCK" if branded else "GPCK"
    return "SBD" if branded else "SCD"


def header(origins: list[tuple[str, str]], rows: list[str], uncovered: list[str]) -> list[str]:
    """The provenance comment: each source's origin and licence, then what none covers."""
    provenance = [
        line
        for number, (origin, licence) in enumerate(origins)
        for line in (
            f"# {'Origin' if number == 0 else 'Supplement'}: {origin}",
            f"# Licence: {licence}",
        )
    ]
    return [
        "# RxNorm products -> ingredients of rules/medications.yaml. GENERATED: do not edit;",
        "# rebuild with scripts/build-rxnorm-products.py (its docstring says how).",
        *provenance,
        f"# Rows: {len(rows)}. Ingredients are joined by ';'; names are RxNorm's (they carry",
        "# the dose form, which says whether a corticosteroid is systemic).",
        "# Not covered (no rxcui in the rules, or no record in the source; found by name only):",
        f"# {', '.join(uncovered)}.",
        "\t".join(COLUMNS),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="folder of the extract's <letter>.json files")
    parser.add_argument("--rules", type=Path, default=ROOT / "rules" / "medications.yaml")
    parser.add_argument("--out", type=Path, default=ROOT / "rules" / "rxnorm-products.tsv")
    parser.add_argument("--origin", default=DEFAULT_ORIGIN)
    parser.add_argument("--licence", default=DEFAULT_LICENCE)
    parser.add_argument(
        "--value-set",
        type=Path,
        action="append",
        default=[],
        help="a FHIR ValueSet expansion of RxNorm products, for ingredients the source lacks",
    )
    args = parser.parse_args(argv)
    medications = yaml.safe_load(args.rules.read_text(encoding="utf-8"))
    supplements = [json.loads(path.read_text(encoding="utf-8")) for path in args.value_set]
    unknown = [vs.get("url") for vs in supplements if vs.get("url") not in SUPPLEMENTS]
    if unknown:
        raise SystemExit(f"record the origin and licence of {unknown} in SUPPLEMENTS first")
    rows, uncovered = build(records(args.source), medications, supplements)
    origins = [(args.origin, args.licence), *(SUPPLEMENTS[vs["url"]] for vs in supplements)]
    lines = header(origins, rows, uncovered) + rows
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"{args.out}: {len(rows)} products", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
