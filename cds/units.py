"""Unit conversion into each analyte's canonical unit: units are converted, never assumed."""

from __future__ import annotations

from typing import Any


def quantity_unit(quantity: dict[str, Any]) -> str | None:
    """The unit of a FHIR Quantity: the UCUM `code` when present, else the display `unit`."""
    unit = quantity.get("code") or quantity.get("unit")
    return unit.strip() if isinstance(unit, str) and unit.strip() else None


def to_canonical(value: float, unit: str | None, factors: dict[str, float]) -> float | None:
    """`value` in the canonical unit, or None when the unit is missing or not convertible.

    `factors` maps lower-cased unit strings to the factor into the canonical unit. A missing
    unit is not guessed: a bare 1.4 could be mg/dL or mmol/L, a factor of 2.4 apart.
    """
    if unit is None:
        return None
    factor = factors.get(unit.lower())
    return None if factor is None else value * factor
