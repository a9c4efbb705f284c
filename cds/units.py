"""Unit conversion into each analyte's canonical unit: units are converted, never assumed.

Laboratory systems write the same unit in several ways: the UCUM `code` may be missing, and
the display `unit` may use the micro sign (µ, U+00B5), the Greek mu (μ, U+03BC), "mcg" or
another letter case ("mmol/l"). These spellings are folded into one key before the look-up;
what a unit means (its factor) stays in rules/labs.yaml.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from typing import Any

# Significant digits kept after a conversion: enough for any laboratory value, few enough
# that binary floating point cannot move a value across a cut-off (1.7 mmol/L... 17 mg/L x 0.1
# is 1.7000000000000002 in floating point, which is not "at or below 1.7").
SIGNIFICANT_DIGITS = 12


@lru_cache(maxsize=4096)  # the same few spellings come back in every result
def unit_key(unit: str) -> str:
    """One spelling per unit: 'µg/L', 'μg/L', 'mcg/L' and 'ug/l' are all 'ug/l'."""
    folded = unit.strip().replace("\u00b5", "u").replace("\u03bc", "u").lower()
    folded = folded.replace("mcg", "ug").replace(" ", "")
    return folded


def quantity_units(quantity: dict[str, Any]) -> list[str]:
    """The unit a FHIR Quantity states: its UCUM `code` when present (a display `unit` that
    contradicts the code is not trusted), else the display `unit`."""
    for unit in (quantity.get("code"), quantity.get("unit")):
        if isinstance(unit, str) and unit.strip():
            return [unit.strip()]
    return []


def unit_factors(units: dict[str, float]) -> dict[str, float]:
    """A unit table from rules/ keyed by `unit_key`."""
    return {unit_key(unit): factor for unit, factor in units.items()}


def convert(
    value: float, units: Iterable[str | None], factors: dict[str, float]
) -> tuple[float, str] | None:
    """`value` in the canonical unit and the unit it was read in, or None when no stated unit
    is convertible. `factors` is keyed by `unit_key`. A missing unit is not guessed: a bare
    1.4 could be mg/dL or mmol/L, a factor of 2.4 apart."""
    for unit in units:
        if unit is None:
            continue
        factor = factors.get(unit_key(unit))
        if factor is not None:
            return float(f"{value * factor:.{SIGNIFICANT_DIGITS}g}"), unit
    return None
